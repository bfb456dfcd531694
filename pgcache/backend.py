"""The cache's databases: the primary pool, an optional read pool, circuit breakers, fail-open.

Every database operation of the cache is a function ``operation(conn, *args)``
run through one of three doors:

* :meth:`Backend.write` — on the primary; errors raise :class:`DatabaseError`.
* :meth:`Backend.read` — on the read database (``read_database_url``) when
  there is one and it answers, else on the primary.
* :meth:`Backend.attempt` — wraps either for callers that can do without the
  cache: with ``fail_open`` a failure trips the breaker and raises
  :class:`Unavailable`, and while the breaker is open calls skip the database
  at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

from . import db
from .breaker import CircuitBreaker
from .config import Settings
from .connections import Database
from .errors import DatabaseError

T = TypeVar("T")


class Unavailable(Exception):
    """The cache database (or the embedder) was skipped or failed; the call goes on without it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Backend:
    """Connection pools opened on first use, with read-replica fallback and fail-open breakers."""

    def __init__(self, settings: Settings) -> None:
        self.database_url = db.normalize_url(settings.database_url) if settings.database_url else None
        self.read_database_url = db.normalize_url(settings.read_database_url) if settings.read_database_url else None
        self.data_dir = settings.data_dir
        self.fail_open = settings.fail_open
        self._pool_options: dict[str, Any] = {
            "max_size": settings.pool_size,
            "connect_timeout": settings.connect_timeout,
            "statement_timeout": settings.statement_timeout,
        }
        self.breaker = CircuitBreaker()
        """Trips while the database fails; ``breaker.failures`` and ``breaker.skipped`` count."""
        self.read_breaker = CircuitBreaker(
            subject="read database", fallback="lookups read the primary", recovery="lookups read it again"
        )
        """Trips while the read database fails; lookups then go to the primary."""
        self._primary: Database | None = None
        self._replica: Database | None = None
        self._lock = threading.Lock()

    def database(self) -> Database:
        """The primary pool, opened (and the embedded database's schema migrated) on first use."""
        with self._lock:
            if self._primary is None:
                url, embedded = db.resolve_url(self.database_url, self.data_dir)
                db.check_schema(url, auto_upgrade=embedded)
                self._primary = Database(url, **self._pool_options)
            return self._primary

    def read_database(self) -> Database | None:
        """The pool lookups read from, or None when there is no ``read_database_url``.

        Its schema is not checked: a replica cannot be migrated, and a query
        that fails there is retried on the primary.
        """
        if self.read_database_url is None:
            return None
        with self._lock:
            if self._replica is None:
                self._replica = Database(self.read_database_url, application_name="pgcache-read", **self._pool_options)
            return self._replica

    @property
    def url(self) -> str:
        """URL of the primary (the embedded server's when none was given)."""
        return self.database().url

    def write(self, operation: Callable[..., T], *args: Any) -> T:
        """``operation(conn, *args)`` on the primary."""
        with self.database().connection() as conn:
            return operation(conn, *args)

    def read(self, operation: Callable[..., T], *args: Any) -> T:
        """``operation(conn, *args)`` on the read database; on the primary when there is none or it fails."""
        replica = self.read_database() if self.read_breaker.allow() else None
        if replica is not None:
            try:
                with replica.connection() as conn:
                    value = operation(conn, *args)
            except DatabaseError as exc:
                self.read_breaker.failure(exc)
            else:
                self.read_breaker.success()
                return value
        return self.write(operation, *args)

    def attempt(self, door: Callable[..., T], *args: Any) -> T:
        """``door(*args)`` (e.g. ``backend.read, operation``) for a caller that can do without the cache.

        With ``fail_open`` a :class:`DatabaseError` trips the breaker and raises
        :class:`Unavailable`; while the breaker is open the call is skipped.
        Without it, errors propagate.
        """
        if not self.fail_open:
            return door(*args)
        if not self.breaker.allow():
            raise Unavailable("database: skipped while unavailable")
        try:
            value = door(*args)
        except DatabaseError as exc:
            self.breaker.failure(exc)
            raise Unavailable(f"database: {type(exc).__name__}") from exc
        self.breaker.success()
        return value

    def close(self) -> None:
        """Close both pools; the next use opens them again."""
        with self._lock:
            for pool in (self._primary, self._replica):
                if pool is not None:
                    pool.close()
            self._primary = self._replica = None
