"""lookup / store for applications that call their LLM themselves, TTLs, and bad input."""

from __future__ import annotations

import threading

import openai
import pytest

from pgcache import Cache, InvalidRequestError
from pgcache.durations import parse_ttl
from pgcache.errors import ConfigurationError

from .conftest import query


def test_store_then_lookup_exact_and_semantic(cache, fake):
    entry_id = cache.store("What is SQL injection?", "Untrusted input run as SQL.", tags=["security"])
    exact = cache.lookup("What is SQL injection?")
    assert (exact.status, exact.entry_id, exact.content) == ("exact", entry_id, "Untrusted input run as SQL.")
    semantic = cache.lookup("How does SQL injection work?")
    assert semantic.status == "semantic" and semantic.entry_id == entry_id
    assert semantic.completion().choices[0].message.content == "Untrusted input run as SQL."
    assert cache.lookup("What is the capital of France?") is None
    assert fake.calls["chat"] == 0


def test_stored_row_is_complete(cache, database_url):
    entry_id = cache.store("What is SQL injection?", "answer", tags=["a", "b"], temperature=0)
    row = query(
        database_url,
        """
        SELECT namespace, model, embedder, prompt, request, response->'choices'->0->'message'->>'content',
               tags, source, expires_at, vector_dims(embedding), length(exact_key), length(scope_key)
        FROM pgcache_entries WHERE id = %s""",
        (entry_id,),
    )[0]
    assert row[:4] == ("default", "gpt-4o-mini", "openai/text-embedding-3-small", "What is SQL injection?")
    assert row[4] == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "What is SQL injection?"}],
        "params": {"temperature": 0},
    }
    assert row[5:] == ("answer", ["a", "b"], "manual", None, 1536, 32, 32)


def test_params_are_part_of_the_key(cache):
    cache.store("Summarise SQL injection", "short", max_tokens=20)
    assert cache.lookup("Summarise SQL injection", max_tokens=20).status == "exact"
    assert cache.lookup("Summarise SQL injection") is None


def test_store_full_chat_completion_round_trips(cache):
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_1",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }
    cache.store("call the tool", completion)
    hit = cache.lookup("call the tool")
    assert hit.response == completion
    assert hit.content == ""
    assert hit.completion().choices[0].message.tool_calls[0].function.name == "lookup"


def test_storing_the_same_key_again_replaces_the_answer(cache):
    first = cache.store("What is SQL injection?", "old")
    second = cache.store("What is SQL injection?", "new")
    assert first == second
    assert cache.lookup("What is SQL injection?").content == "new"


def test_store_many_embeds_in_one_call(cache, fake, database_url):
    ids = cache.store_many([(f"question {i}", f"answer {i}") for i in range(50)], tags=["faq"])
    assert len(set(ids)) == 50
    assert fake.calls["embeddings"] == 1
    assert query(database_url, "SELECT count(*), min(source) FROM pgcache_entries")[0] == (50, "warm")
    assert cache.lookup("question 7").content == "answer 7"


def test_concurrent_stores_of_the_same_key_do_not_raise(database_url, llm):
    caches = [Cache(database_url, embedder=_StaticEmbedder(), llm=llm) for _ in range(4)]
    errors, ids = [], []
    barrier = threading.Barrier(8)

    def worker(n):
        try:
            barrier.wait()
            ids.append(caches[n % 4].store("same question", f"answer from {n}"))
        except Exception as exc:  # a thread's exception would not fail the test: collected, asserted absent below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in caches:
        c.close()
    assert errors == []
    assert len(set(ids)) == 1
    assert query(database_url, "SELECT count(*) FROM pgcache_entries")[0][0] == 1


class _StaticEmbedder:
    name = "test/static"
    dimensions = 3

    def embed(self, texts):
        return [[1.0, 0.5, 0.25] for _ in texts]


def test_expired_entries_are_never_served(cache, database_url):
    cache.store("What is a buffer overflow vulnerability?", "stale", ttl="1h")
    assert cache.lookup("What is a buffer overflow vulnerability?").content == "stale"
    query(database_url, "UPDATE pgcache_entries SET expires_at = now() - interval '1 second'")
    assert cache.lookup("What is a buffer overflow vulnerability?") is None
    assert cache.lookup("Explain buffer overflow attacks") is None


def test_ttl_sets_expiry(database_url, llm):
    with Cache(database_url, embedder=_StaticEmbedder(), llm=llm, ttl="2h") as cache:
        cache.store("a", "default ttl")
        cache.store("b", "per-call ttl", ttl=60)
        cache.store("c", "never", ttl=None)
    rows = dict(
        query(
            database_url,
            """
        SELECT prompt, round(extract(epoch FROM expires_at - created_at)) FROM pgcache_entries""",
        )
    )
    assert rows == {"a": 7200, "b": 60, "c": None}


def test_chat_miss_that_expired_is_refreshed(cache, fake, database_url):
    first = cache.query("What is SQL injection?", ttl=60)
    query(database_url, "UPDATE pgcache_entries SET expires_at = now() - interval '1 second'")
    second = cache.query("What is SQL injection?")
    assert second.status == "miss" and second.entry_id == first.entry_id
    assert fake.calls["chat"] == 2
    assert cache.query("What is SQL injection?").status == "exact"


def test_llm_errors_reach_the_caller_and_nothing_is_stored(cache, fake, database_url):
    fake.fail_chat = 500
    with pytest.raises(openai.InternalServerError):
        cache.query("What is SQL injection?")
    cache.flush()
    assert query(database_url, "SELECT count(*) FROM pgcache_entries")[0][0] == 0
    assert query(database_url, "SELECT outcome, error FROM pgcache_lookups") == [("miss", "llm: InternalServerError")]


def test_empty_prompt_uses_the_exact_tier_only(cache, fake):
    cache.store("   ", "blank")
    assert cache.lookup("   ").content == "blank"
    assert fake.calls["embeddings"] == 0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: c.store("q\x00", "a"), "NUL"),
        (lambda c: c.store("q", "a\x00"), "NUL"),
        (lambda c: c.store("q", {"choices": []}), "no choices"),
        (lambda c: c.store("q", {"choices": [{"text": "x"}]}), r"choices\[0\] has no message"),
        (lambda c: c.store("q", 42), "response must be"),
        (lambda c: c.store("q", "a", tags="one"), "not a single string"),
        (lambda c: c.store("q", "a", tags=[""]), "tag"),
        (lambda c: c.store("q\ud800", "a"), "lone surrogate"),
        (lambda c: c.store("q", "a", source="robot"), "source"),
        (lambda c: c.store("q", "a", ttl="soon"), "ttl"),
        (lambda c: c.chat("q", stream=True), "stream"),
        (lambda c: c.lookup("q", threshold=1.5), "threshold"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_stored(cache, database_url, call, message):
    with pytest.raises((InvalidRequestError, ConfigurationError), match=message):
        call(cache)
    assert query(database_url, "SELECT count(*) FROM pgcache_entries")[0][0] == 0


def test_parse_ttl():
    assert parse_ttl("30m") == 1800
    assert parse_ttl("12h") == 43200
    assert parse_ttl("7d") == 604800
    assert parse_ttl("never") is None
    assert parse_ttl(90) == 90
    for bad in ("-1", "soon", 0, -5, float("nan"), True):
        with pytest.raises(ConfigurationError):
            parse_ttl(bad)


def test_ledger_and_hit_counts_are_written_in_the_background(cache, database_url):
    cache.store("q", "a")
    for _ in range(20):
        assert cache.lookup("q").status == "exact"
    cache.flush()
    assert query(database_url, "SELECT count(*) FROM pgcache_lookups WHERE outcome = 'exact'")[0][0] == 20
    assert query(database_url, "SELECT hit_count FROM pgcache_entries")[0][0] == 20


def test_close_writes_queued_ledger_rows(database_url, llm):
    cache = Cache(database_url, embedder=_StaticEmbedder(), llm=llm)
    cache.store("q", "a")
    for _ in range(5):
        cache.lookup("q")
    cache.close()
    assert query(database_url, "SELECT count(*) FROM pgcache_lookups")[0][0] == 5
