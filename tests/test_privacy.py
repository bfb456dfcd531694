"""store_prompts=False: no prompt text in entries or the ledger, both tiers still serve, and what it costs."""

from __future__ import annotations

import hashlib
import json

import pytest

from pgcache import Cache, ConfigurationError, InvalidRequestError, Settings
from pgcache.embedders import OpenAIEmbedder
from pgcache.judge import LLMJudge

from .conftest import query

QUESTION = "What is a buffer overflow vulnerability?"
PARAPHRASE = "Explain buffer overflow attacks"
SYSTEM = "You are a security tutor for ACME Corp."
TOOLS = [{"type": "function", "function": {"name": "lookup_cve", "parameters": {"type": "object", "properties": {}}}}]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def private(database_url, llm, **options) -> Cache:
    return Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm, store_prompts=False, **options)


def test_the_setting_and_its_variable():
    assert Settings().store_prompts is True
    assert Settings.from_env({"PGCACHE_STORE_PROMPTS": "0"}).store_prompts is False
    cache = Cache.from_env({"PGCACHE_STORE_PROMPTS": "false", "PGCACHE_DATABASE_URL": "postgres://u@h/d"})
    assert cache.settings.store_prompts is False
    assert Cache.from_env({"PGCACHE_DATABASE_URL": "postgres://u@h/d"}).settings.store_prompts is True
    with pytest.raises(ConfigurationError, match="PGCACHE_STORE_PROMPTS"):
        Settings.from_env({"PGCACHE_STORE_PROMPTS": "sometimes"})


def test_no_prompt_text_is_stored_yet_both_tiers_serve(database_url, llm, fake):
    earlier = [
        {"role": "user", "content": "Look up CVE-2024-3094 for me"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup_cve", "arguments": '{"id": "CVE-2024-3094"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "xz backdoor"},
    ]

    def conversation(question):
        return [{"role": "system", "content": SYSTEM}, *earlier, {"role": "user", "content": question}]

    with private(database_url, llm, guard=False) as cache:
        miss = cache.chat(conversation(QUESTION), temperature=0, tools=TOOLS, tool_choice="none")
        assert miss.status == "miss"
        assert cache.chat(conversation(QUESTION), temperature=0, tools=TOOLS, tool_choice="none").status == "exact"
        semantic = cache.chat(conversation(PARAPHRASE), temperature=0, tools=TOOLS, tool_choice="none")
        assert semantic.status == "semantic" and semantic.entry_id == miss.entry_id
        cache.store(QUESTION, "Memory written past a buffer's end.", namespace="kb")
        assert cache.lookup(PARAPHRASE, namespace="kb").status == "semantic"
    prompt, request, has_vector = query(
        database_url,
        "SELECT prompt, request, embedding IS NOT NULL FROM pgcache_entries WHERE id = %s",
        (miss.entry_id,),
    )[0]
    assert prompt is None and has_vector, "the text is gone, its embedding stays (the semantic tier needs it)"
    assert request["model"] == "gpt-4o-mini"
    assert request["params"] == {"temperature": 0, "tools": TOOLS, "tool_choice": "none"}
    system, ask, call, result, final = request["messages"]
    assert system == {"role": "system", "content": sha256(SYSTEM)}
    assert ask == {"role": "user", "content": sha256("Look up CVE-2024-3094 for me")}
    assert call["role"] == "assistant" and call["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "lookup_cve", "arguments": sha256('{"id": "CVE-2024-3094"}')},
        }
    ]
    assert result == {"role": "tool", "tool_call_id": "call_1", "content": sha256("xz backdoor")}
    assert final == {"role": "user", "content": sha256(QUESTION)}
    stored = " ".join(json.dumps(row[0]) for row in query(database_url, "SELECT request FROM pgcache_entries"))
    for secret in (QUESTION, SYSTEM, "CVE-2024-3094", "xz backdoor"):
        assert secret not in stored
    assert query(database_url, "SELECT count(*) FROM pgcache_entries WHERE prompt IS NOT NULL") == [(0,)]
    assert query(database_url, "SELECT count(*), count(prompt) FROM pgcache_lookups") == [(4, 0)]


def test_unverifiable_candidates_are_served_only_when_sure(database_url, llm, fake):
    with private(database_url, llm) as stored:
        stored.store(QUESTION, "answer")
    with private(database_url, llm) as guarded:
        assert guarded.lookup(PARAPHRASE) is None, "the guard is on and has nothing to compare with"
    with private(database_url, llm, sure_threshold=0.95) as sure:
        hit = sure.lookup(PARAPHRASE)
        assert hit.status == "semantic" and hit.similarity >= 0.95
    with private(database_url, llm, guard=False, judge=LLMJudge(llm)) as judged:
        assert judged.lookup(PARAPHRASE) is None, "a judge cannot judge a question it cannot read"
    assert fake.judge_calls == 0
    assert query(database_url, "SELECT count(*) FROM pgcache_judgements") == [(0,)]
    with private(database_url, llm, guard=False) as unguarded:
        assert unguarded.lookup(PARAPHRASE).status == "semantic", "nothing asked to verify: served as before"
    rows = query(database_url, "SELECT outcome, rejected_by FROM pgcache_lookups ORDER BY at")
    assert rows == [
        ("miss", "unverifiable: no stored prompt"),
        ("semantic", None),
        ("miss", "unverifiable: no stored prompt"),
        ("semantic", None),
    ]


def test_entries_stored_with_prompts_are_still_verified(database_url, llm, fake):
    fake.topics = ["convert"]
    with Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm) as open_cache:
        open_cache.store("How do I convert a string to an integer?", "int(s)")
        open_cache.store("What is a buffer overflow?", "answer")
    with private(database_url, llm) as cache:
        assert cache.lookup("How do I convert an integer to a string?") is None
        assert cache.lookup("Please convert a string to an integer").status == "semantic"
    rows = query(database_url, "SELECT outcome, rejected_by, prompt FROM pgcache_lookups ORDER BY at")
    assert rows == [("miss", "guard: argument order", None), ("semantic", None, None)], (
        "the guard read the entry's text; the asking side kept its own out of the ledger"
    )


def test_the_costs_invalidation_reports_and_feedback(database_url, llm, fake):
    with private(database_url, llm, guard=False) as cache:
        cache.store(QUESTION, "answer")
        hit = cache.lookup(PARAPHRASE)
        assert hit.status == "semantic"
        assert cache.invalidate(prompt=QUESTION) == 0, "no text to match"
        assert cache.lookup(PARAPHRASE, threshold=0.99) is None  # a near miss
        cache.flush()
        report = cache.report()
        assert [e["prompt"] for e in report["top_entries"]] == [None]
        assert [(n["prompt"], n["candidate_prompt"]) for n in report["near_misses"]] == [(None, None)]
        assert cache.feedback("wrong", hit.lookup_id) > hit.similarity, "the entry's own threshold still rises"
        assert cache.lookup(PARAPHRASE) is None
        assert query(database_url, "SELECT prompt, entry_prompt FROM pgcache_feedback") == [(None, None)]
        with pytest.raises(InvalidRequestError, match="no labelled pairs"):
            cache.calibrate([], with_feedback=True)
        assert cache.invalidate(similar_to=PARAPHRASE, min_similarity=0.9, yes=True) == 1, "by meaning still works"
