"""Rendering a report (from :func:`pgcache.report.build_report`) as Rich tables or CSV."""

from __future__ import annotations

import csv
import io
from typing import Any

CSV_COLUMNS = (
    "model",
    "lookups",
    "exact_hits",
    "semantic_hits",
    "misses",
    "bypasses",
    "errors",
    "hit_rate",
    "exact_hit_rate",
    "semantic_hit_rate",
    "prompt_tokens_saved",
    "completion_tokens_saved",
    "tokens_saved_estimated",
    "dollars_saved",
    "llm_seconds_saved",
)
BAR_WIDTH = 40


def to_csv(report: dict[str, Any]) -> str:
    """One row per model and a final ``*`` row with the totals (a what-if has no place in them: json has it)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in report["models"]:
        writer.writerow(row)
    writer.writerow({**report["totals"], "model": "*"})
    return out.getvalue()


def hit_rate_bar(rate: float | None, width: int = BAR_WIDTH) -> str:
    """A text bar for a hit rate between 0 and 1."""
    if rate is None:
        return ""
    filled = round(rate * width)
    return "█" * filled + "·" * (width - filled)


def render(report: dict[str, Any], console) -> None:
    """Print the report as Rich tables on ``console``."""
    from rich.table import Table

    totals = report["totals"]
    scope = ", ".join(f"{k} {report[k]}" for k in ("namespace", "model") if report[k]) or "all namespaces and models"
    since = f"since {report['since'][:16].replace('T', ' ')} UTC" if report["since"] else "all time"
    console.print(f"[bold]pgcache report[/bold]: {scope}, {since}")
    summary = Table(show_header=False)
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    rows = [
        ("requests", totals["lookups"]),
        ("hit rate", _percent(totals["hit_rate"])),
        ("  exact hits", f"{totals['exact_hits']} ({_percent(totals['exact_hit_rate'])})"),
        ("  semantic hits", f"{totals['semantic_hits']} ({_percent(totals['semantic_hit_rate'])})"),
        ("misses", totals["misses"]),
        ("errors", totals["errors"]),
        (
            "tokens saved",
            _with_estimated(
                totals["prompt_tokens_saved"] + totals["completion_tokens_saved"], totals["tokens_saved_estimated"]
            ),
        ),
        ("money saved (gross)", _dollars(totals["dollars_saved"])),
        ("LLM time saved", _seconds(totals["llm_seconds_saved"])),
    ]
    if report.get("threshold"):
        threshold = report["threshold"]
        rows.append(("semantic threshold", f"{threshold['value']:.4f} ({threshold['source']})"))
    verifier = report.get("verifier")
    if verifier:
        rows.append(
            (
                "learned verifier",
                f"version {verifier['version']}, probability >= {verifier['threshold']:.3f}, held-out precision "
                f"{ratio(verifier['precision'])} (95% lower bound {ratio(verifier['precision_lower'])}) on "
                f"{verifier['pairs']} pairs",
            )
        )
    elif "verifier" in report:
        rows.append(("learned verifier", "none: the cosine threshold decides (`pgcache verifier train`)"))
    if report.get("index"):
        index = report["index"]
        advice = (
            f"; {index['rows']} vectors want {index['recommended_lists']}: run `pgcache reindex`"
            if index["needs_reindex"]
            else ""
        )
        rows.append(("vector index", f"{index['lists']} lists{advice}"))
    for name, value in rows:
        summary.add_row(name, str(value))
    console.print(summary)

    if report["models"]:
        per_model = Table(title="per model")
        for column in ("model", "requests", "hit rate", "tokens saved", "money saved", "LLM time saved"):
            per_model.add_column(column, justify="left" if column == "model" else "right")
        for m in report["models"]:
            per_model.add_row(
                m["model"],
                str(m["lookups"]),
                _percent(m["hit_rate"]),
                str(m["prompt_tokens_saved"] + m["completion_tokens_saved"]),
                _dollars(m["dollars_saved"]),
                _seconds(m["llm_seconds_saved"]),
            )
        console.print(per_model)

    if report["days"]:
        chart = Table(title="hit rate per day (UTC)")
        chart.add_column("day")
        chart.add_column("requests", justify="right")
        chart.add_column("hit rate", justify="right")
        chart.add_column("")
        for d in report["days"]:
            chart.add_row(d["day"], str(d["lookups"]), _percent(d["hit_rate"]), hit_rate_bar(d["hit_rate"]))
        console.print(chart)

    if report.get("savings"):
        render_savings(report["savings"], console)

    if report["top_entries"]:
        top = Table(title="top entries")
        for column in ("id", "hits", "tokens saved", "model", "prompt"):
            top.add_column(column, justify="right" if column in ("id", "hits", "tokens saved") else "left")
        for e in report["top_entries"]:
            top.add_row(
                str(e["entry_id"]),
                str(e["hit_count"]),
                f"{e['tokens_saved']} (estimated)" if e.get("tokens_estimated") else str(e["tokens_saved"]),
                e["model"],
                _shorten(e["prompt"]),
            )
        console.print(top)

    if report["near_misses"]:
        near = Table(title="near misses (best candidate just under the threshold)")
        for column in ("similarity", "threshold", "prompt", "nearest entry"):
            near.add_column(column)
        for n in report["near_misses"]:
            near.add_row(
                f"{n['similarity']:.3f}",
                f"{n['threshold']:.3f}",
                _shorten(n["prompt"]),
                _shorten(n["candidate_prompt"]),
            )
        console.print(near)

    if report.get("what_if"):
        render_what_if(report["what_if"], console)


def render_savings(net: dict[str, Any], console) -> None:
    """Gross savings, the cache's costs, net savings and break-even (from :func:`pgcache.report.savings`)."""
    from rich.table import Table

    table = Table(title="is caching paying off? (pgcache_savings)", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    estimated = net["gross_savings_estimated"]
    cpu = f" at ${net['cpu_hour_price']:g} per CPU hour" if net["cpu_hour_price"] is not None else ""
    rows = [
        (
            "gross savings",
            _dollars(net["gross_savings"]) + (f" ({_dollars(estimated)} estimated)" if estimated else ""),
        ),
        ("  of which semantic hits", _dollars(net["semantic_savings"])),
        (
            "embedding cost",
            f"{_dollars(net['embedding_cost'])} ({net['embedded_lookups']} lookups, "
            + (
                f"{net['embedding_tokens']} tokens)"
                if net["embedding_tokens"]
                else f"{_seconds(net['embedding_seconds'])} CPU{cpu})"
            ),
        ),
        ("judge cost", f"{_dollars(net['judge_cost'])} ({net['judge_tokens']} tokens)"),
        ("verifier cost", f"{_dollars(net['verifier_cost'])} ({_seconds(net['verifier_seconds'])} CPU{cpu})"),
        ("cache cost", _dollars(net["cache_cost"])),
        ("net savings", _dollars(net["net_savings"])),
        ("break-even", _break_even(net)),
    ]
    if net["unpriced"]:
        rows.append(("no price for", ", ".join(net["unpriced"]) + " (counted as $0: add them to pgcache_prices)"))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    for label, key in (("namespace", "namespaces"), ("day", "days")):
        if len(net[key]) > 1:
            per = Table(title=f"savings per {label}" + (" (UTC)" if key == "days" else ""))
            per.add_column(label, overflow="fold")
            for column in ("lookups", "hits", "gross", "cache cost", "net"):
                per.add_column(column, justify="right")
            for row in net[key]:
                per.add_row(
                    row[label],
                    str(row["lookups"]),
                    str(row["hits"]),
                    _dollars(row["gross_savings"]),
                    _dollars(row["cache_cost"]),
                    _dollars(row["net_savings"]),
                )
            console.print(per)


def _break_even(net: dict[str, Any]) -> str:
    if net["break_even_lookups"] is None:
        return "-" if not net["embedded_lookups"] else "no semantic hit or no embedding cost yet"
    now = net["lookups_per_semantic_hit"]
    return (
        f"one semantic hit per {net['break_even_lookups']:,.1f} embedded lookups pays for the embeddings "
        f"(now one per {now:,.1f})"
    )


def _with_estimated(total: int, estimated: int) -> str:
    return f"{total} ({estimated} estimated)" if estimated else str(total)


def render_what_if(scenario: dict[str, Any], console) -> None:
    """The what-if of another threshold (from :func:`pgcache.report.what_if`) as Rich tables."""
    from rich.table import Table

    at = f"{scenario['threshold']:.3f}"
    summary = Table(title=f"what if the semantic threshold were {at} (replayed from the ledger)", show_header=False)
    summary.add_column("figure")
    summary.add_column("value", justify="right")
    for name, value in _what_if_rows(scenario, at):
        summary.add_row(name, value)
    console.print(summary)
    if len(scenario["namespaces"]) > 1:
        per_namespace = Table(title=f"what if, per namespace, at {at}")
        per_namespace.add_column("namespace", overflow="fold")
        for column in ("replayed", "hits", "lost", "served", "refused", "net", "share"):
            per_namespace.add_column(column, justify="right")
        for n in scenario["namespaces"]:
            per_namespace.add_row(
                n["namespace"],
                str(n["considered"]),
                str(n["semantic_hits"]),
                str(n["hits_lost"]),
                str(n["new_hits"]),
                str(n["still_refused"]),
                f"{n['net_change']:+d}",
                "-" if n["net_change_share"] is None else f"{n['net_change_share']:+.1%}",
            )
        console.print(per_namespace)


def _what_if_rows(scenario: dict[str, Any], at: str) -> list[tuple[str, str]]:
    excluded = scenario["excluded"]
    bounds = scenario["thresholds_in_force"]
    refusals = ", ".join(f"{check} {n}" for check, n in scenario["refused_by"].items() if n)
    rows = [
        ("lookups replayed", f"{scenario['considered']} of {scenario['lookups']}"),
        (
            "  left out",
            f"exact {excluded['exact_hits']}, no candidate {excluded['no_candidate']}, "
            f"bypass {excluded['bypasses']}, error {excluded['errors']}",
        ),
        ("thresholds in force", "-" if bounds is None else _span(bounds["min"], bounds["max"])),
        ("semantic hits served", str(scenario["semantic_hits"])),
        (f"  kept at {at}", str(scenario["hits_kept"])),
        (f"  lost at {at}", f"{scenario['hits_lost']} ({scenario['lost_hit_tokens']} tokens paid again)"),
        (f"misses reaching {at}", str(scenario["new_hits"] + scenario["still_refused"])),
        ("  would be served (unverified)", str(scenario["new_hits"])),
        ("  would still be refused", f"{scenario['still_refused']}" + (f" ({refusals})" if refusals else "")),
        (f"semantic hits at {at}", str(scenario["hits_at_threshold"])),
        ("net change", _change(scenario["net_change"], scenario["net_change_share"])),
        (
            "tokens the new hits would save",
            f"{scenario['new_hit_tokens']} (recorded for {scenario['new_hits_with_tokens']} of {scenario['new_hits']})",
        ),
    ]
    if scenario["verifier_scored"]:
        rows.append(("scored by a learned verifier", f"{scenario['verifier_scored']} (its floor was the threshold)"))
    return rows


def _change(net: int, share: float | None) -> str:
    return f"{net:+d}" + ("" if share is None else f" ({share:+.1%} of replayed lookups)")


def _span(low: float, high: float) -> str:
    return f"{low:.3f}" if low == high else f"{low:.3f}–{high:.3f}"


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"


def _dollars(value: float | None) -> str:
    if value is None:
        return "-"
    # Costs per lookup are fractions of a cent: four decimals would show them as nothing.
    sign, value = ("-" if value < 0 else ""), abs(value)
    return f"{sign}${value:,.4f}" if value == 0 or value >= 0.01 else f"{sign}${value:.8f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}s"


def _shorten(text: str | None, width: int = 60) -> str:
    if text is None:
        return "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def grid_table(rows: list[dict[str, Any]], threshold_label: str = "threshold") -> Any:
    """Precision, its 95% lower bound, recall, F1 and wrong hits across thresholds, as a Rich table."""
    from rich.table import Table

    table = Table()
    for column in (threshold_label, "precision", "95% lower", "recall", "F1", "wrong hits"):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            f"{row['threshold']:.2f}",
            ratio(row["precision"]),
            ratio(row["precision_lower"]),
            ratio(row["recall"]),
            ratio(row["f1"]),
            f"{row['wrong_hit_rate']:.1%}",
        )
    return table


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
