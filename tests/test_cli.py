"""The `pgcache db` commands."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from pgcache import db
from pgcache.cli import app

runner = CliRunner()


def test_db_upgrade_and_current(empty_database_url):
    before = runner.invoke(app, ["db", "current", "--database-url", empty_database_url])
    assert before.exit_code == 0, before.output
    assert "database: none" in before.output and "run `pgcache db upgrade`" in before.output
    upgraded = runner.invoke(app, ["db", "upgrade", "--database-url", empty_database_url])
    assert upgraded.exit_code == 0, upgraded.output
    after = runner.invoke(app, ["db", "current", "--database-url", empty_database_url])
    assert f"database: {db.head_revision()}" in after.output and "up to date" in after.output


def test_db_url_prints_a_url_psql_accepts(database_url):
    result = runner.invoke(app, ["db", "url", "--database-url", database_url])
    assert result.exit_code == 0
    printed = result.output.strip()
    import psycopg

    with psycopg.connect(printed) as conn:
        assert conn.execute("SELECT count(*) FROM pgcache_entries").fetchone() == (0,)


def test_db_url_hides_passwords():
    result = runner.invoke(app, ["db", "url", "--database-url", "postgresql://app:s3cret@db.example:5432/app"])
    assert result.output.strip() == "postgresql://app:***@db.example:5432/app"


def test_db_downgrade_needs_confirmation(database_url):
    refused = subprocess.run(
        [sys.executable, "-m", "pgcache.cli", "db", "downgrade", "base", "--database-url", database_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == "error: downgrading can drop cached data; add --yes to confirm"
    assert db.current_revision(database_url) == db.head_revision()


def test_errors_are_one_line_with_exit_status_1():
    done = subprocess.run(
        [sys.executable, "-m", "pgcache.cli", "db", "current", "--database-url", "mysql://x/y"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr == "error: database URL must start with postgresql:// or postgres://, got 'mysql'\n"
