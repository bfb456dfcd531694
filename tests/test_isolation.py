"""A hit never crosses namespace, model, system prompt, earlier turns, parameters, tools or embedder."""

from __future__ import annotations

import pytest

from pgcache import Cache
from pgcache.embedders import OpenAIEmbedder

PROMPT = "What is a buffer overflow vulnerability?"
PARAPHRASE = "Explain buffer overflow attacks"
SYSTEM = {"role": "system", "content": "You are a security tutor."}
TOOLS = [{"type": "function", "function": {"name": "lookup_cve", "parameters": {"type": "object", "properties": {}}}}]


def conversation(prompt, system=SYSTEM, earlier=()):
    return [system, *earlier, {"role": "user", "content": prompt}]


VARIANTS = {
    "model": {"model": "gpt-4o"},
    "namespace": {"namespace": "tenant-b"},
    "system prompt": {"messages": lambda p: conversation(p, {"role": "system", "content": "You are a pirate."})},
    "earlier turns": {
        "messages": lambda p: conversation(
            p, earlier=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
        )
    },
    "temperature": {"temperature": 0.9},
    "tools": {"tools": TOOLS},
}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("prompt", [PROMPT, PARAPHRASE], ids=["same prompt", "paraphrase"])
def test_no_hit_across_scope(cache, fake, variant, prompt):
    cache.chat(conversation(PROMPT))
    assert cache.chat(conversation(PARAPHRASE)).status == "semantic", "the baseline does hit"
    change = dict(VARIANTS[variant])
    build = change.pop("messages", conversation)
    result = cache.chat(build(prompt), **change)
    assert result.status == "miss"
    assert fake.calls["chat"] == 2


def test_vectors_of_different_embedders_are_never_compared(database_url, llm, fake):
    small = Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm)
    other = Cache(database_url, embedder=OpenAIEmbedder(client=llm, model="text-embedding-ada-002"), llm=llm)
    try:
        small.query(PROMPT)
        assert small.query(PARAPHRASE).status == "semantic"
        assert other.query(PARAPHRASE.upper()).status == "miss"
        assert other.query(PROMPT).status == "exact", "the exact tier does not depend on the embedder"
    finally:
        small.close()
        other.close()
