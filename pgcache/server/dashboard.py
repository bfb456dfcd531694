"""The dashboard of ``pgcache serve`` (``GET /``): its figures, read from the documented SQL views.

The page (``static/dashboard.html`` with its script) asks ``GET /pgcache/dashboard.json``
for the figures of the last ``hours`` hours and draws them with uPlot, which the
server serves itself, so the page works offline. Every number comes from
``pgcache_hourly_stats``, ``pgcache_top_entries``, ``pgcache_near_misses`` and
``pgcache_feedback_log`` (docs/sql-reporting.md): the dashboard keeps no
bookkeeping of its own.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from ..prices import cost

HOURLY = """
SELECT hour, model, lookups, exact_hits, semantic_hits, misses, bypasses, errors,
       prompt_tokens_saved, completion_tokens_saved, latency_p50_ms, latency_p95_ms, latency_p99_ms
FROM pgcache_hourly_stats WHERE hour >= %(since)s ORDER BY hour
"""
TOP_ENTRIES = """
SELECT entry_id, namespace, prompt, hit_count, tokens_saved, last_hit_at
FROM pgcache_top_entries WHERE live ORDER BY hit_count DESC, entry_id LIMIT %(limit)s
"""
NEAR_MISSES = """
SELECT at, namespace, prompt, similarity, threshold, candidate_prompt
FROM pgcache_near_misses WHERE at >= %(since)s ORDER BY at DESC LIMIT %(limit)s
"""
WRONG_HITS = """
SELECT at, namespace, prompt, entry_prompt, similarity
FROM pgcache_feedback_log WHERE verdict = 'wrong' AND at >= %(since)s ORDER BY at DESC LIMIT %(limit)s
"""


def figures(
    conn: psycopg.Connection, prices: Mapping[str, tuple[float, float]], hours: int = 24, limit: int = 10
) -> dict[str, Any]:
    """Everything the dashboard shows, for the last ``hours`` hours, as JSON-ready values."""
    now = datetime.now(UTC)
    since = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    params = {"since": since, "limit": limit}
    per_hour: dict[datetime, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    totals: dict[str, float] = defaultdict(float)
    dollars, priced = 0.0, True
    for row in conn.execute(HOURLY, params).fetchall():
        hour, model, lookups, exact, semantic, misses, bypasses, errors, prompt_saved, completion_saved, *latency = row
        slot = per_hour[hour]
        for name, value in (("lookups", lookups), ("exact", exact), ("semantic", semantic), ("misses", misses)):
            slot[name] += value
            totals[name] += value
        totals["bypasses"] += bypasses
        totals["errors"] += errors
        totals["prompt_tokens_saved"] += prompt_saved
        totals["completion_tokens_saved"] += completion_saved
        # Percentiles do not add up across models and namespaces: the hour shows the slowest group's.
        for name, value in zip(("p50", "p95", "p99"), latency, strict=True):
            slot[name] = max(slot.get(name, 0.0), value or 0.0)
        price = cost(prices, model, prompt_saved, completion_saved)
        dollars += price or 0.0
        priced = priced and (price is not None or prompt_saved + completion_saved == 0)
    hours_shown = [since + timedelta(hours=i) for i in range(hours)]
    series = {
        name: [per_hour[h][name] if h in per_hour else None for h in hours_shown]
        for name in ("lookups", "exact", "semantic", "misses", "p50", "p95", "p99")
    }
    series["hit_rate"] = [
        (per_hour[h]["exact"] + per_hour[h]["semantic"]) / per_hour[h]["lookups"] if h in per_hour else None
        for h in hours_shown
    ]
    hits = totals["exact"] + totals["semantic"]
    return {
        "generated_at": now.isoformat(),
        "hours": hours,
        "time": [int(h.timestamp()) for h in hours_shown],
        "series": series,
        "totals": {
            "lookups": int(totals["lookups"]),
            "exact_hits": int(totals["exact"]),
            "semantic_hits": int(totals["semantic"]),
            "misses": int(totals["misses"]),
            "errors": int(totals["errors"]),
            "hit_rate": hits / totals["lookups"] if totals["lookups"] else None,
            "tokens_saved": int(totals["prompt_tokens_saved"] + totals["completion_tokens_saved"]),
            "dollars_saved": round(dollars, 6),
            "all_models_priced": priced,
        },
        "top_entries": _rows(conn, TOP_ENTRIES, params),
        "near_misses": _rows(conn, NEAR_MISSES, params),
        "wrong_hits": _rows(conn, WRONG_HITS, params),
    }


def _rows(conn: psycopg.Connection, statement: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    cursor = conn.execute(statement, params)
    names = [column.name for column in cursor.description or ()]
    return [
        {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in zip(names, row, strict=True)
        }
        for row in cursor.fetchall()
    ]
