"""Migrations, the declared models, schema checks and the embedded default database."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from pgcache import Cache, SchemaError, db, embedded
from pgcache.models import Base

from .conftest import query

ROOT = Path(__file__).resolve().parents[1]


def _tables(url):
    return {row[0] for row in query(url, "SELECT tablename FROM pg_tables WHERE tablename LIKE 'pgcache%%'")}


def test_models_and_migrations_agree(database_url):
    engine = create_engine(db.sqlalchemy_url(database_url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "include_object": lambda obj, name, type_, *_: type_ != "table" or name != db.VERSION_TABLE,
                },
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_downgrade_to_base_and_upgrade_again(database_url):
    db.downgrade(database_url, "base")
    assert _tables(database_url) == {db.VERSION_TABLE}
    assert db.current_revision(database_url) is None
    db.upgrade(database_url)
    assert _tables(database_url) == {db.VERSION_TABLE, *Base.metadata.tables}
    assert db.current_revision(database_url) == db.head_revision()


def test_external_database_without_schema_names_the_upgrade_command(empty_database_url, llm):
    cache = Cache(empty_database_url, llm=llm, fail_open=False)
    with pytest.raises(SchemaError, match="pgcache db upgrade"):
        cache.lookup("anything")
    with pytest.raises(SchemaError, match="pgcache db upgrade"):
        Cache(empty_database_url, llm=llm).store("q", "a"), "explicit writes raise even when failing open"
    assert _tables(empty_database_url) == set(), "nothing is created behind the user's back"


def test_schema_newer_than_the_code_is_reported(database_url, llm):
    query(database_url, "UPDATE pgcache_alembic_version SET version_num = 'ffff_future'")
    with pytest.raises(SchemaError, match="newer than this version of pgcache"):
        db.check_schema(database_url)


def test_alembic_upgrade_head_from_the_checkout(empty_database_url):
    env = {**os.environ, "PGCACHE_DATABASE_URL": empty_database_url}
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert db.current_revision(empty_database_url) == db.head_revision()


def test_db_upgrade_from_an_installed_wheel(tmp_path, empty_database_url):
    """The wheel carries its migrations: `pgcache db upgrade` works far from the checkout."""
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    wheel = next(tmp_path.glob("pgcache-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "pgcache/migrations/env.py" in names
    assert any(n.startswith("pgcache/migrations/versions/0001") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    script = (
        "import sys, pgcache.db as d; from pgcache.cli import main;print(d.migrations_dir(), file=sys.stderr); main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "db", "upgrade", "--database-url", empty_database_url],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert str(site / "pgcache" / "migrations") in done.stderr
    assert db.current_revision(empty_database_url) == db.head_revision()


def test_embedded_default_starts_migrates_and_persists(tmp_path, llm):
    data_dir = tmp_path / "embedded"
    try:
        with Cache(data_dir=data_dir, embedder=_Embedder(), llm=llm) as cache:
            cache.store("persist me", "still here")
            url = cache.url
        assert url.startswith("postgresql://") and f"host={data_dir}" in url
        assert db.current_revision(url) == db.head_revision()
        assert embedded.stop(data_dir) is True
        with Cache(data_dir=data_dir, embedder=_Embedder(), llm=llm) as cache:
            assert cache.lookup("persist me").content == "still here"
    finally:
        embedded.stop(data_dir)


def test_processes_share_one_embedded_server(tmp_path):
    data_dir = tmp_path / "shared"
    code = "import sys; from pgcache import embedded; print(embedded.start(sys.argv[1]))"
    try:
        runs = [
            subprocess.Popen([sys.executable, "-c", code, str(data_dir)], stdout=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        urls = {run.communicate(timeout=120)[0].strip() for run in runs}
        assert all(run.returncode == 0 for run in runs)
        assert len(urls) == 1
        pids = query(urls.pop(), "SELECT count(DISTINCT pid) FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
        assert pids == [(1,)]
    finally:
        embedded.stop(data_dir)


class _Embedder:
    name = "test/fixed"
    dimensions = 2

    def embed(self, texts):
        return [[1.0, 0.0] for _ in texts]


def test_old_schema_names_the_upgrade_command(database_url, llm):
    db.downgrade(database_url, "0001")
    cache = Cache(database_url, embedder=_Embedder(), llm=llm, fail_open=False)
    with pytest.raises(SchemaError, match=r"at revision 0001 but this version needs \w+: run `pgcache db upgrade`"):
        cache.lookup("anything")


def _plain_postgres_bin() -> Path | None:
    """Debian's PostgreSQL binaries, which come without pgvector, if this machine has them."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


def test_a_server_without_pgvector_is_named_in_the_error(server_url):
    bin_path = _plain_postgres_bin()
    if (
        bin_path is None
        or (Path("/usr/share/postgresql") / bin_path.parent.name / "extension" / "vector.control").exists()
    ):
        pytest.skip("no PostgreSQL without pgvector on this machine: a server lacking the extension is not tried")
    import pwd
    import shutil
    import tempfile

    # initdb refuses to run as root; then the embedded server's system user (made by server_url) runs it.
    user = "pgserver" if os.geteuid() == 0 else None
    if user:
        try:
            pwd.getpwnam(user)
        except KeyError:
            pytest.skip("running as root without the embedded server's user: a server lacking pgvector is not tried")
    data = Path(tempfile.mkdtemp(prefix="pgcache-novector-"))
    try:
        if user:
            entry = pwd.getpwnam(user)
            os.chown(data, entry.pw_uid, entry.pw_gid)
        run = {"user": user} if user else {}
        subprocess.run(
            [str(bin_path / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust"],
            check=True,
            capture_output=True,
            **run,
        )
        subprocess.run(
            [
                str(bin_path / "pg_ctl"),
                "-w",
                "-D",
                str(data / "db"),
                "-l",
                str(data / "log"),
                "-o",
                f"-h '' -k {data}",
                "start",
            ],
            check=True,
            capture_output=True,
            **run,
        )
        url = f"postgresql://postgres@/postgres?host={data}"
        try:
            with pytest.raises(SchemaError, match="pgvector extension missing"):
                db.upgrade(url)
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'pgcache%'").fetchone() == (0,)
            with pytest.raises(SchemaError, match="pgcache db upgrade"):
                Cache(url, fail_open=False).lookup("anything")
        finally:
            subprocess.run(
                [str(bin_path / "pg_ctl"), "-w", "-D", str(data / "db"), "-m", "fast", "stop"],
                capture_output=True,
                **run,
            )
    finally:
        shutil.rmtree(data, ignore_errors=True)
