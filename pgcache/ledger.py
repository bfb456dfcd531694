"""The lookup ledger writer.

A lookup hands its ledger row and hit-counter increment to a background thread
and returns; the thread writes them in batches with ``synchronous_commit =
off``, so the caller never waits for a ledger write or a commit flush. The
price: a crash of the database server can lose the last fraction of a second
of ledger rows, never a cache entry. ``flush()`` writes everything queued so
far (tests and scripts that read the ledger right away call it;
``Cache.close()`` does too).

While the database cannot take them, batches wait in a :class:`~pgcache.spool.Spool`
(memory and a file) and are written once it answers again. Every write is
idempotent: a lookup row whose id is already stored is skipped, and only rows
actually inserted count hits, so a batch written twice (its commit lost in an
outage, then replayed) counts once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psycopg

from . import queries
from .backend import Unavailable
from .connections import Database
from .errors import PgcacheError
from .ledger_rows import INSERT_JUDGEMENT, INSERT_LOOKUP, Judgement, LookupRecord
from .spool import Batch, Spool

__all__ = ["Judgement", "LedgerWriter", "LookupRecord"]

_log = logging.getLogger(__name__)

RETRY_INTERVAL = 1.0
"""Seconds between attempts to write spooled rows while the database fails."""


class LedgerWriter:
    """Batches ledger rows and hit counts onto a background thread.

    ``database`` returns the pool to write to; it is called on the writer's
    thread, so a lookup that records before anything opened the database
    does not wait for it to open.
    """

    def __init__(
        self,
        database: Callable[[], Database],
        *,
        batch_size: int = 500,
        interval: float = 0.2,
        spool_dir: Path | None = None,
        spool_rows: int = 100_000,
    ) -> None:
        self.database = database
        self.batch_size = batch_size
        self.interval = interval
        self.spool = Spool(spool_dir, spool_rows)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._failing = False
        self._tried_at = 0.0
        self.rejected = 0
        """Rows of batches the database refused (not an outage: written again, they would be refused again)."""

    @property
    def dropped(self) -> int:
        """Ledger rows lost: those that found the spool full, and batches the database refused."""
        return self.spool.overflow + self.rejected

    def record(self, row: LookupRecord | Judgement) -> None:
        """Queue a ledger row (or a judge's verdict); the writer thread starts on first use."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._start()
        self._queue.put(row)

    def flush(self, timeout: float = 10.0) -> bool:
        """Write everything recorded so far; False if that did not finish within ``timeout``."""
        if self._thread is None:
            return True
        done = threading.Event()
        self._queue.put(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and spooled if the database takes it; what it does not stays in the spool file."""
        if self._thread is not None and self._thread.is_alive():
            self.flush(timeout)
            self._queue.put(None)
            self._wake.set()
            self._thread.join(timeout)
            self._thread = None
        self.spool.close()

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="pgcache-ledger", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        self.spool.adopt()  # rows a process that is gone left behind are written with this one's
        # Wake every ``interval`` (or at once for a flush or close) and drain the queue: callers
        # never hand the GIL to this thread row by row.
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            batch: list[LookupRecord | Judgement] = []
            waiters: list[threading.Event] = []
            stop = False
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    batch.append(item)
                    if len(batch) >= self.batch_size:
                        self._write(batch)
                        batch = []
            if batch:
                self._write(batch)
            if len(self.spool) and (waiters or stop or time.monotonic() - self._tried_at >= RETRY_INTERVAL):
                self._replay()
            self.spool.sync()
            for waiter in waiters:
                waiter.set()
            if stop:
                return

    def _write(self, batch: Batch) -> None:
        # Behind spooled batches, a new one waits its turn; else it is tried at once.
        if len(self.spool) or not self._attempt(batch):
            self.spool.add(batch)

    def _replay(self) -> None:
        """Write the spooled batches, oldest first, until the database fails again."""
        self._tried_at = time.monotonic()
        done = rows = 0
        try:
            for batch in self.spool.batches():
                if not self._attempt(batch):
                    break
                done += 1
                rows += len(batch)
        finally:
            self.spool.written(done)
        if done and not len(self.spool):
            _log.warning("pgcache: ledger writes recovered; %d spooled rows written", rows)

    def _attempt(self, batch: Batch) -> bool:
        """Write ``batch``; False when the database failed and the batch must wait for it."""
        try:
            self._store(batch)
        except (PgcacheError, Unavailable) as exc:  # the ledger must never break lookups
            if _transient(exc):
                self._failed(exc, len(batch))
                return False
            # The database took the batch and refused it (a constraint, a missing partition):
            # written again it would be refused again, and hold up every batch behind it.
            self.rejected += len(batch)
            _log.warning("pgcache: %d ledger rows refused by the database and dropped: %s", len(batch), exc)
            return True
        self._failing = False
        return True

    def _store(self, batch: Batch) -> None:
        """One transaction: the lookup rows not stored yet, their hit counts, the batch's verdicts."""
        lookups = [row for row in batch if isinstance(row, LookupRecord)]
        judgements = [row for row in batch if isinstance(row, Judgement)]
        with self.database().connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(queries.ASYNC_COMMIT)
            inserted = _insert_lookups(cur, lookups) if lookups else set()
            # A batch is all or nothing: if none of its lookups was new, it was written before.
            if judgements and (inserted or not lookups):
                cur.executemany(INSERT_JUDGEMENT, [row.params() for row in judgements])
            hits: Counter[int] = Counter()
            last: dict[int, datetime] = {}
            for row in lookups:
                if row.id in inserted and row.entry_id is not None and row.outcome in ("exact", "semantic"):
                    hits[row.entry_id] += 1
                    last[row.entry_id] = max(last.get(row.entry_id, row.at), row.at)
            ids = sorted(hits)
            if ids:
                cur.execute(queries.COUNT_HITS, (ids, [hits[i] for i in ids], [last[i] for i in ids]))

    def _failed(self, exc: BaseException, rows: int) -> None:
        self._tried_at = time.monotonic()
        if not self._failing:
            # While the breaker is open the outage has been logged already; say only what it costs here.
            cause = "the database is skipped while it fails" if isinstance(exc, Unavailable) else exc
            where = f"spooled in {self.spool.directory}" if self.spool.directory else "kept in memory"
            _log.warning("pgcache: could not write %d ledger rows (%s): %s until it can", rows, cause, where)
        self._failing = True


def _insert_lookups(cur: psycopg.Cursor, lookups: list[LookupRecord]) -> set:
    """Insert the rows whose ids are not stored yet; the ids inserted."""
    cur.executemany(INSERT_LOOKUP, [row.params() for row in lookups], returning=True)
    inserted = set()
    while True:
        row = cur.fetchone()
        if row is not None:
            inserted.add(row[0])
        if not cur.nextset():
            break
    return inserted


def _transient(exc: BaseException) -> bool:
    """An outage (the batch can be written later), rather than the database refusing the rows."""
    if isinstance(exc, Unavailable):
        return True
    cause = exc.__cause__
    return not isinstance(cause, psycopg.Error) or isinstance(cause, psycopg.OperationalError)
