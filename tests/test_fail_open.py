"""Fail-open: the cache never takes the application down, and recovers by itself."""

from __future__ import annotations

import logging
import time

import pytest

from pgcache import Cache, DatabaseError, embedded
from pgcache.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from pgcache.embedders import OpenAIEmbedder

from .conftest import query


def test_database_stopped_mid_run_then_restarted(tmp_path, llm, fake, caplog):
    data_dir = tmp_path / "pg"
    cache = Cache(data_dir=data_dir, embedder=OpenAIEmbedder(client=llm), llm=llm)
    try:
        assert cache.query("What is SQL injection?").status == "miss"
        assert cache.query("What is SQL injection?").status == "exact"
        embedded.stop(data_dir)
        with caplog.at_level(logging.WARNING, logger="pgcache"):
            answers = [cache.query(f"question {i} while the database is down") for i in range(10)]
            again = cache.query("What is SQL injection?")
        assert [a.status for a in answers] == ["miss"] * 10
        assert all(a.content.startswith("answer #") for a in answers) and again.content.startswith("answer #")
        assert fake.calls["chat"] == 12
        unavailable = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(unavailable) == 1, "logged once per state change, not once per call"
        assert cache.breaker.state in (OPEN, HALF_OPEN) and cache.breaker.failures >= 1

        embedded.start(data_dir)
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline and status != "exact":
            status = cache.query("What is SQL injection?").status
            time.sleep(0.2)
        assert status == "exact", "caching resumes in the same process once the database is back"
        assert cache.breaker.state == CLOSED
        assert cache.query("question 0 while the database is down").status == "miss", "nothing was stored while down"
        assert cache.query("question 0 while the database is down").status == "exact"
    finally:
        cache.close()
        embedded.stop(data_dir)


def test_unreachable_database_costs_little_and_lookups_miss(llm, fake):
    cache = Cache("postgresql://pgcache@127.0.0.1:1/none", embedder=OpenAIEmbedder(client=llm), llm=llm)
    assert cache.query("What is SQL injection?").content == "answer #1 to: What is SQL injection?"
    assert cache.lookup("What is SQL injection?") is None
    assert cache.breaker.skipped >= 1, "the second call skipped the dead database without trying it"
    with pytest.raises(DatabaseError):
        Cache("postgresql://pgcache@127.0.0.1:1/none", llm=llm, fail_open=False).lookup("q")


class Broken:
    name, dimensions = "test/broken", 3

    def embed(self, texts):
        raise RuntimeError("model server down")


def test_failing_embedder_falls_back_to_the_exact_tier(database_url, llm, fake):
    with Cache(database_url, embedder=Broken(), llm=llm) as cache:
        first = cache.query("What is SQL injection?")
        assert first.status == "miss" and first.entry_id is not None
        assert cache.query("What is SQL injection?").status == "exact"
        assert cache.query("Explain SQL injection").status == "miss"
    rows = query(database_url, "SELECT embedding IS NULL, embedder FROM pgcache_entries ORDER BY id")
    assert rows == [(True, None), (True, None)]


def test_breaker_opens_probes_and_closes():
    now = [0.0]
    breaker = CircuitBreaker(cooldown=2.0, max_cooldown=8.0, clock=lambda: now[0])
    assert breaker.allow()
    breaker.failure(OSError("down"))
    assert breaker.state == OPEN and not breaker.allow() and breaker.skipped == 1
    now[0] = 2.0
    assert breaker.allow() and breaker.state == HALF_OPEN
    assert not breaker.allow(), "one probe at a time"
    breaker.failure(OSError("still down"))
    assert breaker.cooldown == 4.0
    now[0] = 5.0
    assert not breaker.allow()
    now[0] = 6.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED and breaker.cooldown == 2.0 and breaker.allow()


def test_temperature_policy_and_per_call_options(database_url, llm, fake):
    with Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm, bypass_nonzero_temperature=True) as cache:
        assert cache.query("What is SQL injection?", temperature=0.7).status == "bypass"
        assert cache.query("What is SQL injection?", temperature=0.7).status == "bypass"
        assert fake.calls["chat"] == 2
        assert cache.query("What is SQL injection?", temperature=0).status == "miss"
        assert cache.query("What is SQL injection?", temperature=0).status == "exact"
        assert cache.query("What is SQL injection?", temperature=0, bypass=True).status == "bypass"
        assert cache.query("Never keep this", no_store=True).status == "miss"
        assert cache.query("Never keep this").status == "miss"
        cache.flush()
    assert query(database_url, "SELECT count(*) FROM pgcache_lookups WHERE outcome = 'bypass'")[0][0] == 3
    assert (
        query(database_url, "SELECT count(*) FROM pgcache_entries WHERE prompt = 'What is SQL injection?'")[0][0] == 1
    )
