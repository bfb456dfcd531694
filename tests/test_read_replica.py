"""read_database_url: lookups read from a second pool, every write stays on the primary, and a failing
read database falls back to the primary."""

from __future__ import annotations

import logging
import uuid
from urllib.parse import quote

import pytest

from pgcache import Cache, Settings
from pgcache.breaker import OPEN
from pgcache.embedders import OpenAIEmbedder

from .conftest import migrated_database, query

QUESTION = "What is a buffer overflow vulnerability?"
PARAPHRASE = "Explain buffer overflow attacks"
EMBEDDER = "openai/text-embedding-3-small"


@pytest.fixture
def replica_url(server_url, template_url):
    """A second migrated database standing in for a replica whose contents differ from the primary's."""
    with migrated_database(server_url, "pgcache_replica") as url:
        yield url


def read_only(url: str, application_name: str) -> str:
    """The same database through sessions that refuse every write."""
    options = quote("-c default_transaction_read_only=on")
    return f"{url}{'&' if '?' in url else '?'}options={options}&application_name={application_name}"


def test_settings_and_from_env():
    settings = Settings.from_env({"PGCACHE_READ_DATABASE_URL": "postgres://reader:s3cret@replica/app"})
    assert settings.read_database_url == "postgres://reader:s3cret@replica/app"
    assert "s3cret" not in repr(settings)
    cache = Cache.from_env(
        {"PGCACHE_DATABASE_URL": "postgres://u@h/d", "PGCACHE_READ_DATABASE_URL": "postgres://reader@replica/app"}
    )
    assert cache.read_database_url == "postgresql://reader@replica/app"
    assert Cache.from_env({"PGCACHE_DATABASE_URL": "postgres://u@h/d"}).read_database_url is None


def test_lookups_read_the_read_database_and_writes_go_to_the_primary(database_url, replica_url, llm, fake):
    with Cache(replica_url, embedder=OpenAIEmbedder(client=llm), llm=llm) as on_replica:
        replica_entry = on_replica.store(QUESTION, "answer from the replica")
    query(
        replica_url,
        "INSERT INTO pgcache_thresholds (namespace, embedder, threshold, target_precision, "
        "precision_lower, pairs, source) VALUES ('default', %s, 0.9, 0.98, 0.98, 100, 'replica.csv')",
        (EMBEDDER,),
    )
    with Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm, read_database_url=replica_url) as cache:
        exact = cache.lookup(QUESTION)
        assert (exact.status, exact.content, exact.entry_id) == ("exact", "answer from the replica", replica_entry)
        semantic = cache.lookup(PARAPHRASE)
        assert semantic.status == "semantic" and semantic.entry_id == replica_entry
        assert "replica.csv" in cache.threshold_in_force()[1], "thresholds are read there too"
        miss = cache.query("What is SQL injection?")
        assert miss.status == "miss"
        cache.flush()
        assert cache.read_breaker.failures == 0 and cache.breaker.failures == 0
    assert query(database_url, "SELECT prompt FROM pgcache_entries") == [("What is SQL injection?",)]
    assert query(replica_url, "SELECT prompt FROM pgcache_entries") == [(QUESTION,)]
    assert query(database_url, "SELECT outcome FROM pgcache_lookups ORDER BY at") == [
        ("exact",),
        ("semantic",),
        ("miss",),
    ]
    assert query(replica_url, "SELECT count(*) FROM pgcache_lookups") == [(0,)]


def test_read_only_sessions_serve_every_lookup_while_everything_else_writes(database_url, llm, fake):
    name = f"pgcache-test-read-{uuid.uuid4().hex[:8]}"
    with Cache(
        database_url, embedder=OpenAIEmbedder(client=llm), llm=llm, read_database_url=read_only(database_url, name)
    ) as cache:
        assert cache.query(QUESTION).status == "miss"
        assert cache.query(QUESTION).status == "exact"
        semantic = cache.query(PARAPHRASE)
        assert semantic.status == "semantic"
        cache.store("What is SQL injection?", "stored by hand")
        assert cache.lookup("What is SQL injection?").content == "stored by hand"
        assert cache.feedback("wrong", semantic.lookup_id) > semantic.similarity
        assert cache.query(PARAPHRASE).status == "miss", "the tightened entry, read through the read pool"
        assert cache.sweep().skipped is False
        cache.flush()
        sessions = query(database_url, "SELECT query FROM pg_stat_activity WHERE application_name = %s", (name,))
        assert sessions, "the read pool is connected"
        last = [" ".join(q.split()) for (q,) in sessions]
        assert all(q.startswith("SELECT") for q in last), last
        assert any("pgcache_nearest" in q or "FROM pgcache_entries" in q for q in last), last
        assert cache.read_breaker.failures == 0 and cache.breaker.failures == 0, "no write reached the read pool"
    assert query(database_url, "SELECT count(*) FROM pgcache_lookups") == [(5,)]
    assert query(database_url, "SELECT count(*) FROM pgcache_feedback") == [(1,)]


def test_a_failing_read_database_falls_back_to_the_primary(database_url, llm, fake, caplog):
    with Cache(
        database_url,
        embedder=OpenAIEmbedder(client=llm),
        llm=llm,
        connect_timeout=0.5,
        read_database_url="postgresql://reader@127.0.0.1:1/replica",
    ) as cache:
        cache.store(QUESTION, "answer")
        with caplog.at_level(logging.WARNING, logger="pgcache"):
            results = [cache.lookup(QUESTION), cache.lookup(PARAPHRASE), cache.lookup(QUESTION)]
        assert [r.status for r in results] == ["exact", "semantic", "exact"]
        assert cache.read_breaker.failures >= 1 and cache.read_breaker.state == OPEN
        assert cache.breaker.failures == 0, "the primary is fine: the cache stays on"
    warnings = [r.getMessage() for r in caplog.records if "read database unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "lookups read the primary" in warnings[0], "logged once, not once per lookup"
