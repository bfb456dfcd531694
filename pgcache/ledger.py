"""The lookup ledger writer.

A lookup hands its ledger row and hit-counter increment to a background thread
and returns; the thread writes them in batches with ``synchronous_commit =
off``, so the caller never waits for a ledger write or a commit flush. The
price: a crash can lose the last fraction of a second of ledger rows, never a
cache entry. ``flush()`` writes everything queued so far (tests and scripts
that read the ledger right away call it; ``Cache.close()`` does too).
"""

from __future__ import annotations

import logging
import queue
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from . import queries
from .backend import Unavailable
from .connections import Database
from .errors import PgcacheError

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class LookupRecord:
    """One row of ``pgcache_lookups``."""

    id: uuid.UUID
    at: datetime
    namespace: str
    model: str
    outcome: str
    entry_id: int | None
    embedder: str | None
    similarity: float | None
    threshold: float | None
    latency_ms: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    candidate_id: int | None = None
    llm_ms: float | None = None
    rejected_by: str | None = None
    prompt: str | None = None
    """The request's text, kept for semantic hits (feedback turns it into a labelled pair) and misses."""
    judge_tokens: int | None = None
    verifier_probability: float | None = None
    """The learned verifier's probability for the nearest candidate, when it scored one."""
    verifier_scores: list[dict[str, Any]] | None = None
    """Every candidate the verifier scored: entry id, similarity, probability."""
    tokens_estimated: bool | None = None
    """A hit whose saved token counts were estimated when the entry was stored (it came without usage)."""
    embedding_tokens: int | None = None
    """Tokens the embeddings API reported for embedding the request (None for a local model)."""
    embedding_ms: float | None = None
    judge_model: str | None = None
    judge_completion_tokens: int | None = None
    """Of ``judge_tokens``, those the judge answered with (priced at the output rate)."""
    verifier_ms: float | None = None
    """CPU time the learned verifier spent scoring this lookup's candidates."""

    @classmethod
    def start(cls, model: str, namespace: str) -> LookupRecord:
        """The record of a lookup that begins now; a miss until a tier finds something."""
        return cls(
            id=uuid.uuid4(),
            at=datetime.now(UTC),
            namespace=namespace,
            model=model,
            outcome="miss",
            entry_id=None,
            embedder=None,
            similarity=None,
            threshold=None,
            latency_ms=0.0,
        )

    def params(self) -> dict[str, Any]:
        """The row's values by column name."""
        values = {name: getattr(self, name) for name in LOOKUP_COLUMNS}
        if self.verifier_scores is not None:
            values["verifier_scores"] = Jsonb(self.verifier_scores)
        return values


@dataclass(slots=True)
class Judgement:
    """One row of ``pgcache_judgements``: the LLM judge's verdict on a candidate, kept to train a verifier on."""

    at: datetime
    lookup_id: uuid.UUID
    namespace: str
    embedder: str | None
    judge: str | None
    prompt: str
    entry_prompt: str
    similarity: float
    verifier_probability: float | None
    verdict: bool

    def params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in JUDGEMENT_COLUMNS}


LOOKUP_COLUMNS = tuple(field.name for field in fields(LookupRecord))
JUDGEMENT_COLUMNS = tuple(field.name for field in fields(Judgement))
# Bound by name, from the records' own fields: reordering a field cannot shift a column.
INSERT_LOOKUP = queries.insert_named("pgcache_lookups", LOOKUP_COLUMNS)
INSERT_JUDGEMENT = queries.insert_named("pgcache_judgements", JUDGEMENT_COLUMNS)


class LedgerWriter:
    """Batches ledger rows and hit counts onto a background thread.

    ``database`` returns the pool to write to; it is called on the writer's
    thread, so a lookup that records before anything opened the database
    does not wait for it to open.
    """

    def __init__(self, database: Callable[[], Database], *, batch_size: int = 500, interval: float = 0.2) -> None:
        self.database = database
        self.batch_size = batch_size
        self.interval = interval
        self.dropped = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._wake = threading.Event()
        self._failing = False

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
        if self._thread is not None and self._thread.is_alive():
            self.flush(timeout)
            self._queue.put(None)
            self._wake.set()
            self._thread.join(timeout)
            self._thread = None

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="pgcache-ledger", daemon=True)
                self._thread.start()

    def _run(self) -> None:
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
            for waiter in waiters:
                waiter.set()
            if stop:
                return

    def _write(self, batch: list[LookupRecord | Judgement]) -> None:
        lookups = [row for row in batch if isinstance(row, LookupRecord)]
        judgements = [row for row in batch if isinstance(row, Judgement)]
        hits: Counter[int] = Counter()
        last: dict[int, datetime] = {}
        for row in lookups:
            if row.entry_id is not None and row.outcome in ("exact", "semantic"):
                hits[row.entry_id] += 1
                last[row.entry_id] = max(last.get(row.entry_id, row.at), row.at)
        ids = sorted(hits)
        try:
            with self.database().connection() as conn, conn.transaction(), conn.cursor() as cur:
                cur.execute(queries.ASYNC_COMMIT)
                if lookups:
                    cur.executemany(INSERT_LOOKUP, [row.params() for row in lookups])
                if judgements:
                    cur.executemany(INSERT_JUDGEMENT, [row.params() for row in judgements])
                if ids:
                    cur.execute(queries.COUNT_HITS, (ids, [hits[i] for i in ids], [last[i] for i in ids]))
        except (PgcacheError, Unavailable) as exc:  # the ledger must never break lookups
            self.dropped += len(batch)
            if not self._failing:
                # While the breaker is open the outage has been logged already; say only what it costs here.
                cause = "the database is skipped while it fails" if isinstance(exc, Unavailable) else exc
                _log.warning("pgcache: could not write %d ledger rows: %s", len(batch), cause)
            self._failing = True
        else:
            if self._failing:
                _log.info("pgcache: ledger writes recovered")
            self._failing = False
