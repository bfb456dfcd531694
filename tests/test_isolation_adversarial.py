"""Requests built to collide share no hit, on either tier, unless their scope is truly the same.

Each case stores an answer for request A, proves that a paraphrase of A's
question hits it semantically (so the fake embedder would match the texts),
and then asks request B, which differs from A in one detail of its scope, with
the same question and with the paraphrase: both must miss, without even a
candidate in scope. B's own answer is then stored beside A's, never over it.
"""

from __future__ import annotations

import json
import unicodedata
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import openai
import pytest

import pgcache
from pgcache import Cache
from pgcache.embedders import OpenAIEmbedder
from pgcache.keys import canonical_json

from .conftest import TEMPLATE, TEST_API_KEY, create_database, drop_database, query

QUESTION = "What is a buffer overflow vulnerability?"
PARAPHRASE = "Explain buffer overflow attacks"
SYSTEM = "You are a security tutor."


@dataclass(frozen=True)
class Request:
    """Everything but the final question: the scope of a request."""

    namespace: str = "acme"
    model: str = "gpt-4o-mini"
    system: Any = SYSTEM
    system_role: str = "system"
    earlier: tuple = ()
    final: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def messages(self, question: str) -> list[dict[str, Any]]:
        head = [] if self.system is None else [{"role": self.system_role, "content": self.system}]
        return [*head, *self.earlier, {"role": "user", "content": question, **self.final}]

    def lookup(self, cache: Cache, question: str):
        return cache.lookup(self.messages(question), self.model, namespace=self.namespace, **self.params)

    def store(self, cache: Cache, answer: str) -> int:
        return cache.store(
            self.messages(question=QUESTION), answer, self.model, namespace=self.namespace, **self.params
        )


BASE = Request()


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def nfd(text):
    return unicodedata.normalize("NFD", text)


TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_cve",
        "description": "Find a CVE by id",
        "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
    },
}


def tool(**function):
    return [{"type": "function", "function": {**TOOL["function"], **function}}]


def schema(name):
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": {"type": "object", "properties": {name: {"type": "string"}}, "required": [name]},
        },
    }


# (A, B): two requests whose scopes differ in one detail chosen to look the same.
CASES = {
    # Namespaces that print alike.
    "namespace trailing space": (replace(BASE, namespace="a"), replace(BASE, namespace="a ")),
    "namespace case": (replace(BASE, namespace="a"), replace(BASE, namespace="A")),
    "namespace cyrillic a": (replace(BASE, namespace="a"), replace(BASE, namespace="\u0430")),
    "namespace zero-width space": (replace(BASE, namespace="acme"), replace(BASE, namespace="ac\u200bme")),
    "namespace NFC vs NFD": (replace(BASE, namespace="caf\u00e9"), replace(BASE, namespace=nfd("caf\u00e9"))),
    # Fields whose concatenation (or naive JSON splicing) would be equal.
    "namespace/model boundary": (
        replace(BASE, namespace="acme-gpt", model="4o"),
        replace(BASE, namespace="acme", model="gpt-4o"),
    ),
    "namespace holding JSON": (
        replace(BASE, namespace="acme", model="gpt-4o-mini"),
        replace(BASE, namespace='acme","model":"gpt-4o-mini', model="gpt-4o-mini"),
    ),
    # Models one character apart.
    "model one character": (BASE, replace(BASE, model="gpt-4o-minj")),
    "model case": (BASE, replace(BASE, model="GPT-4o-mini")),
    "model trailing space": (BASE, replace(BASE, model="gpt-4o-mini ")),
    "model unicode hyphen": (BASE, replace(BASE, model="gpt\u20104o\u2010mini")),
    # System prompts that differ by whitespace, one token, normalisation or role.
    "system trailing space": (BASE, replace(BASE, system=SYSTEM + " ")),
    "system double space": (BASE, replace(BASE, system=SYSTEM.replace(" ", "  ", 1))),
    "system one token": (BASE, replace(BASE, system=SYSTEM.replace("tutor", "tutors"))),
    "system case": (BASE, replace(BASE, system=SYSTEM.lower())),
    "system NFC vs NFD": (
        replace(BASE, system="R\u00e9ponds en fran\u00e7ais."),
        replace(BASE, system=nfd("R\u00e9ponds en fran\u00e7ais.")),
    ),
    "system homoglyph": (BASE, replace(BASE, system=SYSTEM.replace("a ", "\u0430 ", 1))),
    "system vs developer role": (BASE, replace(BASE, system_role="developer")),
    "no system vs empty system": (replace(BASE, system=None), replace(BASE, system="")),
    "system as parts": (BASE, replace(BASE, system=[{"type": "text", "text": SYSTEM}])),
    # The same words split differently across earlier turns.
    "turns merged": (
        replace(BASE, earlier=(user("I write C."), assistant("Noted."))),
        replace(BASE, earlier=(user("I write C.\nNoted."),)),
    ),
    "turn boundary shifted": (
        replace(BASE, earlier=(user("I write C"), assistant(". Noted."))),
        replace(BASE, earlier=(user("I write C."), assistant(" Noted."))),
    ),
    "turn roles swapped": (
        replace(BASE, earlier=(user("I write C."), assistant("Noted."))),
        replace(BASE, earlier=(assistant("I write C."), user("Noted."))),
    ),
    "earlier turn vs none": (replace(BASE, earlier=(user("I write C."),)), BASE),
    "conversation as JSON text": (
        replace(BASE, earlier=(user("I write C."), assistant("Noted."))),
        replace(BASE, earlier=(user(canonical_json([user("I write C."), assistant("Noted.")])),)),
    ),
    "system message as JSON text": (BASE, replace(BASE, system=json.dumps({"role": "system", "content": SYSTEM}))),
    # Who asks: the final message's participant name.
    "final message name": (replace(BASE, final={"name": "alice"}), replace(BASE, final={"name": "bob"})),
    "final message name vs none": (BASE, replace(BASE, final={"name": "alice"})),
    # Parameters, each by the smallest step.
    "temperature 0 vs 0.001": (replace(BASE, params={"temperature": 0}), replace(BASE, params={"temperature": 0.001})),
    "temperature unset vs 0": (BASE, replace(BASE, params={"temperature": 0})),
    "top_p": (replace(BASE, params={"top_p": 1}), replace(BASE, params={"top_p": 0.999})),
    "max_tokens": (replace(BASE, params={"max_tokens": 100}), replace(BASE, params={"max_tokens": 101})),
    "max_tokens vs max_completion_tokens": (
        replace(BASE, params={"max_tokens": 100}),
        replace(BASE, params={"max_completion_tokens": 100}),
    ),
    "seed": (replace(BASE, params={"seed": 1}), replace(BASE, params={"seed": 2})),
    "seed unset vs 0": (BASE, replace(BASE, params={"seed": 0})),
    "stop order": (replace(BASE, params={"stop": ["a", "b"]}), replace(BASE, params={"stop": ["b", "a"]})),
    "stop string vs list": (replace(BASE, params={"stop": "\n"}), replace(BASE, params={"stop": ["\n"]})),
    "n": (replace(BASE, params={"n": 1}), replace(BASE, params={"n": 2})),
    "presence_penalty": (BASE, replace(BASE, params={"presence_penalty": 0.1})),
    "logit_bias": (
        replace(BASE, params={"logit_bias": {"1234": 1}}),
        replace(BASE, params={"logit_bias": {"1234": 2}}),
    ),
    "response_format text vs unset": (BASE, replace(BASE, params={"response_format": {"type": "text"}})),
    "response_format json_object": (BASE, replace(BASE, params={"response_format": {"type": "json_object"}})),
    "json_schema one field": (
        replace(BASE, params={"response_format": schema("answer")}),
        replace(BASE, params={"response_format": schema("answers")}),
    ),
    "tool name homoglyph": (
        replace(BASE, params={"tools": tool()}),
        replace(BASE, params={"tools": tool(name="lookup_cv\u0435")}),
    ),
    "tool description whitespace": (
        replace(BASE, params={"tools": tool()}),
        replace(BASE, params={"tools": tool(description="Find a CVE by id ")}),
    ),
    "tool_choice": (
        replace(BASE, params={"tools": tool(), "tool_choice": "auto"}),
        replace(BASE, params={"tools": tool(), "tool_choice": "required"}),
    ),
    "extra_body": (BASE, replace(BASE, params={"extra_body": {"reasoning": {"effort": "low"}}})),
}


@pytest.fixture(scope="module")
def shared_url(server_url, template_url):
    """One database for the many cases below; each case starts from empty tables."""
    name = f"pgcache_adversarial_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name, TEMPLATE)
    yield url
    drop_database(server_url, name)


@pytest.fixture(scope="module")
def module_llm(fake_server):
    return openai.OpenAI(base_url=fake_server.base_url, api_key=TEST_API_KEY, max_retries=0)


class Remembering:
    """The fake server's embeddings, each text fetched once: the cases ask the same two questions."""

    def __init__(self, inner):
        self.inner, self.name, self.dimensions = inner, inner.name, inner.dimensions
        self.vectors = {}

    def embed(self, texts):
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            self.vectors.update(zip(missing, self.inner.embed(missing), strict=True))
        return [self.vectors[t] for t in texts]


@pytest.fixture(scope="module")
def shared_cache(shared_url, module_llm):
    embedder = Remembering(OpenAIEmbedder(client=module_llm))
    with Cache(shared_url, embedder=embedder, llm=module_llm) as cache:
        yield cache


@pytest.fixture
def empty_cache(shared_cache, shared_url, fake):
    shared_cache.flush()
    query(shared_url, "TRUNCATE pgcache_entries, pgcache_lookups, pgcache_inflight RESTART IDENTITY")
    return shared_cache


@pytest.mark.parametrize("case", CASES)
def test_lookalike_scopes_share_no_hit(empty_cache, shared_url, case):
    cache = empty_cache
    a, b = CASES[case]
    first = a.store(cache, "answer for A")
    control = a.lookup(cache, PARAPHRASE)
    assert control is not None and control.status == "semantic", "a paraphrase in A's own scope hits"
    assert control.entry_id == first

    assert b.lookup(cache, QUESTION) is None
    assert b.lookup(cache, PARAPHRASE) is None

    second = b.store(cache, "answer for B")
    assert second != first, "B's answer is stored beside A's, not over it"
    assert a.lookup(cache, QUESTION).content == "answer for A"
    assert b.lookup(cache, QUESTION).content == "answer for B"
    cache.flush()
    misses = query(shared_url, "SELECT candidate_id, similarity FROM pgcache_lookups WHERE outcome = 'miss'")
    assert misses == [(None, None), (None, None)], "B's lookups found no candidate in scope at all"


class Renamed:
    """Another embedder name over the very same vectors."""

    def __init__(self, inner, name):
        self.inner, self.name, self.dimensions = inner, name, inner.dimensions

    def embed(self, texts):
        return self.inner.embed(texts)


@pytest.mark.parametrize(
    "name", ["openai/text-embedding-3-small ", "OpenAI/text-embedding-3-small", "openai/text-embedding-3-smal1"]
)
def test_identical_vectors_under_a_lookalike_embedder_name_are_never_compared(
    empty_cache, shared_url, module_llm, name
):
    first = empty_cache
    with Cache(shared_url, embedder=Renamed(first.embedder, name), llm=module_llm) as other:
        first.store(QUESTION, "stored by the real embedder")
        assert first.lookup(PARAPHRASE).status == "semantic"
        assert other.lookup(PARAPHRASE) is None
        assert other.lookup(QUESTION).status == "exact", "the exact tier never depended on the embedder"


def test_per_call_namespaces_of_the_drop_in_client_stay_apart(database_url, llm, fake):
    with Cache(database_url, embedder=OpenAIEmbedder(client=llm)) as cache:
        client = pgcache.wrap(llm, cache)

        def ask(text, namespace, **kwargs):
            return client.chat.completions.create(
                model="gpt-4o-mini", messages=[user(text)], pgcache={"namespace": namespace}, **kwargs
            )

        assert ask(QUESTION, "tenant-a").pgcache.status == "miss"
        assert ask(PARAPHRASE, "tenant-a").pgcache.status == "semantic"
        lookalikes = ("Tenant-a", "tenant-a ", "tenant\u2010a")
        for namespace in lookalikes:
            stream = ask(PARAPHRASE, namespace, stream=True)
            chunks = list(stream)
            assert stream.pgcache.status == "miss", namespace
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("answer #")
        assert fake.calls["chat"] == 1 + len(lookalikes), "every lookalike namespace asked the LLM itself"
        rows = query(database_url, "SELECT namespace, prompt FROM pgcache_entries ORDER BY id")
        assert rows == [("tenant-a", QUESTION), *((namespace, PARAPHRASE) for namespace in lookalikes)]
