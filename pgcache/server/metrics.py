"""Prometheus metrics of ``pgcache serve`` (``GET /metrics``).

With several workers, each process writes its samples to
``PROMETHEUS_MULTIPROC_DIR`` (set by ``pgcache serve`` before the workers
start) and a scrape adds them up, so every scrape sees the whole server.
Counters are this server's since it started; the SQL views
(``pgcache_hit_rate`` and friends) hold the history.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from ..prices import cost
from ..responses import usage_of

if TYPE_CHECKING:
    from ..cache import Cache
    from ..result import CacheResult

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

REQUESTS = Counter(
    "pgcache_requests", "Chat completion requests by how the cache answered them", ["outcome", "namespace"]
)
LOOKUP_SECONDS = Histogram(
    "pgcache_lookup_seconds", "Time from request to the cache's verdict, by outcome", ["outcome"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
UPSTREAM_SECONDS = Histogram(
    "pgcache_upstream_seconds", "Upstream chat completion time (to the last byte)", buckets=LATENCY_BUCKETS
)
UPSTREAM_ERRORS = Counter(
    "pgcache_upstream_errors", "Upstream requests that failed or answered with an error", ["kind"]
)
TOKENS_SAVED = Counter("pgcache_tokens_saved", "Tokens of answers served from the cache", ["namespace", "kind"])
DOLLARS_SAVED = Counter("pgcache_dollars_saved", "List price of the answers served from the cache", ["namespace"])
SINGLE_FLIGHT = Counter(
    "pgcache_single_flight_waits", "Misses that waited for another caller's identical request", ["result"]
)
BREAKER_OPEN = Gauge(
    "pgcache_breaker_open", "1 while a circuit breaker skips a part of the cache", ["breaker"],
    multiprocess_mode="max",
)  # fmt: skip


def record_hit(prices: Mapping[str, tuple[float, float]], result: CacheResult, seconds: float) -> None:
    """Count a hit and what it saved."""
    REQUESTS.labels(result.status, result.namespace).inc()
    LOOKUP_SECONDS.labels(result.status).observe(seconds)
    prompt, completion, _ = usage_of(result.response)
    if prompt:
        TOKENS_SAVED.labels(result.namespace, "prompt").inc(prompt)
    if completion:
        TOKENS_SAVED.labels(result.namespace, "completion").inc(completion)
    dollars = cost(prices, result.model, prompt or 0, completion or 0)
    if dollars:
        DOLLARS_SAVED.labels(result.namespace).inc(dollars)


def record_miss(outcome: str, namespace: str, seconds: float) -> None:
    REQUESTS.labels(outcome, namespace).inc()
    LOOKUP_SECONDS.labels(outcome).observe(seconds)


def exposition(cache: Cache | None) -> tuple[bytes, str]:
    """The metrics page and its content type."""
    if cache is not None:
        for name, breaker in _breakers(cache).items():
            BREAKER_OPEN.labels(name).set(0 if breaker.state == "closed" else 1)
    if _MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def _breakers(cache: Cache) -> dict[str, Any]:
    return {
        "database": cache.backend.breaker,
        "read replica": cache.backend.read_breaker,
        "embedder": cache.finder.embedder_breaker,
        "learned verifier": cache.verifiers.breaker,
    }
