"""Learned verifiers stored in PostgreSQL, and the one in force for a namespace.

A verifier is trained once (``pgcache verifier train``) and stored in
``pgcache_verifiers`` with its calibrated probability threshold; every process
using the database picks up the newest version of its namespace and embedder
within :attr:`Verifiers.refresh_seconds`. Weights are loaded once per process
and shared by every cache in it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from . import queries
from .backend import Backend
from .breaker import CircuitBreaker
from .errors import PgcacheError


@dataclass(frozen=True)
class StoredVerifier:
    """A row of ``pgcache_verifiers`` (``weights`` only when asked for)."""

    id: int
    namespace: str
    embedder: str
    version: int
    created_at: datetime
    threshold: float
    target_precision: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    size: int = 0
    weights: bytes | None = None

    def describe(self) -> dict[str, Any]:
        """The verifier as JSON-ready data, without its weights."""
        return {
            "namespace": self.namespace,
            "embedder": self.embedder,
            "version": self.version,
            "created_at": self.created_at.isoformat(),
            "threshold": self.threshold,
            "target_precision": self.target_precision,
            "size_bytes": self.size,
            "metrics": self.metrics,
        }


def save(
    conn: psycopg.Connection,
    namespace: str,
    embedder: str,
    weights: bytes,
    threshold: float,
    target_precision: float | None,
    metrics: dict[str, Any],
) -> StoredVerifier:
    """Store a new version (the previous one's number + 1) and return it."""
    with conn.transaction():
        # One writer at a time per namespace and embedder, so two trainings cannot take the same version.
        conn.execute(queries.LOCK_VERIFIERS, (namespace, embedder))
        row = conn.execute(
            queries.SAVE_VERIFIER,
            {
                "namespace": namespace,
                "embedder": embedder,
                "weights": weights,
                "threshold": threshold,
                "target_precision": target_precision,
                "metrics": Jsonb(metrics),
            },
        ).fetchone()
    assert row is not None, "INSERT ... RETURNING returns a row"
    return _stored(row)


def listing(conn: psycopg.Connection, namespace: str | None = None) -> list[StoredVerifier]:
    """Every stored verifier (of ``namespace``), newest first, without weights."""
    return [_stored(row) for row in conn.execute(queries.LIST_VERIFIERS, {"namespace": namespace}).fetchall()]


def newest(conn: psycopg.Connection, namespace: str, embedder: str) -> StoredVerifier | None:
    """The verifier in force for a namespace and embedder, without weights."""
    row = conn.execute(queries.NEWEST_VERIFIER, (namespace, embedder)).fetchone()
    return _stored(row) if row else None


def load(conn: psycopg.Connection, namespace: str, embedder: str, version: int | None = None) -> StoredVerifier | None:
    """A stored verifier with its weights: the given version, else the newest."""
    row = conn.execute(
        queries.LOAD_VERIFIER, {"namespace": namespace, "embedder": embedder, "version": version}
    ).fetchone()
    if row is None:
        return None
    *columns, weights = row
    stored = _stored(tuple(columns))
    return StoredVerifier(**{**stored.__dict__, "weights": bytes(weights)})


def delete(conn: psycopg.Connection, namespace: str, embedder: str, version: int) -> bool:
    return conn.execute(queries.DELETE_VERIFIER, (namespace, embedder, version)).rowcount > 0


def _stored(row: tuple) -> StoredVerifier:
    id_, namespace, embedder, version, created_at, threshold, target, metrics, size = row
    return StoredVerifier(id_, namespace, embedder, version, created_at, threshold, target, metrics or {}, size)


@dataclass(frozen=True)
class Learned:
    """The verifier in force: a loaded cross-encoder and the probability at which it serves."""

    stored: StoredVerifier
    encoder: Any
    threshold: float


_encoders: dict[str, Any] = {}
_encoders_lock = threading.Lock()


def encoder_for(weights: bytes) -> Any:
    """The cross-encoder for these weights, loaded once per process."""
    from .crossencoder import CrossEncoder

    digest = hashlib.sha256(weights).hexdigest()
    with _encoders_lock:
        encoder = _encoders.get(digest)
        if encoder is None:
            encoder = _encoders[digest] = CrossEncoder.from_bytes(weights)
        return encoder


class Verifiers:
    """The learned verifier in force per namespace, re-read at most every :attr:`refresh_seconds`.

    ``mode`` is the ``verifier`` setting: ``auto`` uses the namespace's newest
    stored verifier when there is one, ``off`` never does. A verifier that
    cannot be read or loaded is logged once (a circuit breaker) and treated as
    absent: lookups fall back to the cosine threshold.
    """

    refresh_seconds = 60.0

    def __init__(self, backend: Backend, embedder: Any, mode: str = "auto", threshold: float | None = None) -> None:
        self.backend = backend
        self.embedder = embedder
        self.mode = mode
        self.threshold = threshold
        self.breaker = CircuitBreaker(
            subject="learned verifier",
            fallback="semantic hits need the cosine threshold",
            recovery="verification resumed",
        )
        """Trips while the verifier cannot be loaded or fails to score; ``breaker.failures`` counts."""
        self._cached: dict[str, tuple[float, Learned | None]] = {}
        self._lock = threading.Lock()

    def in_force(self, namespace: str) -> Learned | None:
        if self.mode == "off":
            return None
        with self._lock:
            cached = self._cached.get(namespace)
        if cached is not None and time.monotonic() - cached[0] <= self.refresh_seconds:
            return cached[1]
        learned = cached[1] if cached else None
        if self.breaker.allow():
            try:
                learned = self._read(namespace, learned)
            except (PgcacheError, OSError, ValueError, RuntimeError) as exc:
                # A verifier is an improvement, never a dependency: without one the cosine threshold decides.
                self.breaker.failure(exc)
            else:
                self.breaker.success()
        with self._lock:
            self._cached[namespace] = (time.monotonic(), learned)
        return learned

    def _read(self, namespace: str, current: Learned | None) -> Learned | None:
        # Read without the cache's fail-open breaker: a verifier that cannot be read must not take the cache down.
        stored = self.backend.read(newest, namespace, self.embedder.name)
        if stored is None:
            return None
        if current is not None and current.stored.id == stored.id:
            return current
        full = self.backend.read(load, namespace, self.embedder.name, stored.version)
        if full is None or full.weights is None:
            return None
        return Learned(full, encoder_for(full.weights), self.threshold or full.threshold)

    def pin(self, namespace: str, learned: Learned | None) -> None:
        """Use ``learned`` for ``namespace`` (None: no verifier) instead of the stored one, until :meth:`forget`."""
        with self._lock:
            self._cached[namespace] = (float("inf"), learned)

    def forget(self, namespace: str | None = None) -> None:
        """Re-read the verifier (of ``namespace``, or all) on its next use."""
        with self._lock:
            for key in list(self._cached):
                if namespace is None or key == namespace:
                    del self._cached[key]
