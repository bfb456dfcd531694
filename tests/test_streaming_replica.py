"""A real hot standby as ``read_database_url``: streaming replication from the primary, with its lag,
its outages and its promotion.

Each test has its own primary (an embedded server) and a standby made from it with
``pg_basebackup -R`` (tests/standby.py), so that stopping or promoting one touches nothing else.
"""

from __future__ import annotations

import logging
import threading

import psycopg
import pytest

from pgcache import Cache, db
from pgcache.embedders import OpenAIEmbedder

from .standby import Primary, Standby

pytestmark = pytest.mark.slow

# One question on a topic of the fake embedder, so that its paraphrase is a semantic hit; the rest unrelated.
QUESTIONS = ["What is a buffer overflow?"] + [f"Tell me fact number {i}" for i in range(1, 20)]
PARAPHRASE = "Explain buffer overflow attacks"


@pytest.fixture
def pair(tmp_path):
    primary = Primary(tmp_path / "primary")
    standby = None
    try:
        db.upgrade(primary.url)
        standby = primary.standby(tmp_path / "standby")
        yield primary, standby
    finally:
        if standby is not None:
            standby.remove()
        primary.stop()


def cache_for(primary: Primary, standby: Standby, llm) -> Cache:
    return Cache(primary.url, read_database_url=standby.url, embedder=OpenAIEmbedder(client=llm), llm=llm)


def readers_on(url: str) -> int:
    """Sessions of pgcache's read pool connected to the server at ``url``."""
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgcache-read'").fetchone()[
            0
        ]


def test_lookups_are_served_by_the_standby(pair, llm, fake):
    primary, standby = pair
    assert standby.in_recovery()
    with cache_for(primary, standby, llm) as cache:
        for question in QUESTIONS:
            assert cache.query(question).status == "miss"
        standby.caught_up()
        assert [cache.query(question).status for question in QUESTIONS] == ["exact"] * len(QUESTIONS)
        assert cache.query(PARAPHRASE).status == "semantic"
        assert fake.calls["chat"] == len(QUESTIONS)
        assert readers_on(standby.url) >= 1 and readers_on(primary.url) == 0
        # With the primary gone, hits still come from the standby (the ledger waits, fail-open).
        primary.stop()
        assert cache.lookup(QUESTIONS[0]).status == "exact"
        assert cache.lookup(PARAPHRASE).status == "semantic"


def test_a_store_is_served_once_the_standby_replays_it(pair, llm, fake):
    primary, standby = pair
    with cache_for(primary, standby, llm) as cache, psycopg.connect(standby.url, autocommit=True) as control:
        # Replay paused: the standby is behind the primary by every write from now on.
        control.execute("SELECT pg_wal_replay_pause()")
        cache.store(QUESTIONS[0], "stored while the standby lags")
        assert cache.lookup(QUESTIONS[0]) is None, "not on the standby yet: a miss, not an error"
        control.execute("SELECT pg_wal_replay_resume()")
        waited = standby.caught_up()
        hit = cache.lookup(QUESTIONS[0])
        assert hit is not None and hit.status == "exact" and hit.content == "stored while the standby lags"
        assert waited < 10
        # Store then look up at once, over and over: never an error, each served once replayed.
        outcomes = []
        for question in QUESTIONS[1:]:
            cache.store(question, f"answer to {question}")
            outcomes.append(cache.lookup(question))
        standby.caught_up()
        # A lookup racing the replay may miss, or find the row between its exact and semantic steps
        # (a semantic hit on the entry itself): never another entry's answer.
        for question, outcome in zip(QUESTIONS[1:], outcomes, strict=True):
            assert outcome is None or outcome.content == f"answer to {question}", (question, outcome)
        assert all(cache.lookup(question).status == "exact" for question in QUESTIONS[1:])
        assert fake.calls["chat"] == 0


def test_a_standby_stopped_mid_load_sends_lookups_to_the_primary(pair, llm, fake, caplog):
    primary, standby = pair
    with cache_for(primary, standby, llm) as cache:
        cache.store_many([(question, f"answer to {question}") for question in QUESTIONS])
        standby.caught_up()
        statuses: list[str | None] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def reader(offset: int) -> None:
            i = offset
            while not stop.is_set():
                try:
                    result = cache.lookup(QUESTIONS[i % len(QUESTIONS)])
                    statuses.append(None if result is None else result.status)
                except BaseException as exc:  # any exception reaching the caller is a failure
                    errors.append(exc)
                i += 1

        with caplog.at_level(logging.WARNING, logger="pgcache"):
            threads = [threading.Thread(target=reader, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            while len(statuses) < 200:
                stop.wait(0.01)
            before = len(statuses)
            standby.stop()
            after_stop = len(statuses)
            while len(statuses) < after_stop + 200:
                stop.wait(0.01)
            stop.set()
            for thread in threads:
                thread.join()
        assert errors == []
        assert before >= 200 and len(statuses) >= after_stop + 200
        assert set(statuses) == {"exact"}, "every lookup a hit, from the standby and then from the primary"
        assert any("read database" in r.getMessage() and "unavailable" in r.getMessage() for r in caplog.records)
        assert fake.calls["chat"] == 0


def test_after_failover_the_promoted_standby_keeps_answering(pair, llm, fake):
    primary, standby = pair
    with cache_for(primary, standby, llm) as cache:
        cache.store_many([(question, f"answer to {question}") for question in QUESTIONS])
        standby.caught_up()
        primary.stop()
        standby.promote()
        assert not standby.in_recovery()
        # The application still names the old primary: hits come from the promoted server, and a
        # miss is answered by the LLM (its store skipped, fail-open) without an error.
        assert cache.lookup(QUESTIONS[5]).status == "exact"
        assert cache.query(PARAPHRASE).status == "semantic"
        new = cache.query("A question first asked after the failover")
        assert new.status == "miss" and fake.calls["chat"] == 1
    # Pointed at the promoted server, the cache stores again: the schema came with the data.
    assert db.current_revision(standby.url) == db.head_revision()
    with Cache(standby.url, embedder=OpenAIEmbedder(client=llm), llm=llm) as cache:
        assert cache.query("A question first asked after the failover").status == "miss"
        assert cache.query("A question first asked after the failover").status == "exact"
        assert cache.lookup(QUESTIONS[0]).status == "exact"
