"""Finding the entry that answers a request: the exact tier, then the semantic tier.

A lookup reads top to bottom in :meth:`Finder.find`: one indexed query by exact
key; on a miss, the final user message is embedded once and
``pgcache_neighbours()`` returns the closest live entries of the same scope and
embedder. Without a learned verifier, the nearest is a candidate when its cosine
similarity reaches the threshold in force (:class:`Thresholds`); with one
(:class:`~pgcache.verifiers.Verifiers`), the nearest few from a low floor up
are. The :class:`~pgcache.verify.Verifier` chain decides which candidate, if
any, is served. Every step notes what it saw on the lookup's ledger record.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

from . import queries
from .backend import Backend, Unavailable
from .breaker import CircuitBreaker
from .embedders import EmbeddingCost, embed_texts, threshold_for
from .errors import EmbedderError
from .keys import RequestKey
from .ledger import LookupRecord
from .responses import content_of, lacks_usage
from .result import CacheResult
from .verifiers import Verifiers
from .verify import Candidate, Verifier

_log = logging.getLogger(__name__)

CANDIDATES = 20
"""Candidates the index (over the vectors' first 768 dimensions) hands ``pgcache_neighbours()`` for ranking
by the whole vector: at 100k entries, 20 found the true nearest as often as an index over all 1536 did."""


@dataclass(frozen=True, slots=True)
class Row:
    """An entry as a lookup returns it."""

    id: int
    response: dict[str, Any]
    prompt_tokens: int | None
    completion_tokens: int | None
    similarity: float | None = None
    prompt: str | None = None
    min_similarity: float | None = None


def find_exact(conn: psycopg.Connection, exact_key: bytes) -> Row | None:
    row = conn.execute(queries.FIND_EXACT, (exact_key,)).fetchone()
    return Row(*row) if row else None


def find_neighbours(
    conn: psycopg.Connection, scope_key: bytes, embedder: str, vector: np.ndarray, n: int = 1, k: int = CANDIDATES
) -> list[Row]:
    """The ``n`` most similar live entries in the scope, nearest first, whatever their similarity."""
    rows = conn.execute(
        queries.FIND_NEIGHBOURS,
        {
            "q": vector,
            "scope": scope_key,
            "embedder": embedder,
            "n": n,
            "k": max(k, n),
            "exact_below": queries.EXACT_SEARCH_ROWS,
        },
        binary=True,
    ).fetchall()
    return [Row(*row) for row in rows]


def find_nearest(conn: psycopg.Connection, scope_key: bytes, embedder: str, vector: np.ndarray) -> Row | None:
    """The most similar live entry in the scope, whatever its similarity."""
    rows = find_neighbours(conn, scope_key, embedder, vector)
    return rows[0] if rows else None


def calibrated_threshold(conn: psycopg.Connection, namespace: str, embedder: str) -> tuple | None:
    """``(threshold, source, calibrated_at)`` stored by calibration, or None."""
    return conn.execute(queries.CALIBRATED_THRESHOLD, (namespace, embedder)).fetchone()


def hit_result(row: Row, status: str, record: LookupRecord) -> CacheResult:
    """The caller's answer from a found entry; the record notes the hit."""
    record.outcome, record.entry_id = status, row.id
    record.prompt_tokens, record.completion_tokens = row.prompt_tokens, row.completion_tokens
    # Counts stored beside an answer without the API's usage were estimated (pgcache.tokens).
    record.tokens_estimated = row.prompt_tokens is not None and lacks_usage(row.response)
    return CacheResult(
        content=content_of(row.response),
        status=status,  # type: ignore[arg-type]
        similarity=row.similarity if status == "semantic" else None,
        entry_id=row.id,
        response=row.response,
        model=record.model,
        namespace=record.namespace,
        lookup_id=record.id,
    )


class Thresholds:
    """The semantic threshold in force per namespace, and where it comes from.

    In order: the threshold the cache was configured with; the one ``pgcache
    calibrate`` stored for the namespace and embedder (re-read at most every
    :attr:`refresh_seconds`; :meth:`forget` drops the copy after a calibration);
    the embedder's default.
    """

    refresh_seconds = 60.0

    def __init__(self, backend: Backend, embedder: Any, configured: float | None) -> None:
        self.backend = backend
        self.embedder = embedder
        self.configured = configured
        self._calibrated: dict[tuple[str, str], tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def in_force(self, namespace: str) -> tuple[float, str]:
        if self.configured is not None:
            return self.configured, "configured"
        cache_key = (namespace, self.embedder.name)
        with self._lock:
            cached = self._calibrated.get(cache_key)
        if cached is None or time.monotonic() - cached[0] > self.refresh_seconds:
            try:
                row = self.backend.attempt(self.backend.read, calibrated_threshold, namespace, self.embedder.name)
            except Unavailable:
                row = cached[1] if cached else None
            cached = (time.monotonic(), row)
            with self._lock:
                self._calibrated[cache_key] = cached
        if cached[1] is not None:
            value, source, when = cached[1]
            return value, f"calibrated on {source} at {when:%Y-%m-%d %H:%M} UTC"
        return threshold_for(self.embedder), f"default for {self.embedder.name}"

    def forget(self, namespace: str | None = None) -> None:
        """Re-read calibrated thresholds (of ``namespace``, or all) on their next use."""
        with self._lock:
            for cache_key in list(self._calibrated):
                if namespace is None or cache_key[0] == namespace:
                    del self._calibrated[cache_key]


class Finder:
    """Both tiers of a lookup; a failing embedder leaves the exact tier working (fail-open)."""

    def __init__(
        self,
        backend: Backend,
        embedder: Any,
        thresholds: Thresholds,
        verifier: Verifier,
        *,
        store_prompts: bool = True,
        verifiers: Verifiers | None = None,
        verifier_floor: float = 0.6,
        verifier_candidates: int = 3,
    ) -> None:
        self.backend = backend
        self.embedder = embedder
        self.thresholds = thresholds
        self.verifier = verifier
        self.store_prompts = store_prompts
        self.verifiers = verifiers
        """The learned verifiers (None: none is ever used)."""
        self.verifier_floor = verifier_floor
        self.verifier_candidates = verifier_candidates
        self.embedder_breaker = CircuitBreaker(
            subject="embedder", fallback="lookups use the exact tier only", recovery="semantic lookups resumed"
        )
        """Trips while the embedder fails, so that lookups do not wait for it each time."""

    def find(
        self, key: RequestKey, record: LookupRecord, threshold: float | None = None
    ) -> tuple[CacheResult | None, np.ndarray | None]:
        """The hit (or None) and the request's vector (None if not embedded), filling ``record``."""
        started = time.perf_counter()
        row = self.backend.read(find_exact, key.exact_key)
        status, vector = "exact", None
        if row is None and key.prompt is not None and key.prompt.strip():
            vector = self.embed_query(key.prompt, record)
        if vector is not None:
            status = "semantic"
            row = self._nearest(key, vector, record, threshold)
        record.latency_ms = (time.perf_counter() - started) * 1000
        if self.store_prompts and (row is None or status == "semantic"):
            # A miss's text makes near misses actionable; a semantic hit's lets feedback keep the pair.
            record.prompt = key.prompt
        if row is None:
            return None, vector
        return hit_result(row, status, record), vector

    def _nearest(
        self, key: RequestKey, vector: np.ndarray, record: LookupRecord, threshold: float | None
    ) -> Row | None:
        learned = self.verifiers.in_force(key.namespace) if self.verifiers is not None else None
        if learned is not None:
            # A learned verifier decides from a low floor up: it tells paraphrases from near misses better.
            admit, wanted = self.verifier_floor, self.verifier_candidates
        else:
            admit = threshold if threshold is not None else self.thresholds.in_force(key.namespace)[0]
            wanted = 1
        record.embedder, record.threshold = self.embedder.name, admit
        rows = self.backend.read(find_neighbours, key.scope_key, self.embedder.name, vector, wanted)
        if not rows or rows[0].similarity is None:
            return None
        record.similarity, record.candidate_id = rows[0].similarity, rows[0].id
        candidates = [
            Candidate(
                request=key.prompt or "",
                cached=row.prompt,
                similarity=row.similarity,
                entry_id=row.id,
                entry_threshold=row.min_similarity,
            )
            for row in rows
            if row.similarity is not None and row.similarity >= admit
        ]
        if not candidates:
            return None
        chosen = self.verifier.choose(candidates, record, learned)
        if chosen is None:
            return None
        return next(row for row in rows if row.id == chosen.entry_id)

    def embed_query(self, prompt: str, record: LookupRecord) -> np.ndarray | None:
        """The prompt's vector; with fail-open, None while the embedder fails (the exact tier still serves)."""
        cost = EmbeddingCost()
        if not self.backend.fail_open:
            vector = embed_texts(self.embedder, [prompt], cost)[0]
        elif not self.embedder_breaker.allow():
            return None
        else:
            try:
                vector = embed_texts(self.embedder, [prompt], cost)[0]
            except EmbedderError as exc:
                self.embedder_breaker.failure(exc)
                record.error = "embedder: unavailable"
                return None
            self.embedder_breaker.success()
        record.embedding_tokens, record.embedding_ms = cost.tokens, cost.ms
        return vector
