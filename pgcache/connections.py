"""The connection pool behind a cache.

Session settings travel in the startup packet (``options``), so a new
connection needs no extra round trip before its first lookup; the pgvector
types are registered once per connection so vectors move in binary form.
"""

from __future__ import annotations

import contextlib
import logging
from contextlib import contextmanager

import psycopg
from pgvector.psycopg import register_vector
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from .db import redact
from .errors import DatabaseError

_log = logging.getLogger(__name__)


class Database:
    """A psycopg connection pool with pgcache's session settings."""

    def __init__(
        self,
        url: str,
        *,
        max_size: int = 10,
        connect_timeout: float = 2.0,
        statement_timeout: float = 2.0,
        application_name: str = "pgcache",
    ) -> None:
        self.url = url
        options = " ".join(
            [
                f"-c statement_timeout={int(statement_timeout * 1000)}",
                f"-c lock_timeout={int(statement_timeout * 1000)}",
                # Lookups are short: compiling them would cost more than it saves.
                "-c jit=off",
            ]
        )
        # Keyword arguments replace the URL's own parameters; keep what the URL asked for
        # (its settings first, so that pgcache's timeouts win where both set one).
        try:
            given = conninfo_to_dict(url)
        except psycopg.Error:  # a malformed URL fails on connecting, as a DatabaseError
            given = {}
        if given.get("options"):
            options = f"{given['options']} {options}"
        application_name = str(given.get("application_name") or application_name)
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, int(connect_timeout)),
                "application_name": application_name,
                "options": options,
            },
            configure=register_vector,
            timeout=connect_timeout,
            name=application_name,
            open=True,
        )

    @contextmanager
    def connection(self):
        """Borrow a connection; driver errors come out as :class:`DatabaseError`."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise DatabaseError(f"no connection to the cache database {redact(self.url)}: {exc}") from exc
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError):
                self._discard_broken()
            raise DatabaseError(f"cache database error: {exc}") from exc

    def _discard_broken(self) -> None:
        # After a server restart every idle connection is dead; drop them all now rather
        # than failing once per connection (the pool reconnects in the background).
        # The server may still be down: then the next call finds out.
        with contextlib.suppress(psycopg.Error, PoolClosed):
            self.pool.check()

    def close(self) -> None:
        self.pool.close()
