"""Sweeping, invalidation and the ivfflat index's lifecycle."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from . import queries
from .connections import Database
from .errors import DatabaseError, InvalidRequestError


@dataclass
class SweepResult:
    """What a sweep deleted (or, with ``dry_run``, would delete)."""

    expired: int = 0
    evicted: int = 0
    lookups: int = 0
    seconds: float = 0.0
    skipped: bool = False
    """True when another sweep held the lock and this one did nothing."""
    complete: bool = True
    """False when ``max_seconds`` ran out with work left."""


def sweep(
    database: Database,
    *,
    batch_size: int = 10_000,
    max_seconds: float | None = None,
    ledger_retention_days: float = 90,
    max_entries: int | None = None,
    dry_run: bool = False,
) -> SweepResult:
    """Delete expired entries, old ledger rows and entries beyond ``max_entries``, in batches.

    Each batch is its own short transaction, so lookups never wait on a sweep.
    Only one sweep runs at a time (a session advisory lock); another returns at
    once with ``skipped=True``. Capacity eviction removes the least recently hit
    entries first and warmed entries last.
    """
    _positive_int(batch_size, "batch_size")
    if max_entries is not None:
        _positive_int(max_entries, "max_entries", allow_zero=True)
    if not ledger_retention_days > 0:
        raise InvalidRequestError(f"ledger retention must be positive, got {ledger_retention_days!r}")
    retention = f"{float(ledger_retention_days)} days"
    started = time.monotonic()
    result = SweepResult()
    with database.connection() as conn:
        if dry_run:
            result.expired = _scalar(conn, queries.COUNT_EXPIRED)
            result.lookups = _scalar(conn, queries.COUNT_OLD_LOOKUPS, (retention,))
            if max_entries is not None:
                result.evicted = max(0, _scalar(conn, queries.COUNT_LIVE) - max_entries)
            result.seconds = time.monotonic() - started
            return result
        if not _scalar(conn, queries.TRY_LOCK, (queries.SWEEP_LOCK_ID,)):
            result.skipped = True
            return result
        # Batches may take longer than a lookup's statement timeout; they hold no lock lookups need.
        _set(conn, statement_timeout="5min")
        try:

            def out_of_time() -> bool:
                return max_seconds is not None and time.monotonic() - started >= max_seconds

            while True:
                expired, lookups = _row(conn, queries.SWEEP_BATCH, (batch_size, retention))
                result.expired += expired
                result.lookups += lookups
                if expired < batch_size and lookups < batch_size:
                    break
                if out_of_time():
                    result.complete = False
                    break
            if max_entries is not None:
                while True:
                    evicted = conn.execute(queries.EVICT, {"max": max_entries, "batch": batch_size}).rowcount
                    result.evicted += evicted
                    if evicted < batch_size:
                        break
                    if out_of_time():
                        result.complete = False
                        break
        finally:
            _reset(conn, "statement_timeout")
            conn.execute(queries.UNLOCK, (queries.SWEEP_LOCK_ID,))
    result.seconds = time.monotonic() - started
    return result


@dataclass
class Filters:
    """Which entries an invalidation selects; every given filter must match."""

    namespace: str
    prompt: str | None = None
    similar_to: np.ndarray | None = None
    embedder: str | None = None
    min_similarity: float | None = None
    tags: Sequence[str] = field(default_factory=list)
    model: str | None = None
    older_than: float | None = None
    """Seconds."""
    source: str | None = None
    key: bytes | None = None
    everything: bool = False

    def where(self) -> tuple[sql.Composable, dict[str, Any]]:
        """The WHERE clause (conditions from :data:`pgcache.queries.FILTERS`, joined by AND) and its parameters."""
        given = {name: getattr(self, name) for name in ("prompt", "model", "source", "key", "older_than", "similar_to")}
        given["tags"] = list(self.tags) or None
        chosen = [name for name, value in given.items() if value is not None]
        if not chosen and not self.everything:
            raise InvalidRequestError("give at least one filter, or ask for all entries of the namespace explicitly")
        params = {"namespace": self.namespace, **{name: given[name] for name in chosen}}
        if self.similar_to is not None:
            params.update(embedder=self.embedder, min_similarity=self.min_similarity)
        clauses = [sql.SQL(queries.FILTERS[name]) for name in ("namespace", *chosen)]
        return sql.SQL(" AND ").join(clauses), params


def preview_invalidation(database: Database, filters: Filters, limit: int = 5) -> tuple[int, list[dict[str, Any]]]:
    """How many entries the filters select, and a sample of them."""
    where, params = filters.where()
    with database.connection() as conn:
        count = _scalar(conn, sql.SQL(queries.COUNT_SELECTED).format(where=where), params)
        rows = conn.execute(sql.SQL(queries.SAMPLE_SELECTED).format(where=where), {**params, "limit": limit}).fetchall()
    return count, [{"id": r[0], "model": r[1], "source": r[2], "prompt": r[3]} for r in rows]


def invalidate(database: Database, filters: Filters, *, yes: bool = False) -> int:
    """Delete the selected entries; emptying a whole namespace needs ``yes=True``."""
    where, params = filters.where()
    with database.connection() as conn, conn.transaction():
        count = conn.execute(sql.SQL(queries.DELETE_SELECTED).format(where=where), params).rowcount
        if count and not yes:
            left = _scalar(conn, queries.COUNT_NAMESPACE, (filters.namespace,))
            if left == 0:  # raising rolls the delete back
                raise InvalidRequestError(
                    f"this would delete all {count} entries of the namespace; confirm with yes=True (--yes)"
                )
    return count


@dataclass
class IndexStatus:
    """The ivfflat index against the table it serves."""

    rows: int
    lists: int
    recommended_lists: int

    @property
    def needs_reindex(self) -> bool:
        """The table has doubled or halved since the index was trained (or crossed the exact-search size)."""
        return self.recommended_lists >= 2 * self.lists or self.lists >= 2 * self.recommended_lists


def recommended_lists(rows: int) -> int:
    """One list (exact search) below :data:`~pgcache.queries.EXACT_SEARCH_ROWS`, then 2 * sqrt(rows).

    More, smaller lists than pgvector's rows / 1000 guidance: at 100k entries 632 lists
    probed 4 at a time gave higher recall in less time than 100 lists probed 4 at a time
    (docs/benchmarks.md, index lifecycle). Lookups probe ``pgcache_probes(lists)`` lists.
    """
    if rows < queries.EXACT_SEARCH_ROWS:
        return 1
    return min(32_768, round(2 * math.sqrt(rows)))


def index_status(database: Database) -> IndexStatus:
    with database.connection() as conn:
        rows = _scalar(conn, queries.COUNT_VECTORS)
        lists = _scalar(conn, queries.INDEX_LISTS)
    return IndexStatus(rows=rows, lists=lists, recommended_lists=recommended_lists(rows))


@dataclass
class ReindexResult:
    before: IndexStatus
    after: IndexStatus
    seconds: float
    skipped: bool = False
    """True when another reindex was running and this one did nothing."""


def build_memory(lists: int) -> str:
    """``maintenance_work_mem`` enough for an ivfflat build of ``lists`` lists over the index's 768 dimensions.

    pgvector's k-means keeps 50 samples per list and, for each sample, a float
    per list (its lower bounds): 50 * lists * (4 * lists + a 1.5 KB sample)
    bytes, refused outright when ``maintenance_work_mem`` is smaller. That is
    about 1 GB at 1M entries (2,000 lists), 0.8 KB per entry under pgcache's
    lists policy. At least 512 MB, with a quarter more as margin.
    """
    sample = 2 * queries.INDEXED_DIMENSIONS + 8
    needed = 50 * lists * (4 * lists + sample)
    return f"{max(512, math.ceil(needed * 1.25 / 2**20))}MB"


def reindex(database: Database, *, lists: int | None = None, maintenance_work_mem: str | None = None) -> ReindexResult:
    """Retrain the ivfflat index with ``lists`` from the current row count, without blocking lookups.

    ``REINDEX … CONCURRENTLY`` builds the new index beside the old one, so
    lookups and writes go on meanwhile. ``maintenance_work_mem`` defaults to
    what the build needs (:func:`build_memory`).
    """
    started = time.monotonic()
    before = index_status(database)
    target = before.recommended_lists if lists is None else _positive_int(lists, "lists")
    if not 1 <= target <= 32768:
        raise InvalidRequestError(f"lists must be between 1 and 32768, got {target}")
    with database.connection() as conn:
        # One reindex at a time: two would deadlock on each other's index locks.
        if not _scalar(conn, queries.TRY_LOCK, (queries.REINDEX_LOCK_ID,)):
            return ReindexResult(before=before, after=before, seconds=0.0, skipped=True)
        try:
            _set(conn, maintenance_work_mem=maintenance_work_mem or build_memory(target), statement_timeout="0")
            _set_lists(conn, target)
            _set(conn, lock_timeout="30s")
            conn.execute(sql.SQL(queries.REINDEX).format(index=sql.Identifier(queries.INDEX_NAME)))
        finally:
            _reset(conn, "statement_timeout", "lock_timeout", "maintenance_work_mem")
            conn.execute(queries.UNLOCK, (queries.REINDEX_LOCK_ID,))
    return ReindexResult(before=before, after=index_status(database), seconds=time.monotonic() - started)


def _set_lists(conn, target: int, attempts: int = 50) -> None:
    """``ALTER INDEX … SET (lists)`` with short lock waits.

    The change needs an exclusive lock on the index for an instant. Waiting for
    it in line would stall every lookup queued behind the wait, so each attempt
    gives up after 200 ms and the next comes after a pause.
    """
    statement = sql.SQL(queries.SET_LISTS).format(index=sql.Identifier(queries.INDEX_NAME), lists=sql.Literal(target))
    _set(conn, lock_timeout="200ms")
    for attempt in range(attempts):
        try:
            conn.execute(statement)
            return
        except psycopg.errors.LockNotAvailable:
            time.sleep(min(0.05 * (attempt + 1), 1.0))
    raise DatabaseError(
        f"could not lock {queries.INDEX_NAME} to change its lists after {attempts} attempts; "
        "lookups kept it busy: try again"
    )


def _positive_int(value: Any, name: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InvalidRequestError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _row(conn: psycopg.Connection, statement: Any, params: Any = None) -> tuple:
    row = conn.execute(statement, params).fetchone()
    assert row is not None, "the statement returns one row"
    return row


def _scalar(conn: psycopg.Connection, statement: Any, params: Any = None) -> Any:
    return _row(conn, statement, params)[0]


def _set(conn: psycopg.Connection, **values: str) -> None:
    for name, value in values.items():
        conn.execute(queries.SET_SESSION, (name, value))


def _reset(conn: psycopg.Connection, *names: str) -> None:
    for name in names:
        conn.execute(sql.SQL(queries.RESET_SESSION).format(name=sql.Identifier(name)))
