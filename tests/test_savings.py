"""Savings net of the cache's own costs: estimated tokens of warmed answers, the costs recorded per lookup,
pgcache_savings, and the report's savings section, on a known sequence of lookups."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from pgcache import Cache
from pgcache.breaker import CircuitBreaker
from pgcache.cli import app
from pgcache.embedders import OpenAIEmbedder
from pgcache.judge import LLMJudge
from pgcache.ledger import LookupRecord
from pgcache.verify import Candidate, LearnedCheck

from .conftest import query

runner = CliRunner()
FAQ = ("What is a buffer overflow vulnerability?", "A write past the end of a buffer, which can overwrite memory.")
MINI = (0.15, 0.60)  # gpt-4o-mini, dollars per million tokens
EMBEDDING = 0.02  # text-embedding-3-small


def dollars(prompt: int, completion: int, price=MINI) -> float:
    return (prompt * price[0] + completion * price[1]) / 1e6


@pytest.fixture
def traffic(cache, database_url):
    """A warmed answer (no usage), then: exact hit on it, semantic hit on it, miss, exact hit, lookup-only miss."""
    cache.store(*FAQ, tags=["faq"])
    cache.query(FAQ[0])  # exact, estimated tokens, nothing embedded
    cache.query("buffer overflow, explained")  # semantic, estimated tokens, 3 words embedded
    cache.query("How does SQL injection work?")  # miss: the LLM's usage; 5 words embedded
    cache.query("How does SQL injection work?")  # exact, the LLM's usage
    assert cache.lookup("Tell me about cross-site scripting") is None  # miss without an LLM call; 5 words
    cache.flush()
    return database_url


def ledger(url: str) -> list[tuple]:
    return query(
        url,
        "SELECT outcome, tokens_estimated, embedding_tokens, embedding_ms IS NOT NULL, prompt, "
        "prompt_tokens, completion_tokens FROM pgcache_lookups ORDER BY at",
    )


def test_an_answer_stored_without_usage_gets_estimated_counts(traffic):
    rows = query(
        traffic,
        "SELECT source, prompt_tokens, completion_tokens, total_tokens, token_estimator FROM pgcache_entries "
        "ORDER BY id",
    )
    (source, prompt, completion, total, estimator), (_, *llm, llm_estimator) = rows
    assert source == "manual" and estimator in ("o200k_base", "chars/4")
    # The answer's 61 characters are about 15 tokens by any count; the prompt adds OpenAI's message overhead.
    assert 8 <= completion <= 20 and prompt > 7 and total == prompt + completion
    assert llm_estimator is None and llm[2] == llm[0] + llm[1], "the LLM's own usage is kept as reported"


def test_every_lookup_records_what_it_cost_and_misses_their_prompt(traffic):
    rows = ledger(traffic)
    assert [row[:4] for row in rows] == [
        ("exact", True, None, False),
        ("semantic", True, 3, True),
        ("miss", None, 5, True),
        ("exact", False, None, False),
        ("miss", None, 5, True),
    ]
    assert [row[4] for row in rows] == [
        None,
        "buffer overflow, explained",
        "How does SQL injection work?",
        None,
        "Tell me about cross-site scripting",
    ]


def test_report_and_view_agree_with_a_hand_count(traffic):
    rows = ledger(traffic)
    estimated = [r for r in rows if r[1]]
    real = [r for r in rows if r[1] is False]
    gross_estimated = sum(dollars(r[5], r[6]) for r in estimated)
    gross = gross_estimated + sum(dollars(r[5], r[6]) for r in real)
    semantic = dollars(rows[1][5], rows[1][6])
    embedding = 13 * EMBEDDING / 1e6

    result = runner.invoke(app, ["report", "--database-url", traffic, "--format", "json"])
    assert result.exit_code == 0, result.output
    net = json.loads(result.stdout)["savings"]
    assert net["lookups"] == 5 and net["hits"] == 3 and net["semantic_hits"] == 1 and net["embedded_lookups"] == 3
    assert net["tokens_saved"] == sum(r[5] + r[6] for r in estimated + real)
    assert net["tokens_saved_estimated"] == sum(r[5] + r[6] for r in estimated) > 0
    assert net["gross_savings"] == pytest.approx(gross)
    assert net["gross_savings_estimated"] == pytest.approx(gross_estimated)
    assert net["embedding_tokens"] == 13
    assert net["embedding_cost"] == pytest.approx(embedding)
    assert net["cache_cost"] == pytest.approx(embedding) and net["judge_cost"] == 0 and net["verifier_cost"] == 0
    assert net["net_savings"] == pytest.approx(gross - embedding)
    # One semantic hit saves `semantic`; an embedding costs embedding / 3.
    assert net["break_even_lookups"] == pytest.approx(semantic / (embedding / 3), abs=0.05)
    assert net["lookups_per_semantic_hit"] == 3.0
    assert net["unpriced"] == [] and [n["namespace"] for n in net["namespaces"]] == ["default"]
    assert len(net["days"]) == 1 and net["days"][0]["net_savings"] == pytest.approx(gross - embedding)
    assert json.loads(result.stdout)["totals"]["tokens_saved_estimated"] == net["tokens_saved_estimated"]

    (view,) = query(
        traffic,
        "SELECT lookups, hits, semantic_hits, embedded_lookups, tokens_saved, tokens_saved_estimated, gross_savings, "
        "gross_savings_estimated, embedding_tokens, embedding_cost, cache_cost, net_savings, break_even_lookups, "
        "hits_unpriced, costs_unpriced FROM pgcache_savings",
    )
    assert view[:6] == (5, 3, 1, 3, net["tokens_saved"], net["tokens_saved_estimated"])
    assert view[6:12] == pytest.approx((gross, gross_estimated, 13, embedding, embedding, gross - embedding))
    assert view[12] == pytest.approx(semantic / (embedding / 3)) and view[13:] == (0, 0)


def test_the_table_shows_net_savings_and_marks_estimates(traffic):
    result = runner.invoke(app, ["report", "--database-url", traffic])
    assert result.exit_code == 0, result.output
    for text in ("is caching paying off?", "gross savings", "estimated", "embedding cost", "net savings", "break-even"):
        assert text in result.stdout, text


def test_configured_prices_override_the_table_for_the_report_only(traffic):
    result = runner.invoke(
        app,
        ["report", "--database-url", traffic, "--format", "json"],
        env={"PGCACHE_PRICES": json.dumps({"text-embedding-3-small": [1000, 0]})},
    )
    net = json.loads(result.stdout)["savings"]
    assert net["embedding_cost"] == pytest.approx(13 * 1000 / 1e6)
    assert net["net_savings"] < 0 and net["break_even_lookups"] < 1
    assert query(traffic, "SELECT embedding_cost FROM pgcache_savings")[0][0] == pytest.approx(13 * EMBEDDING / 1e6)
    query(traffic, "UPDATE pgcache_prices SET input = 0.04 WHERE item = 'text-embedding-3-small'")
    stored = json.loads(runner.invoke(app, ["report", "--database-url", traffic, "--format", "json"]).stdout)
    assert stored["savings"]["embedding_cost"] == pytest.approx(13 * 0.04 / 1e6), "the report reads the table"


def test_an_unpriced_model_is_named_and_counted_as_zero(database_url, llm):
    with Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm, model="my-own-model") as cache:
        cache.query("What is a buffer overflow vulnerability?")
        cache.query("What is a buffer overflow vulnerability?")
        report = cache.report()
    net = report["savings"]
    assert net["unpriced"] == ["my-own-model"] and net["gross_savings"] == 0 and net["tokens_saved"] > 0
    assert query(database_url, "SELECT hits_unpriced FROM pgcache_savings") == [(1,)]


def test_without_store_prompts_a_miss_keeps_no_text(database_url, llm):
    with Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm, store_prompts=False) as cache:
        assert cache.lookup("Tell me about cross-site scripting") is None
        cache.flush()
    assert query(database_url, "SELECT outcome, prompt, embedding_tokens FROM pgcache_lookups") == [("miss", None, 5)]


def test_a_local_embedder_is_priced_by_its_cpu_time(database_url, llm, local_embedder):
    with Cache(database_url, embedder=local_embedder, llm=llm) as cache:
        cache.store(*FAQ)
        cache.lookup("Explain what a buffer overflow vulnerability is")
        cache.lookup("How do I bake bread?")
        report = cache.report()
    ms = [row[0] for row in query(database_url, "SELECT embedding_ms FROM pgcache_lookups WHERE embedding_ms > 0")]
    net = report["savings"]
    assert len(ms) == 2 and net["embedding_tokens"] == 0
    assert net["embedding_cost"] == pytest.approx(sum(ms) / 3.6e6 * 0.05) and net["embedding_cost"] > 0
    assert net["cpu_hour_price"] == 0.05


def test_the_judge_is_priced_by_its_own_model(database_url, llm, fake):
    fake.topics.append("two-factor authentication")
    with Cache(
        database_url,
        embedder=OpenAIEmbedder(client=llm),
        llm=llm,
        sure_threshold=0.99,
        judge=LLMJudge(llm, model="gpt-4o"),
    ) as cache:
        cache.store("How do I enable two-factor authentication?", "Settings > Security > Enable.")
        assert cache.lookup("How can I turn on two-factor authentication?").status == "semantic"
        report = cache.report()
    assert query(database_url, "SELECT judge_model, judge_tokens, judge_completion_tokens FROM pgcache_lookups") == [
        ("gpt-4o", 61, 1)
    ]
    net = report["savings"]
    assert net["judge_tokens"] == 61 and net["judge_cost"] == pytest.approx((60 * 2.50 + 1 * 10.00) / 1e6)
    assert net["cache_cost"] == pytest.approx(net["judge_cost"] + net["embedding_cost"])
    (view,) = query(database_url, "SELECT judge_cost, cache_cost FROM pgcache_savings")
    assert view == pytest.approx((net["judge_cost"], net["cache_cost"]))


def test_the_verifier_records_the_time_it_scored():
    class Slow:
        threshold = 0.5
        stored = None

        def __init__(self) -> None:
            self.encoder = self

        def score(self, pairs):
            time.sleep(0.02)
            return [0.9] * len(pairs)

    record = LookupRecord.start("gpt-4o-mini", "default")
    check = LearnedCheck(Slow(), margin=0.0, judged=False, breaker=CircuitBreaker())
    assert check.refusals([Candidate("a", "b", 0.8, 1)], record) == [None]
    assert record.verifier_ms is not None and record.verifier_ms >= 20
