"""Reporting views, docs/sql-reporting.md and `pgcache report`, on a known sequence of lookups."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pgcache.cli import app

from .conftest import query

DOC = Path(__file__).resolve().parents[1] / "docs" / "sql-reporting.md"
runner = CliRunner()


@pytest.fixture
def populated(cache, database_url):
    """miss, exact, semantic, near miss, miss, and one entry never hit."""
    cache.query("What is a buffer overflow vulnerability?")  # miss
    cache.query("What is a buffer overflow vulnerability?")  # exact
    cache.query("buffer overflow, explained")  # semantic
    cache.query("Explain buffer overflow attacks", threshold=0.99)  # miss, best candidate ~0.96: a near miss
    cache.query("How does SQL injection work?")  # miss
    cache.store("Never asked", "unused", tags=["cold"])
    cache.flush()
    return database_url


def documented_views() -> dict[str, list[tuple[str, str]]]:
    text = DOC.read_text(encoding="utf-8")
    views = {}
    for name, body in re.findall(r"^## `(pgcache_\w+)`\n(.*?)(?=^## )", text, re.M | re.S):
        views[name] = re.findall(r"^\| `(\w+)` \| ([^|]+?) \|", body, re.M)
    return views


def test_docs_describe_every_view_and_column(database_url):
    views = documented_views()
    actual = {row[0] for row in query(database_url, "SELECT viewname FROM pg_views WHERE viewname LIKE 'pgcache%%'")}
    assert set(views) == actual
    for view, columns in views.items():
        rows = query(
            database_url,
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 ORDER BY attnum",
            (view,),
        )
        assert columns == rows, view


def test_every_example_query_runs_and_returns_rows(populated):
    examples = re.findall(r"```sql\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert len(examples) >= 4
    for example in examples:
        assert query(populated, example), example


def test_views_count_the_sequence(populated):
    daily = query(
        populated, "SELECT lookups, exact_hits, semantic_hits, misses, errors, hit_rate FROM pgcache_daily_stats"
    )
    assert daily == [(5, 1, 1, 3, 0, 0.4)]
    near = query(populated, "SELECT prompt, candidate_prompt, threshold FROM pgcache_near_misses")
    assert near == [("Explain buffer overflow attacks", "What is a buffer overflow vulnerability?", 0.99)]
    top = query(populated, "SELECT prompt, hit_count FROM pgcache_top_entries")
    assert top == [("What is a buffer overflow vulnerability?", 2)]


def test_report_json_matches_the_sequence(populated):
    result = runner.invoke(app, ["report", "--database-url", populated, "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    totals = report["totals"]
    assert (totals["lookups"], totals["exact_hits"], totals["semantic_hits"], totals["misses"]) == (5, 1, 1, 3)
    assert (totals["hit_rate"], totals["exact_hit_rate"], totals["semantic_hit_rate"]) == (0.4, 0.2, 0.2)
    # Both hits served the first answer: its usage, as the fake server reported it, twice.
    first = query(
        populated,
        "SELECT prompt_tokens, completion_tokens FROM pgcache_entries "
        "WHERE prompt = 'What is a buffer overflow vulnerability?'",
    )[0]
    assert (totals["prompt_tokens_saved"], totals["completion_tokens_saved"]) == (2 * first[0], 2 * first[1])
    assert totals["dollars_saved"] == pytest.approx((2 * first[0] * 0.15 + 2 * first[1] * 0.60) / 1e6)
    assert totals["llm_seconds_saved"] > 0
    assert [d["lookups"] for d in report["days"]] == [5]
    assert [e["prompt"] for e in report["top_entries"]] == ["What is a buffer overflow vulnerability?"]
    assert [n["prompt"] for n in report["near_misses"]] == ["Explain buffer overflow attacks"]


def test_report_filters_csv_and_table(populated):
    other = runner.invoke(app, ["report", "--database-url", populated, "--format", "json", "--model", "gpt-4o"])
    assert json.loads(other.stdout)["totals"]["lookups"] == 0
    rows = list(
        csv.DictReader(
            io.StringIO(
                runner.invoke(app, ["report", "--database-url", populated, "--format", "csv", "--since", "1d"]).stdout
            )
        )
    )
    assert [(r["model"], r["lookups"], r["hit_rate"]) for r in rows] == [("gpt-4o-mini", "5", "0.4"), ("*", "5", "0.4")]
    table = runner.invoke(app, ["report", "--database-url", populated])
    assert table.exit_code == 0 and "hit rate per day" in table.stdout and "near misses" in table.stdout
    bad = runner.invoke(app, ["report", "--database-url", populated, "--format", "xml"])
    assert bad.exit_code != 0


def test_prices_can_be_overridden(populated, tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpt-4o-mini": [1000000, 0]}))
    result = runner.invoke(
        app, ["report", "--database-url", populated, "--format", "json"], env={"PGCACHE_PRICES": str(prices)}
    )
    report = json.loads(result.stdout)
    assert report["totals"]["dollars_saved"] == report["totals"]["prompt_tokens_saved"]
