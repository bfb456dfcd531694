"""The tutorial's walkthrough, end to end through the real openai SDK."""

from __future__ import annotations

import pytest

from .conftest import query


def test_tutorial_walkthrough(cache, fake, database_url):
    first = cache.query("What is a buffer overflow vulnerability?")
    assert first.status == "miss"
    assert first.content == "answer #1 to: What is a buffer overflow vulnerability?"
    assert first.entry_id is not None and first.similarity is None
    assert fake.calls == {"chat": 1, "embeddings": 1}

    paraphrase = cache.query("Explain buffer overflow attacks")
    assert paraphrase.status == "semantic"
    assert paraphrase.content == first.content
    assert paraphrase.entry_id == first.entry_id
    assert 0.92 <= paraphrase.similarity < 1.0
    assert fake.calls == {"chat": 1, "embeddings": 2}

    again = cache.query("What is a buffer overflow vulnerability?")
    assert again.status == "exact"
    assert again.content == first.content and again.similarity is None
    assert fake.calls == {"chat": 1, "embeddings": 2}, "an exact hit makes no embedding call"

    sql = cache.query("How does SQL injection work?")
    assert sql.status == "miss"
    assert sql.content == "answer #2 to: How does SQL injection work?"
    assert fake.calls["chat"] == 2

    sql_again = cache.query("What is SQL injection?")
    assert sql_again.status == "semantic"
    assert sql_again.content == sql.content
    assert fake.calls["chat"] == 2

    cache.flush()
    outcomes = query(database_url, "SELECT outcome, count(*) FROM pgcache_lookups GROUP BY outcome ORDER BY 1")
    assert outcomes == [("exact", 1), ("miss", 2), ("semantic", 2)]
    hits = query(database_url, "SELECT id, hit_count FROM pgcache_entries ORDER BY id")
    assert hits == [(first.entry_id, 2), (sql.entry_id, 1)]


def test_semantic_hit_reports_similarity_and_threshold(cache, fake, database_url):
    cache.query("What is a buffer overflow vulnerability?")
    hit = cache.query("buffer overflow, explained")
    assert hit.status == "semantic"
    cache.flush()
    rows = query(database_url, "SELECT similarity, threshold FROM pgcache_lookups WHERE id = %s", (hit.lookup_id,))
    assert rows[0][0] == pytest.approx(hit.similarity)
    assert rows[0][1] == pytest.approx(0.92)


def test_unrelated_prompt_misses_and_records_best_candidate(cache, fake, database_url):
    cache.query("What is a buffer overflow vulnerability?")
    other = cache.query("What is the capital of France?")
    assert other.status == "miss"
    assert fake.calls["chat"] == 2
    cache.flush()
    similarity = query(database_url, "SELECT similarity FROM pgcache_lookups WHERE id = %s", (other.lookup_id,))[0][0]
    assert similarity is not None and similarity < 0.5


def test_threshold_is_respected(cache, fake):
    cache.query("What is a buffer overflow vulnerability?")
    strict = cache.query("Explain buffer overflow attacks", threshold=0.99)
    assert strict.status == "miss"
