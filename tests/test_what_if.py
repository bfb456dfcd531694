"""`pgcache report --what-if-threshold`: another threshold replayed from the ledger, against hand counts."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from pgcache import Cache
from pgcache.cli import app
from pgcache.embedders import OpenAIEmbedder
from pgcache.errors import ConfigurationError, PgcacheError

from .conftest import query

DOC = Path(__file__).resolve().parents[1] / "docs" / "sql-reporting.md"
runner = CliRunner()


@pytest.fixture
def traffic(database_url, llm):
    """Real lookups through a cache whose guard checks numbers (the fake server puts a topic's texts at ~0.96)."""
    with Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm, guard_rules=["numbers"]) as cache:
        cache.query("What is a buffer overflow?")  # miss: nothing in scope yet, no candidate
        cache.query("What is a buffer overflow?")  # exact hit
        cache.query("buffer overflow, explained")  # semantic hit at ~0.96 (threshold 0.92)
        cache.query("Explain buffer overflow attacks", threshold=0.99)  # miss at ~0.96: under 0.99, no check ran
        cache.query("buffer overflow in version 2")  # ~0.96 >= 0.92, refused: "guard: numbers"
        cache.query("How does SQL injection work?")  # miss, nearest entry at ~0
        cache.query("What is SQL injection?", bypass=True)  # bypass
        cache.query("buffer overflow basics", namespace="other")  # miss: nothing in that scope yet
        cache.query("buffer overflow, in short", namespace="other", threshold=0.99)  # miss at ~0.96, no check
        cache.flush()
        yield cache


def tokens_of(url: str, *prompts: str) -> int:
    """The tokens the LLM reported for these prompts' answers (what a hit on them would have saved)."""
    rows = query(
        url, "SELECT prompt_tokens + completion_tokens FROM pgcache_entries WHERE prompt = ANY(%s)", [list(prompts)]
    )
    assert len(rows) == len(prompts)
    return sum(row[0] for row in rows)


def test_real_traffic_at_a_lower_threshold(traffic, database_url):
    scenario = traffic.report(what_if_threshold=0.85)["what_if"]
    # 9 lookups; 5 reached the semantic tier with a candidate: "explained" (hit), "attacks" (miss under 0.99),
    # "version 2" (refused by the guard), "SQL injection" (nearest at ~0), "in short" (miss under 0.99).
    assert scenario["threshold"] == 0.85
    assert scenario["lookups"] == 9
    assert scenario["excluded"] == {"exact_hits": 1, "no_candidate": 2, "bypasses": 1, "errors": 0}
    assert scenario["considered"] == 5
    assert scenario["thresholds_in_force"] == {"min": 0.92, "max": 0.99}
    # At 0.85 the one semantic hit stays; of the 3 misses at ~0.96, "attacks" and "in short" would be served
    # (no check ran on them), "version 2" would still be refused by the guard; "SQL injection" stays a miss.
    assert (scenario["semantic_hits"], scenario["hits_kept"], scenario["hits_lost"]) == (1, 1, 0)
    assert (scenario["new_hits"], scenario["still_refused"]) == (2, 1)
    assert scenario["refused_by"] == {"feedback": 0, "guard": 1, "verifier": 0, "judge": 0, "unverifiable": 0}
    assert (scenario["hits_at_threshold"], scenario["net_change"], scenario["net_change_share"]) == (3, 2, 0.4)
    expected = tokens_of(database_url, "Explain buffer overflow attacks", "buffer overflow, in short")
    assert (scenario["new_hit_tokens"], scenario["new_hits_with_tokens"]) == (expected, 2)
    assert scenario["lost_hit_tokens"] == 0 and scenario["verifier_scored"] == 0
    per_namespace = {n["namespace"]: n for n in scenario["namespaces"]}
    assert list(per_namespace) == ["default", "other"]
    assert [
        (n["considered"], n["new_hits"], n["still_refused"], n["net_change"], n["net_change_share"])
        for n in per_namespace.values()
    ] == [(4, 1, 1, 1, 0.25), (1, 1, 0, 1, 1.0)]


def test_real_traffic_at_a_higher_threshold(traffic, database_url):
    # Every similarity here is ~0.96, under 1.0: the semantic hit is lost and no miss reaches it.
    scenario = traffic.report(what_if_threshold=1.0, namespace="default")["what_if"]
    assert (scenario["considered"], scenario["hits_lost"], scenario["new_hits"]) == (4, 1, 0)
    assert scenario["still_refused"] == 0
    assert (scenario["hits_at_threshold"], scenario["net_change"], scenario["net_change_share"]) == (0, -1, -0.25)
    assert scenario["lost_hit_tokens"] == tokens_of(database_url, "What is a buffer overflow?")
    assert [n["namespace"] for n in scenario["namespaces"]] == ["default"]


def test_without_the_option_there_is_no_what_if(traffic):
    assert "what_if" not in traffic.report()


def test_an_empty_ledger_replays_nothing(cache):
    scenario = cache.report(what_if_threshold=0.9)["what_if"]
    assert (scenario["lookups"], scenario["considered"], scenario["net_change"]) == (0, 0, 0)
    assert scenario["net_change_share"] is None and scenario["thresholds_in_force"] is None
    assert scenario["namespaces"] == []


@pytest.mark.parametrize("bad", [1.5, 0, -0.2, float("nan"), "high", True])
def test_the_library_refuses_a_threshold_that_is_no_similarity(cache, bad):
    with pytest.raises(ConfigurationError, match=r"what_if_threshold must be a cosine similarity in \(0, 1\]"):
        cache.report(what_if_threshold=bad)


# -- hand-written ledger rows: exact similarities, every kind of refusal, a learned verifier -------------------


def verifier_scores(*scored: tuple[int, float]) -> Jsonb:
    return Jsonb([{"entry_id": e, "similarity": s, "probability": 0.5} for e, s in scored])


# namespace, outcome, similarity, threshold, rejected_by, (prompt, completion tokens), entry_id, verifier_scores
ROWS = [
    # "faq", the cosine threshold 0.90 in force (row 5 was asked with threshold=0.85).
    ("faq", "semantic", 0.97, 0.90, None, (50, 10), 1, None),  # 1 kept at 0.85
    ("faq", "semantic", 0.91, 0.90, None, (50, 10), 1, None),  # 2 kept at 0.85
    ("faq", "miss", 0.89, 0.90, None, (100, 20), 11, None),  # 3 would be served: no check ran
    ("faq", "miss", 0.86, 0.90, None, (None, None), None, None),  # 4 would be served; the caller's LLM, no tokens
    ("faq", "miss", 0.88, 0.85, "guard: numbers", (100, 20), 12, None),  # 5 still refused: guard
    ("faq", "miss", 0.84, 0.90, None, (100, 20), 13, None),  # 6 under 0.85: stays a miss
    ("faq", "miss", 0.93, 0.90, "feedback: entry threshold", (100, 20), 14, None),  # 7 still refused: feedback
    ("faq", "miss", 0.95, 0.90, "judge", (100, 20), 15, None),  # 8 still refused: judge
    ("faq", "miss", 0.86, 0.90, "unverifiable: no stored prompt", (100, 20), 16, None),  # 9 still refused
    ("faq", "exact", None, None, None, (50, 10), 1, None),  # left out: exact hit
    ("faq", "miss", None, None, None, (100, 20), 17, None),  # left out: no candidate
    ("faq", "bypass", None, None, None, (100, 20), None, None),  # left out: bypass
    ("faq", "error", None, None, None, (None, None), None, None),  # left out: error
    # "learned": a learned verifier in force; the ledger's threshold is its floor, 0.6.
    ("learned", "semantic", 0.90, 0.6, None, (40, 20), 22, verifier_scores((21, 0.90), (22, 0.80))),  # 14 lost
    ("learned", "semantic", 0.88, 0.6, None, (40, 20), 21, verifier_scores((21, 0.88))),  # 15 kept
    ("learned", "miss", 0.92, 0.6, "verifier: 0.120", (100, 20), 23, verifier_scores((21, 0.92))),  # 16 refused
    ("learned", "miss", 0.55, 0.6, None, (100, 20), 24, None),  # 17 under the floor and under 0.85: a miss
]


def insert(url: str, rows, *, model: str = "gpt-4o-mini", age: timedelta = timedelta(0)) -> None:
    at = datetime.now(UTC) - age
    with psycopg.connect(url, autocommit=True) as conn:
        for namespace, outcome, similarity, threshold, rejected_by, tokens, entry_id, scores in rows:
            conn.execute(
                "INSERT INTO pgcache_lookups (id, at, namespace, model, outcome, entry_id, similarity, threshold, "
                "latency_ms, prompt_tokens, completion_tokens, rejected_by, verifier_scores) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 1.0, %s, %s, %s, %s)",
                (
                    uuid.uuid4(),
                    at,
                    namespace,
                    model,
                    outcome,
                    entry_id,
                    similarity,
                    threshold,
                    *tokens,
                    rejected_by,
                    scores,
                ),
            )


@pytest.fixture
def ledger(cache, database_url):
    insert(database_url, ROWS)
    # Outside the filters of the hand count: another model, and a lookup ten days old.
    insert(database_url, [("faq", "miss", 0.87, 0.90, None, (100, 20), 31, None)], model="gpt-4o")
    insert(database_url, [("faq", "miss", 0.87, 0.90, None, (100, 20), 32, None)], age=timedelta(days=10))
    return cache


def test_hand_written_ledger_at_085(ledger):
    scenario = ledger.report(what_if_threshold=0.85, since="7d", model="gpt-4o-mini")["what_if"]
    faq, learned = scenario["namespaces"]
    # faq: rows 1-9 replayed. Both hits stay (0.97, 0.91 >= 0.85). Of the 6 misses at 0.86-0.95, rows 3 and 4
    # were under the 0.90 in force and met no check: would be served; rows 5, 7, 8, 9 were refused by the guard,
    # the entry's own threshold, the judge and for want of a stored prompt: still refused. Row 6 (0.84) stays.
    assert faq["namespace"] == "faq"
    assert faq["excluded"] == {"exact_hits": 1, "no_candidate": 1, "bypasses": 1, "errors": 1}
    assert (faq["lookups"], faq["considered"], faq["thresholds_in_force"]) == (13, 9, {"min": 0.85, "max": 0.90})
    assert (faq["semantic_hits"], faq["hits_kept"], faq["hits_lost"], faq["new_hits"]) == (2, 2, 0, 2)
    assert faq["still_refused"] == 4
    assert faq["refused_by"] == {"feedback": 1, "guard": 1, "verifier": 0, "judge": 1, "unverifiable": 1}
    assert (faq["net_change"], faq["net_change_share"], faq["hits_at_threshold"]) == (2, round(2 / 9, 4), 4)
    # Only row 3 recorded the LLM's tokens (120); row 4's caller asked the LLM itself.
    assert (faq["new_hit_tokens"], faq["new_hits_with_tokens"], faq["lost_hit_tokens"]) == (120, 1, 0)
    # learned: the verifier served row 14's second candidate (0.80, under 0.85) although its nearest was at 0.90:
    # lost. Row 15's hit (0.88) stays; row 16 (0.92) was refused by the verifier: still refused; row 17 stays a miss.
    assert learned["namespace"] == "learned"
    assert (learned["considered"], learned["verifier_scored"]) == (4, 3)
    assert learned["thresholds_in_force"] == {"min": 0.6, "max": 0.6}
    assert (learned["semantic_hits"], learned["hits_kept"], learned["hits_lost"], learned["new_hits"]) == (2, 1, 1, 0)
    assert (learned["still_refused"], learned["refused_by"]["verifier"]) == (1, 1)
    assert (learned["net_change"], learned["net_change_share"], learned["lost_hit_tokens"]) == (-1, -0.25, 60)
    # Overall: 13 replayed, +2 - 1 = +1.
    assert (scenario["considered"], scenario["semantic_hits"], scenario["hits_lost"]) == (13, 4, 1)
    assert (scenario["new_hits"], scenario["still_refused"], scenario["net_change"]) == (2, 5, 1)
    assert scenario["net_change_share"] == round(1 / 13, 4)
    assert scenario["thresholds_in_force"] == {"min": 0.6, "max": 0.90}


def test_hand_written_ledger_at_095(ledger):
    scenario = ledger.report(what_if_threshold=0.95, since="7d", model="gpt-4o-mini")["what_if"]
    faq, learned = scenario["namespaces"]
    # faq: the hit at 0.91 is lost, 0.97 stays; the only miss at >= 0.95 (row 8) was refused by the judge.
    assert (faq["hits_lost"], faq["new_hits"], faq["still_refused"], faq["net_change"]) == (1, 0, 1, -1)
    assert faq["refused_by"]["judge"] == 1 and faq["lost_hit_tokens"] == 60
    # learned: both hits are lost (0.80 and 0.88); nothing reaches 0.95.
    assert (learned["hits_lost"], learned["new_hits"], learned["still_refused"], learned["net_change"]) == (2, 0, 0, -2)


def test_filters_are_the_reports(ledger):
    everything = ledger.report(what_if_threshold=0.85)["what_if"]
    # The other model's and the old lookup's misses at 0.87 join: two more would be served.
    assert (everything["considered"], everything["new_hits"]) == (15, 4)
    one = ledger.report(what_if_threshold=0.85, model="gpt-4o")["what_if"]
    assert (one["considered"], one["new_hits"], [n["namespace"] for n in one["namespaces"]]) == (1, 1, ["faq"])
    learned = ledger.report(what_if_threshold=0.85, namespace="learned")["what_if"]
    assert (learned["considered"], learned["net_change"]) == (4, -1)


def doc_query() -> str:
    section = DOC.read_text(encoding="utf-8").split("## What if the threshold were different", 1)[1]
    return re.search(r"```sql\n(.*?)```", section, re.S).group(1)


def test_the_documented_sql_gives_the_same_numbers(ledger, database_url):
    assert "VALUES (0.85)" in doc_query()
    for threshold in (0.85, 0.95):
        statement = doc_query().replace("VALUES (0.85)", f"VALUES ({threshold})")
        rows = query(database_url, statement)
        scenario = ledger.report(what_if_threshold=threshold, since="7d")["what_if"]
        expected = [
            (
                figures.get("namespace"),
                figures["considered"],
                figures["semantic_hits"],
                figures["hits_lost"],
                figures["new_hits"],
                figures["still_refused"],
                figures["net_change"],
            )
            for figures in (scenario, *scenario["namespaces"])
        ]
        assert rows == expected, threshold


# -- the command line ------------------------------------------------------------------------------------------


def test_cli_json_table_and_csv(traffic, database_url):
    args = ["report", "--database-url", database_url, "--what-if-threshold", "0.85"]
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    scenario = json.loads(result.stdout)["what_if"]
    assert scenario == traffic.report(what_if_threshold=0.85)["what_if"]
    assert (scenario["new_hits"], scenario["still_refused"], scenario["net_change"]) == (2, 1, 2)
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "what if the semantic threshold were 0.850" in table.stdout
    for label, value in [
        ("lookups replayed", "5 of 9"),
        ("would be served (unverified)", "2"),
        ("would still be refused", "1 (guard 1)"),
        ("net change", "+2 (+40.0% of replayed lookups)"),
    ]:
        assert re.search(rf"{re.escape(label)}\s*│\s*{re.escape(value)} │", table.stdout), label
    assert re.search(r"│ other\s*│\s*1 │\s*0 │\s*0 │\s*1 │\s*0 │\s*\+1 │\s*\+100\.0% │", table.stdout)
    # CSV keeps its one row per model: the what-if is in json and the table only.
    plain = runner.invoke(app, ["report", "--database-url", database_url, "--format", "csv"])
    with_what_if = runner.invoke(app, [*args, "--format", "csv"])
    assert with_what_if.exit_code == 0 and with_what_if.stdout == plain.stdout


@pytest.mark.parametrize("bad, shown", [("1.5", "1.5"), ("high", "'high'"), ("0", "0.0"), ("nan", "nan")])
def test_cli_refuses_a_threshold_that_is_no_similarity(database_url, bad, shown):
    result = runner.invoke(app, ["report", "--database-url", database_url, "--what-if-threshold", bad])
    assert result.exit_code != 0
    assert isinstance(result.exception, PgcacheError)
    assert str(result.exception) == f"--what-if-threshold must be a cosine similarity in (0, 1], got {shown}"
