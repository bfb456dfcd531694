"""Read-only reports over the reporting views (the same SQL users can run), and the what-if of another threshold."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from . import queries
from .connections import Database
from .prices import cost, cpu_cost, merged

REFUSALS = ("feedback", "guard", "verifier", "judge", "unverifiable")
"""The checks named by ``rejected_by`` (its part before the colon), none of which depends on the threshold."""
COUNTS = (
    "lookups",
    "exact_hits",
    "semantic_hits",
    "misses",
    "bypasses",
    "errors",
    "prompt_tokens_saved",
    "completion_tokens_saved",
    "tokens_saved_estimated",
)


def build_report(
    database: Database,
    prices: Mapping[str, tuple[float, float]],
    *,
    since: timedelta | None = None,
    namespace: str | None = None,
    model: str | None = None,
    limit: int = 10,
    what_if_threshold: float | None = None,
) -> dict[str, Any]:
    """Totals, per-model and per-day figures, savings net of the cache's costs, top entries and near misses.

    Plain JSON-ready data. ``since`` counts whole UTC days for the per-day
    figures (the views are daily). ``prices`` are the configured ones: those
    that differ from the built-in table override ``pgcache_prices``. With
    ``what_if_threshold``, a ``what_if`` section too (see :func:`what_if`).
    """
    start = datetime.now(UTC) - since if since is not None else None
    params: dict[str, Any] = {
        "namespace": namespace,
        "model": model,
        "limit": limit,
        "day": start.date() if start else None,
        "at": start,
    }
    with database.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        stored = {row["item"]: (row["input"], row["output"]) for row in cur.execute(queries.STORED_PRICES)}
        prices = merged(stored, prices)
        net = savings(cur, prices, params)
        daily = cur.execute(_query(queries.REPORT_DAILY, "namespace", "model", "day"), params).fetchall()
        top = cur.execute(_query(queries.REPORT_TOP, "namespace", "model"), params).fetchall()
        near = cur.execute(_query(queries.REPORT_NEAR, "namespace", "model", "at"), params).fetchall()
        scenario = what_if(cur, what_if_threshold, params) if what_if_threshold is not None else None

    models: dict[str, dict[str, Any]] = {}
    days: dict[date, dict[str, Any]] = {}
    for row in daily:
        for bucket in (
            models.setdefault(row["model"], _empty(model=row["model"])),
            days.setdefault(row["day"], _empty(day=row["day"].isoformat())),
        ):
            for name in (*COUNTS, "llm_ms_total", "timed_misses"):
                bucket[name] += int(row[name] or 0) if name != "llm_ms_total" else float(row[name] or 0)
    for figures in models.values():
        figures["dollars_saved"] = cost(
            prices, figures["model"], figures["prompt_tokens_saved"], figures["completion_tokens_saved"]
        )
        # A hit saves about what a miss of the same model costs in LLM time.
        mean_llm_ms = figures["llm_ms_total"] / figures["timed_misses"] if figures["timed_misses"] else None
        hits = figures["exact_hits"] + figures["semantic_hits"]
        figures["llm_seconds_saved"] = round(hits * mean_llm_ms / 1000, 3) if mean_llm_ms is not None else None
    totals = _empty()
    for figures in models.values():
        for name in COUNTS:
            totals[name] += figures[name]
    priced = [m["dollars_saved"] for m in models.values() if m["dollars_saved"] is not None]
    timed = [m["llm_seconds_saved"] for m in models.values() if m["llm_seconds_saved"] is not None]
    totals["dollars_saved"] = round(sum(priced), 9) if priced else None
    totals["llm_seconds_saved"] = round(sum(timed), 3) if timed else None
    report = {
        "since": start.isoformat() if start else None,
        "namespace": namespace,
        "model": model,
        "totals": _finish(totals),
        "models": [_finish(m) for m in models.values()],
        "days": [_finish(d) for d in days.values()],
        "savings": net,
        "top_entries": [_jsonable(row) for row in top],
        "near_misses": [_jsonable(row) for row in near],
    }
    if scenario is not None:
        report["what_if"] = scenario
    return report


SAVINGS_SUMS = (
    "lookups",
    "hits",
    "semantic_hits",
    "embedded_lookups",
    "tokens_saved",
    "tokens_saved_estimated",
    "gross_savings",
    "gross_savings_estimated",
    "semantic_savings",
    "embedding_tokens",
    "embedding_seconds",
    "embedding_cost",
    "judge_tokens",
    "judge_cost",
    "verifier_seconds",
    "verifier_cost",
)


MEASURED = frozenset(
    {
        "gross_savings",
        "gross_savings_estimated",
        "semantic_savings",
        "embedding_seconds",
        "embedding_cost",
        "judge_cost",
        "verifier_seconds",
        "verifier_cost",
    }
)
"""Of the sums, the dollars and seconds; the rest count lookups or tokens."""


def savings(
    cur: psycopg.Cursor[dict[str, Any]], prices: Mapping[str, tuple[float, float]], filters: Mapping[str, Any]
) -> dict[str, Any]:
    """Gross savings, the cache's own costs and net savings: overall, per namespace and per UTC day.

    The figures of the ``pgcache_savings`` view, priced with ``prices`` (model
    or embedding model: dollars per million tokens; ``cpu``: per CPU hour). A
    hit saves what its answer cost (estimated for answers stored without
    usage: ``*_estimated``); the cache pays for embedding every request that
    reaches the semantic tier (tokens, or CPU time for a local model), the
    judge's tokens and the learned verifier's CPU time. ``break_even_lookups``:
    how many embedded lookups one semantic hit pays for (the semantic tier pays
    its way while it serves at least one hit in that many). Items with costs or
    savings but no price are listed under ``unpriced`` and counted as $0.
    """
    rows = cur.execute(_query(queries.REPORT_COSTS, "namespace", "model", "day"), filters).fetchall()
    totals = dict.fromkeys(SAVINGS_SUMS, 0.0)
    namespaces: dict[str, dict[str, Any]] = {}
    days: dict[date, dict[str, Any]] = {}
    unpriced: set[str] = set()
    for row in rows:
        figures = _priced(row, prices, unpriced)
        for bucket in (
            totals,
            namespaces.setdefault(
                row["namespace"], {"namespace": row["namespace"], **dict.fromkeys(SAVINGS_SUMS, 0.0)}
            ),
            days.setdefault(row["day"], {"day": row["day"].isoformat(), **dict.fromkeys(SAVINGS_SUMS, 0.0)}),
        ):
            for name in SAVINGS_SUMS:
                bucket[name] += figures[name]
    return {
        **_net(totals),
        "namespaces": [_net(n) for n in namespaces.values()],
        "days": [_net(d) for d in days.values()],
        "unpriced": sorted(unpriced),
        "cpu_hour_price": prices["cpu"][0] if "cpu" in prices else None,
    }


def _priced(row: Mapping[str, Any], prices: Mapping[str, tuple[float, float]], unpriced: set[str]) -> dict[str, float]:
    """One group of ledger rows in dollars; adds to ``unpriced`` what had no price."""

    def dollars(item: str | None, prompt: int, completion: int = 0) -> float:
        if not prompt and not completion:
            return 0.0
        value = cost(prices, item or "", prompt, completion)
        if value is None:
            unpriced.add(item or "?")
            return 0.0
        return value

    def cpu(milliseconds: float) -> float:
        value = cpu_cost(prices, milliseconds) if milliseconds else 0.0
        if value is None:
            unpriced.add("cpu")
            return 0.0
        return value

    model = row["model"]
    return {
        **{name: float(row[name]) for name in ("lookups", "hits", "semantic_hits", "embedded_lookups")},
        "tokens_saved": float(row["prompt_saved"] + row["completion_saved"]),
        "tokens_saved_estimated": float(row["prompt_saved_estimated"] + row["completion_saved_estimated"]),
        "gross_savings": dollars(model, row["prompt_saved"], row["completion_saved"]),
        "gross_savings_estimated": dollars(model, row["prompt_saved_estimated"], row["completion_saved_estimated"]),
        "semantic_savings": dollars(model, row["prompt_saved_semantic"], row["completion_saved_semantic"]),
        "embedding_tokens": float(row["embedding_tokens"]),
        "embedding_seconds": row["embedding_ms"] / 1000,
        "embedding_cost": dollars(row["embedding_item"], row["embedding_tokens"]) + cpu(row["embedding_cpu_ms"]),
        "judge_tokens": float(row["judge_prompt_tokens"] + row["judge_completion_tokens"]),
        "judge_cost": dollars(row["judge_model"], row["judge_prompt_tokens"], row["judge_completion_tokens"]),
        "verifier_seconds": row["verifier_ms"] / 1000,
        "verifier_cost": cpu(row["verifier_ms"]),
    }


def _net(figures: dict[str, Any]) -> dict[str, Any]:
    """Sums made presentable, with the cache's cost, the net savings and the semantic tier's break-even.

    Dollars keep 12 decimals: one lookup's costs are millionths of a dollar.
    """
    out: dict[str, Any] = {}
    for name, value in figures.items():
        if name in SAVINGS_SUMS:
            value = round(value, 12) if name in MEASURED else int(value)
        out[name] = value
    cache_cost = figures["embedding_cost"] + figures["judge_cost"] + figures["verifier_cost"]
    out["cache_cost"] = round(cache_cost, 12)
    out["net_savings"] = round(figures["gross_savings"] - cache_cost, 12)
    per_embedding = figures["embedding_cost"] / figures["embedded_lookups"] if figures["embedded_lookups"] else 0.0
    per_semantic_hit = figures["semantic_savings"] / figures["semantic_hits"] if figures["semantic_hits"] else 0.0
    out["break_even_lookups"] = (
        round(per_semantic_hit / per_embedding, 1) if per_embedding and per_semantic_hit else None
    )
    out["lookups_per_semantic_hit"] = (
        round(figures["embedded_lookups"] / figures["semantic_hits"], 1) if figures["semantic_hits"] else None
    )
    return out


def what_if(cur: psycopg.Cursor[dict[str, Any]], threshold: float, filters: Mapping[str, Any]) -> dict[str, Any]:
    """How many more (or fewer) semantic hits ``threshold`` would have served, from the ledger alone.

    One grouped query over ``pgcache_lookups`` (``filters``: ``namespace``,
    ``model`` and ``at``, as for the report's other queries, ``None`` for
    all). It replays the lookups that reached the semantic tier: a hit stays
    while the similarity of the entry it served reaches ``threshold``; a miss
    whose nearest candidate reaches it would have been served, unless a check
    that does not depend on the threshold refused that candidate
    (``rejected_by``: the entry's own threshold, a guard rule, the learned
    verifier, the judge). A miss below the threshold in force met no check, so
    whether the checks would let it through is unknown. Where a learned verifier
    was in force, the ledger's threshold is its floor and ``threshold`` plays
    the floor's part. Returns the overall figures with one row per namespace
    under ``"namespaces"``; ``cur`` returns dict rows.
    """
    query = _query(queries.REPORT_WHAT_IF, "namespace", "model", "at")
    rows = cur.execute(query, {**filters, "threshold": threshold}).fetchall()
    overall, *namespaces = (_what_if_figures(row) for row in rows)
    return {"threshold": threshold, **overall, "namespaces": namespaces}


def _what_if_figures(row: Mapping[str, Any]) -> dict[str, Any]:
    kept = row["semantic_hits"] - row["hits_lost"]
    net = row["new_hits"] - row["hits_lost"]
    considered = row["considered"]
    labels = {} if row["namespace"] is None else {"namespace": row["namespace"]}
    return {
        **labels,
        "lookups": row["lookups"],
        "excluded": {name: row[name] for name in ("exact_hits", "no_candidate", "bypasses", "errors")},
        "considered": considered,
        "verifier_scored": row["verifier_scored"],
        "thresholds_in_force": None
        if row["threshold_min"] is None
        else {"min": row["threshold_min"], "max": row["threshold_max"]},
        "semantic_hits": row["semantic_hits"],
        "hits_kept": kept,
        "hits_lost": row["hits_lost"],
        "lost_hit_tokens": row["lost_hit_tokens"],
        "new_hits": row["new_hits"],
        "new_hit_tokens": row["new_hit_tokens"],
        "new_hits_with_tokens": row["new_hits_with_tokens"],
        "still_refused": row["still_refused"],
        "refused_by": {check: row[f"refused_{check}"] for check in REFUSALS},
        "hits_at_threshold": kept + row["new_hits"],
        "net_change": net,
        "net_change_share": round(net / considered, 4) if considered else None,
    }


def _query(template: str, *filters: str) -> sql.Composed:
    conditions = [sql.SQL(queries.REPORT_FILTERS[name]) for name in filters]
    return sql.SQL(template).format(where=sql.SQL(" AND ").join(conditions))


def _empty(**labels: Any) -> dict[str, Any]:
    return {**labels, **dict.fromkeys(COUNTS, 0), "llm_ms_total": 0.0, "timed_misses": 0}


def _finish(figures: dict[str, Any]) -> dict[str, Any]:
    figures = {k: v for k, v in figures.items() if k not in ("llm_ms_total", "timed_misses")}
    hits = figures["exact_hits"] + figures["semantic_hits"]
    lookups = figures["lookups"]
    figures["hit_rate"] = round(hits / lookups, 4) if lookups else None
    figures["exact_hit_rate"] = round(figures["exact_hits"] / lookups, 4) if lookups else None
    figures["semantic_hit_rate"] = round(figures["semantic_hits"] / lookups, 4) if lookups else None
    return figures


def _jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: v.isoformat() if isinstance(v, (date, datetime)) else str(v) if isinstance(v, uuid.UUID) else v
        for k, v in row.items()
    }
