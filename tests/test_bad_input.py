"""Bad input: every case is either served whole or refused with a PgcacheError naming the problem.

Policy checked here:

* ``store``/``store_many`` refuse what PostgreSQL cannot hold (NUL characters, lone
  surrogates, values that are not JSON) with :class:`InvalidRequestError` before anything
  is embedded or written; a batch with one bad pair stores nothing.
* ``chat`` still answers a request whose answer cannot be stored (a NUL in the prompt or
  in the LLM's text) and stores nothing: the paid-for answer is not lost.
* An LLM answer without choices raises :class:`InvalidRequestError` ("no choices") and
  stores nothing: there is no content to return and nothing to serve later.
* A failing embedder raises :class:`EmbedderError` with ``fail_open=False``; by default
  the call is still answered, from the exact tier, and stored without a vector.

After every case :func:`assert_only_whole_rows` checks the tables themselves. Most tests
share one database, emptied after each test, so that the suite stays fast.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

import openai
import psycopg
import pytest
from typer.testing import CliRunner

from pgcache import Cache, admin, db
from pgcache.cli import app
from pgcache.embedders import OpenAIEmbedder
from pgcache.errors import (
    ConfigurationError,
    DatabaseError,
    EmbedderError,
    InvalidRequestError,
    PgcacheError,
    SchemaError,
)

from .conftest import TEST_API_KEY, migrated_database, query
from .fake_openai import FakeOpenAI

runner = CliRunner()
SECRET = "hunter2-s3cret"
ANSWER = {"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}]}
TABLES = "pgcache_entries, pgcache_lookups, pgcache_inflight, pgcache_thresholds, pgcache_feedback"


def assert_only_whole_rows(url: str, expected: int) -> None:
    """The entries table holds ``expected`` rows, each one servable, and no lease is left behind."""
    ((total, broken_json, mismatched, wrong_dims, nan, not_unit, bad_keys),) = query(
        url,
        """
        SELECT count(*),
               count(*) FILTER (WHERE request IS NULL OR response IS NULL
                                OR jsonb_typeof(request -> 'messages') IS DISTINCT FROM 'array'
                                OR jsonb_typeof(response -> 'choices' -> 0 -> 'message') IS DISTINCT FROM 'object'),
               count(*) FILTER (WHERE (embedding IS NULL) <> (embedder IS NULL)),
               count(*) FILTER (WHERE embedding IS NOT NULL AND vector_dims(embedding) <> 1536),
               count(*) FILTER (WHERE embedding IS NOT NULL AND 'NaN'::real = ANY (embedding::real[])),
               count(*) FILTER (WHERE embedding IS NOT NULL AND abs(l2_norm(embedding) - 1) > 1e-3),
               count(*) FILTER (WHERE length(exact_key) <> 32 OR length(scope_key) <> 32)
        FROM pgcache_entries""",
    )
    assert (broken_json, mismatched, wrong_dims, nan, not_unit, bad_keys) == (0, 0, 0, 0, 0, 0)
    assert total == expected
    assert query(url, "SELECT count(*) FROM pgcache_inflight")[0][0] == 0, "a lease was left behind"


class Embedder:
    """A custom embedder returning ``vector`` for every text (``count`` of them), or raising ``error``."""

    def __init__(self, vector=(1.0, 0.5, 0.25), *, dimensions=3, name="test/custom", error=None, count=None):
        self.vector, self.dimensions, self.name, self.error, self.count = vector, dimensions, name, error, count
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return [list(self.vector) for _ in range(len(texts) if self.count is None else self.count)]


@pytest.fixture(scope="module")
def shared_url(server_url, template_url):
    with migrated_database(server_url, "pgcache_bad") as url:
        yield url


@pytest.fixture
def url(shared_url):
    """The module's migrated database, emptied after each test."""
    yield shared_url
    query(shared_url, f"TRUNCATE {TABLES}")


@pytest.fixture
def plain(url, llm):
    """A cache whose embedder needs no server."""
    with Cache(url, embedder=Embedder(), llm=llm) as cache:
        yield cache


@pytest.fixture
def semantic(url, llm):
    """A cache with embeddings from the fake server, whose topics make paraphrases similar."""
    with Cache(url, embedder=OpenAIEmbedder(client=llm), llm=llm) as cache:
        yield cache


# -- text PostgreSQL cannot hold ---------------------------------------------------


@pytest.mark.parametrize(
    "call, what",
    [
        (lambda c: c.store("What is SQL injection?\x00", "answer"), "request contains a NUL"),
        (lambda c: c.store("What is SQL injection?", "ans\x00wer"), "response contains a NUL"),
        (
            lambda c: c.store([{"role": "user", "content": [{"type": "text", "text": "a\x00b"}]}], "answer"),
            "request contains a NUL",
        ),
        (
            lambda c: c.store([{"role": "system", "content": "\x00"}, {"role": "user", "content": "q"}], "answer"),
            "request contains a NUL",
        ),
        (lambda c: c.store("q", "answer", stop=["\x00"]), "request contains a NUL"),
        (lambda c: c.store("q", {**ANSWER, "extra": {"deep": ["\x00"]}}), "response contains a NUL"),
        (lambda c: c.store("q", {**ANSWER, "\x00key": 1}), "response contains a NUL"),
        (lambda c: c.store_many([("good question", "good answer"), ("bad\x00question", "answer")]), "NUL"),
    ],
    ids=["prompt", "answer", "content part", "system message", "parameter", "nested value", "key", "batch"],
)
def test_nul_characters_are_refused_by_store_and_nothing_is_written(plain, url, call, what):
    with pytest.raises(InvalidRequestError, match=what):
        call(plain)
    assert plain.embedder.calls == 0, "refused before any embedding was paid for"
    assert_only_whole_rows(url, 0)


def test_nul_in_chat_is_answered_but_not_stored(semantic, fake, url):
    """The answer was paid for: chat returns it; PostgreSQL cannot hold it, so nothing is stored."""
    result = semantic.query("What is SQL injection?\x00")
    assert (result.status, result.entry_id) == ("miss", None)
    assert result.content == "answer #1 to: What is SQL injection?\x00"
    assert semantic.query("What is SQL injection?\x00").status == "miss"
    assert fake.calls["chat"] == 2
    assert semantic.breaker.failures == 0
    assert_only_whole_rows(url, 0)


def test_nul_prompt_that_hits_semantically_keeps_the_ledger_whole(semantic, url):
    entry_id = semantic.store("What is SQL injection?", "Untrusted input run as SQL.")
    hit = semantic.lookup("Explain SQL injection\x00")
    assert (hit.status, hit.entry_id) == ("semantic", entry_id)
    assert semantic.lookup("What is SQL injection?").status == "exact"
    semantic.flush()
    assert query(url, "SELECT outcome, prompt FROM pgcache_lookups ORDER BY at") == [
        ("semantic", "Explain SQL injection"),
        ("exact", None),
    ]
    assert query(url, "SELECT hit_count FROM pgcache_entries") == [(2,)]
    assert_only_whole_rows(url, 1)


LONE = "\ud800"


@pytest.mark.parametrize(
    "call, error, what",
    [
        (lambda c: c.store(f"question {LONE}", "answer"), InvalidRequestError, "request contains invalid Unicode"),
        (lambda c: c.store("question", f"answer {LONE}"), InvalidRequestError, "response contains invalid Unicode"),
        (lambda c: c.store("question", "answer", tags=[LONE]), InvalidRequestError, "tag contains invalid Unicode"),
        (lambda c: c.store("q", "a", namespace=LONE), ConfigurationError, "namespace contains invalid Unicode"),
        (lambda c: c.store("q", "a", model=f"gpt{LONE}"), ConfigurationError, "model contains invalid Unicode"),
        (lambda c: c.store("question", "answer", stop=[LONE]), InvalidRequestError, "request contains invalid Unicode"),
        (lambda c: c.lookup(f"question {LONE}"), InvalidRequestError, "request contains invalid Unicode"),
        (lambda c: c.query(f"question {LONE}"), InvalidRequestError, "request contains invalid Unicode"),
    ],
    ids=["prompt", "answer", "tag", "namespace", "model", "parameter", "lookup", "chat"],
)
def test_lone_surrogates_are_refused(plain, fake, url, call, error, what):
    with pytest.raises(error, match=what):
        call(plain)
    assert fake.calls["chat"] == 0
    assert_only_whole_rows(url, 0)


@pytest.mark.parametrize(
    "call, what",
    [
        (lambda c: c.store(b"\xff\xfe question", "answer"), "prompt string or a list of messages, got bytes"),
        (lambda c: c.store("question", b"\xff\xfe answer"), "response must be answer text, a dict or a ChatCompletion"),
        (
            lambda c: c.store([{"role": "user", "content": b"\xff"}], "answer"),
            r"messages\[0\]\.content must be a string",
        ),
        (lambda c: c.store("question", "answer", namespace=b"\xff"), "namespace must be a non-empty string"),
        (lambda c: c.store("question", "answer", tags=[b"\xff"]), "every tag must be a non-empty string"),
        (lambda c: c.lookup(b"\xc3\x28"), "got bytes"),
    ],
    ids=["prompt", "answer", "content", "namespace", "tag", "lookup"],
)
def test_invalid_utf8_bytes_are_refused_not_decoded(plain, url, call, what):
    with pytest.raises(PgcacheError, match=what):
        call(plain)
    assert_only_whole_rows(url, 0)


# -- sizes and shapes of prompts and messages ---------------------------------------


def test_a_one_megabyte_prompt_is_stored_and_hit_exactly(semantic, fake, url):
    prompt = "What is SQL injection? " + "lorem ipsum " * 87_382
    assert len(prompt.encode()) > 1 << 20
    entry_id = semantic.store(prompt, "long answer")
    hit = semantic.lookup(prompt)
    assert (hit.status, hit.entry_id, hit.content) == ("exact", entry_id, "long answer")
    assert query(url, "SELECT length(prompt), embedder FROM pgcache_entries") == [
        (len(prompt), "openai/text-embedding-3-small")
    ]
    assert fake.embedded_texts == [prompt], "embedded once, when stored"
    assert_only_whole_rows(url, 1)


def test_a_one_megabyte_token_does_not_stall_a_semantic_lookup(semantic, url):
    """A long run of letters (base64, hex) must not make the offline guard backtrack for minutes."""
    blob = "QUJD" * (1 << 18)
    entry_id = semantic.store(f"What is SQL injection? {blob}", "long answer")
    hit = semantic.lookup(f"Explain SQL injection {blob}")
    assert (hit.status, hit.entry_id) == ("semantic", entry_id)
    assert_only_whole_rows(url, 1)


@pytest.mark.parametrize("prompt", ["", " ", "\n\t  \r\n"], ids=["empty", "space", "whitespace"])
def test_empty_and_blank_prompts_use_the_exact_tier_only(plain, url, prompt):
    entry_id = plain.store(prompt, "blank answer")
    assert plain.lookup(prompt).entry_id == entry_id
    assert plain.lookup(prompt + " ") is None
    assert plain.chat([{"role": "user", "content": prompt}], temperature=0).status == "miss"
    assert plain.chat([{"role": "user", "content": prompt}], temperature=0).status == "exact"
    assert plain.embedder.calls == 0
    assert query(url, "SELECT count(*) FROM pgcache_entries WHERE embedding IS NOT NULL")[0][0] == 0
    assert_only_whole_rows(url, 2)


def test_text_content_parts_are_embedded_as_their_text(semantic, url):
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "SQL injection?"}]}
    ]
    entry_id = semantic.store(parts, "Untrusted input run as SQL.")
    assert semantic.lookup(parts).status == "exact"
    hit = semantic.lookup("What is\nSQL injection?")
    assert (hit.status, hit.entry_id) == ("semantic", entry_id), "the same text as a plain string: a semantic hit"
    assert query(url, "SELECT prompt FROM pgcache_entries") == [("What is\nSQL injection?",)]
    assert_only_whole_rows(url, 1)


def test_image_parts_are_cached_exactly_and_never_semantically(semantic, fake, url):
    image = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        }
    ]
    first = semantic.chat(image)
    assert first.status == "miss" and first.entry_id is not None
    assert semantic.chat(image).status == "exact"
    assert semantic.lookup("What is in this picture?") is None
    assert fake.calls["chat"] == 1
    assert query(
        url, "SELECT prompt, embedder, request->'messages'->0->'content'->1->>'type' FROM pgcache_entries"
    ) == [(None, None, "image_url")]
    assert_only_whole_rows(url, 1)


@pytest.mark.parametrize(
    "messages, what",
    [
        ([{"content": "no role"}], r"messages\[0\] has role None"),
        ([{"role": "wizard", "content": "hi"}], r"messages\[0\] has role 'wizard'"),
        ([{"role": "user", "content": "hi"}, {"role": 7, "content": "x"}], r"messages\[1\] has role 7"),
        ([{"role": ["user"], "content": "hi"}], r"messages\[0\] has role \['user'\]"),
        (["just a string"], r"messages\[0\] must be a dict, got str"),
        ([("user", "hi")], r"messages\[0\] must be a dict, got tuple"),
        ([None], r"messages\[0\] must be a dict, got NoneType"),
        ({"role": "user", "content": "hi"}, "a prompt string or a list of messages, got dict"),
        ([], "messages must not be empty"),
        (None, "a prompt string or a list of messages, got NoneType"),
        ([{"role": "user", "content": 42}], r"messages\[0\]\.content must be a string or a list of content parts"),
        ([{"role": "user", "content": {"type": "text", "text": "hi"}}], r"messages\[0\]\.content must be a string"),
        ([{"role": "user", "content": ["hi"]}], r"messages\[0\]\.content\[0\] must be a content part .*got str"),
        ([{"role": "user", "content": [{"text": "hi"}]}], r"content\[0\] must be a content part .*without a type"),
    ],
    ids=[
        "no role",
        "unknown role",
        "role not text",
        "role unhashable",
        "string",
        "tuple",
        "None",
        "one dict",
        "no messages",
        "no list",
        "content number",
        "content dict",
        "part string",
        "part without type",
    ],
)
def test_malformed_messages_are_refused_before_the_llm(plain, fake, url, messages, what):
    for call in (plain.chat, plain.lookup, lambda m: plain.store(m, "answer")):
        with pytest.raises(InvalidRequestError, match=what):
            call(messages)
    assert fake.calls["chat"] == 0
    assert_only_whole_rows(url, 0)


@pytest.mark.parametrize("prompt", [None, 42, ["What is SQL injection?"]], ids=["None", "number", "list"])
def test_query_needs_a_string(plain, fake, url, prompt):
    with pytest.raises(InvalidRequestError, match="prompt must be a string"):
        plain.query(prompt)
    assert fake.calls["chat"] == 0
    assert_only_whole_rows(url, 0)


# -- embedders that misbehave -------------------------------------------------------

BAD_EMBEDDERS = {
    "wrong dimension": (lambda: Embedder((1.0, 2.0)), "returned 2-dimensional vectors; it declares 3"),
    "NaN": (lambda: Embedder((1.0, math.nan, 0.0)), "NaN or infinite"),
    "infinity": (lambda: Embedder((math.inf, 0.0, 1.0)), "NaN or infinite"),
    "zero vector": (lambda: Embedder((0.0, 0.0, 0.0)), "zero vector"),
    "too few vectors": (lambda: Embedder(count=0), "returned 0 vectors for 1 texts"),
    "raises": (lambda: Embedder(error=TimeoutError("model server down")), "failed: TimeoutError: model server down"),
    "not numbers": (lambda: Embedder(("a", "b", "c")), "non-numeric"),
}


@pytest.mark.parametrize("name", BAD_EMBEDDERS)
def test_bad_embedder_without_fail_open_raises_embedder_error(url, llm, fake, name):
    make, what = BAD_EMBEDDERS[name]
    with Cache(url, embedder=make(), llm=llm, fail_open=False) as cache:
        with pytest.raises(EmbedderError, match=what):
            cache.lookup("What is SQL injection?")
        with pytest.raises(EmbedderError, match=what):
            cache.query("What is SQL injection?")
        with pytest.raises(EmbedderError, match=what):
            cache.store("What is SQL injection?", "answer")
    assert fake.calls["chat"] == 0
    assert_only_whole_rows(url, 0)


@pytest.mark.parametrize("name", BAD_EMBEDDERS)
def test_bad_embedder_failing_open_keeps_the_exact_tier(url, llm, fake, name):
    make, what = BAD_EMBEDDERS[name]
    with Cache(url, embedder=make(), llm=llm) as cache:
        first = cache.query("What is SQL injection?")
        assert (first.status, first.content) == ("miss", "answer #1 to: What is SQL injection?")
        assert first.entry_id is not None
        assert cache.query("What is SQL injection?").status == "exact"
        assert cache.lookup("Explain SQL injection") is None
        with pytest.raises(EmbedderError, match=what):
            cache.store("Explain SQL injection", "answer")
        cache.flush()
    assert fake.calls["chat"] == 1
    assert query(url, "SELECT embedder FROM pgcache_entries") == [(None,)]
    assert query(url, "SELECT error FROM pgcache_lookups ORDER BY at LIMIT 1") == [("embedder: unavailable",)]
    assert_only_whole_rows(url, 1)


def test_huge_finite_embedding_values_are_normalised_not_zeroed(url, llm):
    with Cache(url, embedder=Embedder((1e308, 1e308, -1e308)), llm=llm) as cache:
        entry_id = cache.store("What is SQL injection?", "answer")
        hit = cache.lookup("Explain SQL injection")
    assert (hit.status, hit.entry_id) == ("semantic", entry_id)
    assert hit.similarity == pytest.approx(1.0, abs=1e-5)
    assert_only_whole_rows(url, 1)


@pytest.mark.parametrize(
    "name, what",
    [
        ("", "embedder.name must be a non-empty string"),
        ("local/\x00model", "embedder name contains a NUL"),
        ("local/" + "x" * 400, "embedder name must be at most 400 characters, got 406"),
    ],
    ids=["empty", "NUL", "too long"],
)
def test_unstorable_embedder_names_are_refused_at_construction(url, llm, name, what):
    with pytest.raises(ConfigurationError, match=what):
        Cache(url, embedder=Embedder(name=name), llm=llm)
    assert_only_whole_rows(url, 0)


# -- LLMs that misbehave ------------------------------------------------------------


@pytest.mark.parametrize(
    "status, error",
    [(500, openai.InternalServerError), (400, openai.BadRequestError), (429, openai.RateLimitError)],
    ids=["500", "400", "429"],
)
def test_llm_errors_reach_the_caller_and_leave_nothing_behind(plain, fake, url, status, error):
    fake.fail_chat = status
    with pytest.raises(error):
        plain.query("What is SQL injection?")
    assert_only_whole_rows(url, 0)
    plain.flush()
    assert query(url, "SELECT outcome, error FROM pgcache_lookups") == [("miss", f"llm: {error.__name__}")]
    fake.fail_chat = None
    assert plain.query("What is SQL injection?").status == "miss", "the failure was not cached"
    assert_only_whole_rows(url, 1)


class NoChoices(FakeOpenAI):
    """An OpenAI-compatible server whose chat completions come back without choices."""

    def chat(self, body):
        status, payload = super().chat(body)
        return status, {**payload, "choices": []}


@pytest.fixture(scope="module")
def no_choices():
    server = NoChoices().start()
    yield server
    server.stop()


def test_llm_answer_without_choices_is_refused_and_not_stored(url, no_choices):
    llm = openai.OpenAI(base_url=no_choices.base_url, api_key=TEST_API_KEY, max_retries=0)
    with Cache(url, embedder=Embedder(), llm=llm) as cache:
        with pytest.raises(InvalidRequestError, match="no choices"):
            cache.query("What is SQL injection?")
        assert_only_whole_rows(url, 0)
        with pytest.raises(InvalidRequestError, match="no choices"):
            cache.query("What is SQL injection?")
        cache.flush()
    assert no_choices.calls["chat"] == 2, "nothing was served from the cache"
    assert query(url, "SELECT outcome, error FROM pgcache_lookups") == [
        ("miss", "llm: InvalidRequestError"),
        ("miss", "llm: InvalidRequestError"),
    ]
    assert_only_whole_rows(url, 0)


@pytest.mark.parametrize(
    "response, what",
    [
        ({"choices": []}, "no choices"),
        ({"choices": [{"index": 0}]}, r"choices\[0\] has no message"),
        ({"choices": "text"}, "no choices"),
        ({**ANSWER, "extra": object()}, "response is not JSON-serialisable"),
        ({**ANSWER, "extra": {1, 2}}, "response is not JSON-serialisable"),
        ({**ANSWER, "usage": {"prompt_tokens": math.nan}}, "response is not JSON-serialisable"),
        ({**ANSWER, "score": -math.inf}, "response is not JSON-serialisable"),
        (None, "response must be answer text"),
        (["answer"], "response must be answer text"),
    ],
    ids=[
        "no choices",
        "choice without message",
        "choices not a list",
        "object",
        "set",
        "NaN",
        "infinity",
        "None",
        "list",
    ],
)
def test_unstorable_responses_are_refused(plain, url, response, what):
    with pytest.raises(InvalidRequestError, match=what):
        plain.store("question", response)
    assert_only_whole_rows(url, 0)


def test_self_referencing_and_deeply_nested_values_are_refused(plain, url):
    circular = {**ANSWER}
    circular["self"] = circular
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidRequestError, match="response is not JSON-serialisable"):
        plain.store("question", circular)
    with pytest.raises(InvalidRequestError, match="response is not JSON-serialisable: nested too deeply"):
        plain.store("question", {**ANSWER, "deep": deep})
    with pytest.raises(InvalidRequestError, match="request is not JSON-serialisable: nested too deeply"):
        plain.store("question", "answer", logit_bias=deep)
    assert_only_whole_rows(url, 0)


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 2**40, "completion_tokens": -3, "total_tokens": 10**30},
        {"prompt_tokens": "12", "completion_tokens": 1.5, "total_tokens": True},
    ],
    ids=["out of range", "not integers"],
)
def test_token_counts_that_do_not_fit_are_kept_in_the_response_only(plain, url, usage):
    entry_id = plain.store("question", {**ANSWER, "usage": usage})
    hit = plain.lookup("question")
    assert hit.entry_id == entry_id and hit.response["usage"] == usage
    assert query(url, "SELECT prompt_tokens, completion_tokens, total_tokens FROM pgcache_entries") == [
        (None, None, None)
    ]
    assert_only_whole_rows(url, 1)


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": math.nan},
        {"seed": object()},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {1, 2}}}]},
    ],
    ids=["NaN", "object", "set"],
)
def test_unserialisable_parameters_are_refused_before_the_llm(plain, fake, url, params):
    for call in (plain.lookup, plain.chat, lambda p, **kw: plain.store(p, "answer", **kw)):
        with pytest.raises(InvalidRequestError, match="request is not JSON-serialisable"):
            call("question", **params)
    assert fake.calls["chat"] == 0
    assert_only_whole_rows(url, 0)


# -- database URLs and schemas ------------------------------------------------------


@pytest.mark.parametrize(
    "bad_url, what",
    [
        (f"mysql://app:{SECRET}@db.example/app", "must start with postgresql:// or postgres://, got 'mysql'$"),
        (f"app:{SECRET}@db.example.com:5432/app", "must start with postgresql:// or postgres://$"),
        (f"postgres:/app:{SECRET}@db.example/app", "must start with postgresql:// or postgres://$"),
        (f"app:{SECRET}@db://app", "must start with postgresql:// or postgres://$"),
        (f"postgresql://app:{SECRET}@db.example:notaport/app", "malformed database URL: Port could not be cast"),
        (f"postgresql://app:{SECRET}@db.example:99999/app", "malformed database URL: Port out of range"),
        (f"postgresql://app:{SECRET}@[::1/app", "malformed database URL: Invalid IPv6 URL"),
        (f"postgresql://app:{SECRET}%ZZ@db.example/app", "malformed database URL: invalid percent-encoded token"),
        (f"postgresql://db.example/app?password={SECRET}%G1", "malformed database URL: invalid percent-encoded token"),
        (f"postgresql://app:{SECRET}@db.example/app?bogus=1", "malformed database URL: invalid URI query parameter"),
        ("   ", "database URL must be a non-empty string"),
        (42, "database URL must be a non-empty string"),
    ],
    ids=[
        "other scheme",
        "no scheme",
        "one slash",
        "user info as scheme",
        "port",
        "port range",
        "IPv6",
        "percent in password",
        "percent in parameter",
        "unknown parameter",
        "blank",
        "number",
    ],
)
def test_malformed_database_urls_are_named_without_the_password(url, bad_url, what):
    with pytest.raises(ConfigurationError, match=what) as caught:
        Cache(bad_url)
    assert SECRET not in str(caught.value)
    if isinstance(bad_url, str) and bad_url.strip():
        result = runner.invoke(app, ["db", "url", "--database-url", bad_url])
        assert result.exit_code != 0 and isinstance(result.exception, ConfigurationError)
        assert SECRET not in result.output + str(result.exception)
    assert_only_whole_rows(url, 0)


@pytest.mark.parametrize(
    "bad_url",
    [f"postgresql://app:{SECRET}@127.0.0.1:1/app", f"postgresql://127.0.0.1:1/app?user=app&password={SECRET}"],
    ids=["user info", "parameter"],
)
def test_unreachable_database_errors_hide_the_password(url, llm, bad_url):
    with pytest.raises(DatabaseError, match=r"127\.0\.0\.1") as caught:
        Cache(bad_url, embedder=Embedder(), llm=llm, fail_open=False).lookup("question")
    assert SECRET not in str(caught.value)
    assert_only_whole_rows(url, 0)


def test_unmigrated_database_names_the_upgrade_command(empty_database_url, llm, fake):
    with Cache(empty_database_url, embedder=Embedder(), llm=llm) as cache:
        with pytest.raises(SchemaError, match="run `pgcache db upgrade`"):
            cache.store("question", "answer")
        answered = cache.query("What is SQL injection?")
    assert (answered.status, answered.entry_id) == ("miss", None), "chat fails open: answered, not stored"
    with pytest.raises(SchemaError, match="run `pgcache db upgrade`"):
        Cache(empty_database_url, embedder=Embedder(), llm=llm, fail_open=False).lookup("question")
    assert query(empty_database_url, "SELECT to_regclass('pgcache_entries')") == [(None,)], "nothing created"
    db.upgrade(empty_database_url)
    assert_only_whole_rows(empty_database_url, 0)


def test_schema_newer_than_the_code_says_to_upgrade_pgcache(database_url, llm):
    query(database_url, "UPDATE pgcache_alembic_version SET version_num = '9999_from_the_future'")
    newer = r"at revision 9999_from_the_future, newer than this version of pgcache knows .*; upgrade pgcache"
    with Cache(database_url, embedder=Embedder(), llm=llm) as cache, pytest.raises(SchemaError, match=newer):
        cache.store("question", "answer")
    with pytest.raises(SchemaError, match=newer):
        db.upgrade(database_url)
    result = runner.invoke(app, ["db", "upgrade", "--database-url", database_url])
    assert result.exit_code != 0 and re.search(newer, str(result.exception))
    assert query(database_url, "SELECT version_num FROM pgcache_alembic_version") == [("9999_from_the_future",)]
    assert_only_whole_rows(database_url, 0)


# -- TTLs, thresholds, sizes --------------------------------------------------------

BAD_TTLS = [
    -1,
    0,
    0.0,
    -0.5,
    "7x",
    "-5m",
    "",
    "soon",
    "1e5",
    math.nan,
    math.inf,
    -math.inf,
    True,
    [],
    1e300,
    "99999999999999w",
    "5300w",
    timedelta(days=-1),
    timedelta.max,
    10**400,
]


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=lambda ttl: repr(ttl)[:24])
def test_bad_ttls_are_refused_everywhere(plain, fake, url, llm, ttl):
    with pytest.raises(ConfigurationError, match=r"^ttl must (be|look like)"):
        Cache(url, embedder=Embedder(), llm=llm, ttl=ttl)
    with pytest.raises(ConfigurationError, match=r"^ttl must (be|look like)"):
        plain.store("question", "answer", ttl=ttl)
    with pytest.raises(ConfigurationError, match=r"^ttl must (be|look like)"):
        plain.query("question", ttl=ttl)
    assert fake.calls["chat"] == 0 and plain.breaker.failures == 0
    assert_only_whole_rows(url, 0)


def test_the_longest_ttl_and_never_are_stored(plain, url):
    plain.store("a century", "answer", ttl="5200w")
    plain.store("forever", "answer", ttl="never")
    plain.store("zero means never", "answer", ttl="0")
    assert query(
        url,
        "SELECT prompt, extract(year FROM expires_at) - extract(year FROM now()) >= 99 "
        "FROM pgcache_entries ORDER BY id",
    ) == [("a century", True), ("forever", None), ("zero means never", None)]
    assert_only_whole_rows(url, 3)


BAD_THRESHOLDS = [1.5, 1.0000001, -0.1, 0, math.nan, math.inf, "0.9", True, [0.9]]


@pytest.mark.parametrize("threshold", BAD_THRESHOLDS, ids=repr)
def test_bad_thresholds_are_refused_everywhere(plain, fake, url, llm, threshold):
    with pytest.raises(ConfigurationError, match=r"threshold must be a cosine similarity in \(0, 1\]"):
        Cache(url, embedder=Embedder(), llm=llm, threshold=threshold)
    for call in (
        lambda: plain.lookup("question", threshold=threshold),
        lambda: plain.query("question", threshold=threshold),
        lambda: plain.invalidate(similar_to="question", min_similarity=threshold),
    ):
        with pytest.raises(ConfigurationError, match="threshold must be a cosine similarity"):
            call()
    assert fake.calls["chat"] == 0 and plain.embedder.calls == 0
    assert_only_whole_rows(url, 0)


@pytest.fixture
def cli_env(fake, url):
    return {
        "PGCACHE_DATABASE_URL": url,
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": TEST_API_KEY,
        "PGCACHE_EMBEDDER": "openai",
        "PGCACHE_NAMESPACE": "default",
    }


@pytest.mark.parametrize(
    "args, what",
    [
        (["warm", "{faqs}", "--batch-size", "0"], "batch size must be a positive integer, got 0"),
        (["warm", "{faqs}", "--batch-size", "-1"], "batch size must be a positive integer, got -1"),
        (["warm", "{faqs}", "--concurrency", "0"], "concurrency must be a positive integer, got 0"),
        (["sweep", "--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
        (["sweep", "--batch-size", "-5"], "batch_size must be an integer >= 1, got -5"),
    ],
    ids=["warm 0", "warm -1", "warm concurrency 0", "sweep 0", "sweep -5"],
)
def test_cli_refuses_bad_batch_sizes_before_writing(cli_env, fake, url, tmp_path, args, what):
    faqs = tmp_path / "faqs.tsv"
    faqs.write_text("What is SQL injection?\tUntrusted input run as SQL.\n")
    result = runner.invoke(app, [arg.format(faqs=faqs) for arg in args], env=cli_env)
    assert result.exit_code != 0
    assert isinstance(result.exception, PgcacheError) and what in str(result.exception)
    assert fake.calls == {"chat": 0, "embeddings": 0}
    assert_only_whole_rows(url, 0)


def test_cli_batch_size_must_be_a_number(cli_env, url, tmp_path):
    faqs = tmp_path / "faqs.tsv"
    faqs.write_text("What is SQL injection?\tUntrusted input run as SQL.\n")
    result = runner.invoke(app, ["warm", str(faqs), "--batch-size", "ten"], env=cli_env)
    assert result.exit_code == 2 and "--batch-size" in result.output
    assert_only_whole_rows(url, 0)


# -- namespaces, tags and names ------------------------------------------------------

NASTY = [
    "'; DROP TABLE pgcache_entries; --",
    "%",
    "_",
    "\\",
    "\\%",
    "a'b\"c",
    "%_%",
    "default%",
    "*",
    "$1",
    "x' OR '1'='1",
    "ns with spaces",
]


def test_sql_metacharacters_in_namespaces_are_stored_and_isolated_literally(semantic, url):
    for namespace in ["default", *NASTY]:
        semantic.store("What is SQL injection?", f"answer for {namespace!r}", namespace=namespace, tags=[namespace])
    for namespace in ["default", *NASTY]:
        exact = semantic.lookup("What is SQL injection?", namespace=namespace)
        semantic_hit = semantic.lookup("Explain SQL injection", namespace=namespace)
        assert (exact.status, exact.content) == ("exact", f"answer for {namespace!r}")
        assert (semantic_hit.status, semantic_hit.content) == ("semantic", f"answer for {namespace!r}")
    assert semantic.invalidate(namespace="%", all=True, yes=True) == 1
    assert semantic.invalidate(namespace="_", tags=["_"], yes=True) == 1
    assert semantic.invalidate(namespace="\\", prompt="What is SQL injection?", yes=True) == 1
    left = {row[0] for row in query(url, "SELECT namespace FROM pgcache_entries")}
    assert left == {"default", *NASTY} - {"%", "_", "\\"}
    assert semantic.lookup("What is SQL injection?", namespace="%") is None
    assert_only_whole_rows(url, len(NASTY) + 1 - 3)


def test_invalidate_by_tag_matches_tags_exactly(plain, url):
    for tag in NASTY:
        plain.store(f"question about {tag!r}", "answer", tags=[tag, "common"])
    plain.store("untagged question", "answer")
    for tag in ("%", "_", "\\", "'; DROP TABLE pgcache_entries; --"):
        assert plain.preview_invalidation(tags=[tag])[0] == 1
        assert plain.invalidate(tags=[tag]) == 1
    assert plain.invalidate(tags=["no such tag"]) == 0
    assert plain.invalidate(tags=["%", "common"]) == 0, "already gone: tags are values, not patterns"
    assert_only_whole_rows(url, len(NASTY) + 1 - 4)


def test_cli_invalidate_by_metacharacter_tag_deletes_only_that_tag(cli_env, plain, url):
    plain.store("first question", "answer", tags=["%"])
    plain.store("second question", "answer", tags=["100%"])
    result = runner.invoke(app, ["invalidate", "--tag", "%"], env=cli_env)
    assert result.exit_code == 0 and result.output.strip() == "deleted 1 entries"
    assert query(url, "SELECT tags FROM pgcache_entries") == [(["100%"],)]
    assert_only_whole_rows(url, 1)


def test_ten_thousand_tags_on_one_entry(plain, url):
    tags = [f"tag-{i}" for i in range(10_000)]
    entry_id = plain.store("question", "answer", tags=tags)
    plain.store("another question", "answer", tags=["tag-0"])
    assert query(url, "SELECT cardinality(tags), tags[10000] FROM pgcache_entries WHERE id = %s", (entry_id,)) == [
        (10_000, "tag-9999")
    ]
    assert plain.lookup("question").entry_id == entry_id
    assert plain.invalidate(tags=["tag-9999", "tag-0"]) == 1
    assert_only_whole_rows(url, 1)


@pytest.mark.parametrize(
    "call, error, what",
    [
        (lambda c: c.store("q", "a", namespace="n" * 10_000), ConfigurationError, "namespace must be at most 255"),
        (lambda c: c.lookup("q", namespace="é" * 256), ConfigurationError, "namespace must be at most 255"),
        (lambda c: c.query("q", namespace="n" * 300), ConfigurationError, "namespace must be at most 255"),
        (lambda c: c.store("q", "a", model="m" * 10_000), ConfigurationError, "model must be at most 255"),
        (lambda c: c.store("q", "a", tags=["t" * 10_000]), InvalidRequestError, "tag must be at most 255"),
        (lambda c: c.invalidate(namespace="n" * 256, all=True), ConfigurationError, "namespace must be at most 255"),
    ],
    ids=["store namespace", "lookup namespace", "chat namespace", "model", "tag", "invalidate namespace"],
)
def test_over_long_names_are_refused(plain, fake, url, call, error, what):
    with pytest.raises(error, match=what):
        call(plain)
    assert fake.calls["chat"] == 0
    assert_only_whole_rows(url, 0)


def test_names_of_the_longest_allowed_length_fit_every_index(url, llm):
    # Four-byte characters that neither repeat nor compress: the worst case for B-tree index entries.
    namespace = "".join(chr(0x1F300 + i) for i in range(255))
    embedder = Embedder(name="".join(chr(0x20000 + i * 97) for i in range(400)))
    with Cache(url, embedder=embedder, llm=llm, namespace=namespace, model="m" * 255) as cache:
        entry_id = cache.store("question", "answer", tags=["t" * 255])
        with psycopg.connect(url, autocommit=True) as conn:
            admin.save_threshold(conn, namespace, embedder.name, 0.9, 0.98, 0.97, 10, "pairs.csv")
        assert cache.threshold_in_force()[0] == 0.9
        assert cache.lookup("question").status == "exact"
        assert cache.lookup("another question").entry_id == entry_id
        cache.flush()
    assert query(url, "SELECT outcome FROM pgcache_lookups WHERE namespace = %s ORDER BY at", (namespace,)) == [
        ("exact",),
        ("semantic",),
    ]
    assert_only_whole_rows(url, 1)


@pytest.mark.parametrize(
    "tags, what",
    [
        ([1], "every tag must be a non-empty string, got 1"),
        ([None], "every tag must be a non-empty string, got None"),
        (["ok", ""], "every tag must be a non-empty string, got ''"),
        ([["nested"]], r"every tag must be a non-empty string, got \['nested'\]"),
        ("faq", "tags must be a list of strings, not a single string"),
        (5, "tags must be a list of strings, got int"),
        (b"faq", "tags must be a list of strings, got bytes"),
        ({"faq": True}, "tags must be a list of strings, got dict"),
        (["a\x00b"], "tag contains a NUL"),
    ],
    ids=["number", "None", "empty", "list", "string", "int", "bytes", "dict", "NUL"],
)
def test_tags_that_are_not_strings_are_refused(plain, fake, url, tags, what):
    with pytest.raises(InvalidRequestError, match=what):
        plain.store("question", "answer", tags=tags)
    with pytest.raises(InvalidRequestError, match=what):
        plain.query("question", tags=tags)
    assert fake.calls["chat"] == 0
    assert_only_whole_rows(url, 0)


@pytest.mark.parametrize(
    "namespace, what",
    [
        ("", "namespace must be a non-empty string"),
        ("   ", "namespace must be a non-empty string"),
        (None, "namespace must be a non-empty string"),
        (7, "namespace must be a non-empty string, got 7"),
        ("ns\x00", "namespace contains a NUL"),
    ],
    ids=["empty", "blank", "None", "number", "NUL"],
)
def test_bad_namespaces_are_refused_at_construction(url, llm, namespace, what):
    with pytest.raises(ConfigurationError, match=what):
        Cache(url, embedder=Embedder(), llm=llm, namespace=namespace)
    assert_only_whole_rows(url, 0)


def test_store_many_is_all_or_nothing(plain, url):
    with pytest.raises(InvalidRequestError, match=r"choices\[0\] has no message"):
        plain.store_many([("first", "answer"), ("second", {"choices": [{}]}), ("third", "answer")])
    with pytest.raises(InvalidRequestError, match="every tag must be a non-empty string"):
        plain.store_many([("first", "answer"), ("second", "answer")], tags=["ok", None])
    assert plain.embedder.calls == 0
    assert_only_whole_rows(url, 0)


@pytest.mark.parametrize(
    "items, what",
    [
        (
            [("first", "answer"), ("second",), ("third", "answer")],
            r"items\[1\] must be a \(prompt_or_messages, response\)",
        ),
        ([("first", "answer"), "second"], r"items\[1\] must be a \(prompt_or_messages, response\)"),
        (None, "items must be"),
    ],
    ids=["short tuple", "string", "None"],
)
def test_store_many_refuses_items_that_are_not_pairs(plain, url, items, what):
    with pytest.raises(InvalidRequestError, match=what):
        plain.store_many(items)
    assert plain.embedder.calls == 0
    assert_only_whole_rows(url, 0)
