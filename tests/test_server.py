"""``pgcache serve`` through real HTTP: the openai SDK and raw requests against a running server.

The server runs in this process under uvicorn (on 127.0.0.1, a free port), in
front of the fake OpenAI server; its cache is on a fresh database per test.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import openai
import pytest
import uvicorn

from pgcache import Cache, ConfigurationError
from pgcache.embedders import OpenAIEmbedder
from pgcache.server.app import create_app
from pgcache.server.settings import ServerSettings

from .conftest import TEST_API_KEY, query

ADMIN_TOKEN = "admin-token-0123456789abcdef"
QUESTION = [{"role": "user", "content": "What is a buffer overflow?"}]
PARAPHRASE = [{"role": "user", "content": "Explain what a buffer overflow is"}]


class Running:
    """A uvicorn server on a thread, and how to reach it."""

    def __init__(self, app) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> Running:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    def request(self, method: str, path: str, body=None, headers=None) -> tuple[int, dict, bytes]:
        """A raw HTTP request: status, headers (lower-case names) and body."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        sent = {"Authorization": f"Bearer {TEST_API_KEY}", "Content-Type": "application/json", **(headers or {})}
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        content = response.read()
        connection.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, content


@contextmanager
def serving(database_url: str, llm, fake, **settings) -> Iterator[Running]:
    cache = Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm, environ={})
    options = {"upstream_url": fake.base_url, **settings}
    app = create_app(cache, ServerSettings.resolve(options, {}), environ={})
    running = Running(app).start()
    running.cache = cache
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def proxy(database_url, llm, fake):
    with serving(database_url, llm, fake, admin_token=ADMIN_TOKEN) as running:
        yield running


@pytest.fixture
def client(proxy):
    return openai.OpenAI(base_url=proxy.base_url, api_key=TEST_API_KEY, max_retries=0)


def chat(client, messages=QUESTION, **params):
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages, **params)
    return raw.parse(), raw.headers


def test_the_sdk_gets_a_miss_then_an_exact_hit_then_a_semantic_hit(client, proxy, fake, database_url):
    first, first_headers = chat(client)
    second, second_headers = chat(client)
    similar, similar_headers = chat(client, PARAPHRASE)
    assert first_headers["x-pgcache-status"] == "miss" and second_headers["x-pgcache-status"] == "exact"
    assert similar_headers["x-pgcache-status"] == "semantic"
    assert 0 < float(similar_headers["x-pgcache-similarity"]) < 1
    assert second.choices[0].message.content == first.choices[0].message.content == similar.choices[0].message.content
    assert fake.calls["chat"] == 1
    assert first_headers["x-pgcache-entry-id"] == second_headers["x-pgcache-entry-id"]
    proxy.cache.flush()
    lookups = query(database_url, "SELECT id::text, outcome FROM pgcache_lookups")
    assert (second_headers["x-pgcache-lookup-id"], "exact") in lookups


def test_streams_are_stored_when_complete_and_replayed_with_usage(client, fake):
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=QUESTION, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    replayed = list(raw.parse())
    assert raw.headers["x-pgcache-status"] == "exact"
    assert "".join(c.choices[0].delta.content or "" for c in replayed if c.choices) == text and text
    assert replayed[-1].usage is not None and replayed[-1].usage.total_tokens == chunks[-1].usage.total_tokens
    plain, headers = chat(client)
    assert headers["x-pgcache-status"] == "exact" and plain.choices[0].message.content == text
    assert fake.calls["chat"] == 1


def test_the_async_sdk_works_through_the_proxy(proxy, fake):
    async def main():
        async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=TEST_API_KEY, max_retries=0) as client:
            answers = await asyncio.gather(
                *(client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION) for _ in range(5))
            )
            stream = await client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, stream=True)
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        return answers, streamed

    answers, streamed = asyncio.run(main())
    assert len({a.choices[0].message.content for a in answers}) == 1
    assert streamed == answers[0].choices[0].message.content
    assert fake.calls["chat"] == 1, "five identical concurrent requests: single-flight makes one upstream call"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        ({"messages": QUESTION}, "'model' is required"),
        ({"model": "gpt-4o-mini", "messages": "hello"}, "'messages' is required and must be a non-empty array"),
        ({"model": "gpt-4o-mini", "messages": [{"content": "hi"}]}, "messages[0] must be an object"),
        ({"model": "gpt-4o-mini", "messages": QUESTION, "stream": "yes"}, "'stream' must be true or false"),
        ({"model": "gpt-4o-mini", "messages": QUESTION, "pgcache": {"ttl": "soon"}}, "ttl"),
        ({"model": "gpt-4o-mini", "messages": QUESTION, "pgcache": {"colour": 1}}, "unknown pgcache option"),
    ],
)
def test_bad_requests_get_an_openai_style_400(proxy, fake, body, expected):
    status, headers, content = proxy.request("POST", "/v1/chat/completions", body)
    error = json.loads(content)["error"]
    assert status == 400 and headers["content-type"] == "application/json"
    assert expected in error["message"] and error["type"] == "invalid_request_error"
    assert "Traceback" not in content.decode()
    assert fake.calls["chat"] == 0


def test_a_body_over_the_limit_is_refused_with_413(database_url, llm, fake):
    with serving(database_url, llm, fake, max_body_bytes=1000) as proxy:
        big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 2000}]}
        status, _, content = proxy.request("POST", "/v1/chat/completions", big)
    assert status == 413 and "larger than 1000 bytes" in json.loads(content)["error"]["message"]
    assert fake.calls["chat"] == 0


def test_cache_control_and_pgcache_headers_steer_the_cache(proxy, fake, database_url):
    body = {"model": "gpt-4o-mini", "messages": QUESTION}
    _, headers, _ = proxy.request("POST", "/v1/chat/completions", body, {"Cache-Control": "no-store"})
    assert headers["x-pgcache-status"] == "miss" and query(database_url, "SELECT count(*) FROM pgcache_entries") == [
        (0,)
    ]
    _, headers, _ = proxy.request("POST", "/v1/chat/completions", body, {"Cache-Control": "max-age=3600"})
    (seconds,) = query(database_url, "SELECT extract(epoch FROM expires_at - created_at) FROM pgcache_entries")[0]
    assert 3590 < float(seconds) <= 3600
    _, headers, _ = proxy.request("POST", "/v1/chat/completions", body, {"Cache-Control": "no-cache"})
    assert headers["x-pgcache-status"] == "bypass"
    _, headers, _ = proxy.request("POST", "/v1/chat/completions", body, {"X-Pgcache-Namespace": "other"})
    assert headers["x-pgcache-status"] == "miss"
    _, headers, _ = proxy.request("POST", "/v1/chat/completions", {**body, "pgcache": {"namespace": "other"}})
    assert headers["x-pgcache-status"] == "exact"
    assert all("pgcache" not in sent for sent in fake.chat_requests), "the pgcache object never goes upstream"
    status, _, content = proxy.request("POST", "/v1/chat/completions", body, {"X-Pgcache-Threshold": "high"})
    assert status == 400 and "X-Pgcache-Threshold must be a number" in json.loads(content)["error"]["message"]
    assert fake.calls["chat"] == 4


def test_upstream_errors_reach_the_caller_and_nothing_is_stored(client, fake, database_url):
    fake.fail_chat = 429
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
    assert raised.value.status_code == 429
    assert query(database_url, "SELECT count(*) FROM pgcache_entries") == [(0,)]
    assert query(database_url, "SELECT count(*) FROM pgcache_inflight") == [(0,)]
    fake.fail_chat = None
    assert chat(client)[1]["x-pgcache-status"] == "miss"


def test_other_requests_pass_through_unchanged(client, proxy, fake):
    embedded = client.embeddings.create(model="text-embedding-3-small", input=["a buffer overflow"])
    assert len(embedded.data[0].embedding) == 1536 and fake.calls["embeddings"] >= 1
    status, _, content = proxy.request("GET", "/v1/no-such-thing")
    assert (status, content) == (404, b"{}"), "the upstream's own answer"


def test_the_callers_key_goes_upstream_and_is_never_stored(client, fake, database_url):
    chat(client)
    assert {k.lower(): v for k, v in fake.headers[-1].items()}["authorization"] == f"Bearer {TEST_API_KEY}"
    dump = json.dumps(query(database_url, "SELECT row_to_json(e) FROM pgcache_entries e"))
    dump += json.dumps(query(database_url, "SELECT row_to_json(l) FROM pgcache_lookups l"))
    assert TEST_API_KEY not in dump


def test_a_server_key_replaces_the_callers(database_url, llm, fake):
    cache = Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm, environ={})
    server_key = "sk-server-side-0123456789"
    settings = ServerSettings.resolve({"upstream_url": fake.base_url, "upstream_key": "server"}, {})
    app = create_app(cache, settings, environ={"OPENAI_API_KEY": server_key})
    running = Running(app).start()
    try:
        status, _, _ = running.request(
            "POST", "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": QUESTION}, {"Authorization": "x"}
        )
    finally:
        running.stop()
    assert status == 200
    assert {k.lower(): v for k, v in fake.headers[-1].items()}["authorization"] == f"Bearer {server_key}"


def test_tenants_with_different_keys_never_share_entries(database_url, llm, fake):
    with serving(database_url, llm, fake, tenant_secret="tenant-secret-0123456789") as proxy:
        body = {"model": "gpt-4o-mini", "messages": QUESTION}
        alice = {"Authorization": "Bearer sk-alice-0000000000"}
        bob = {"Authorization": "Bearer sk-bob-1111111111"}
        statuses = [proxy.request("POST", "/v1/chat/completions", body, who)[1]["x-pgcache-status"]
                    for who in (alice, bob, alice, bob)]  # fmt: skip
        status, _, content = proxy.request("POST", "/v1/chat/completions", body, {"Authorization": ""})
    assert statuses == ["miss", "miss", "exact", "exact"]
    assert status == 401 and json.loads(content)["error"]["type"] == "authentication_error"
    namespaces = {n for (n,) in query(database_url, "SELECT namespace FROM pgcache_entries")}
    assert len(namespaces) == 2 and all(n.startswith("default/") for n in namespaces)
    assert not any("alice" in n or "bob" in n for n in namespaces)


def test_a_client_that_drops_a_stream_stores_nothing_and_leaks_no_lease(proxy, fake, database_url):
    fake.stream_delay = 0.2
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    body = json.dumps({"model": "gpt-4o-mini", "messages": QUESTION, "stream": True})
    connection.request("POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {TEST_API_KEY}"})
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("X-Pgcache-Status") == "miss"
    assert response.readline().startswith(b"data: ")
    response.close()
    connection.close()
    deadline = time.monotonic() + 10
    while query(database_url, "SELECT count(*) FROM pgcache_inflight") != [(0,)]:
        assert time.monotonic() < deadline, "the dropped stream's lease was never released"
        time.sleep(0.1)
    time.sleep(1.5)  # the rest of the upstream's stream would have arrived by now
    assert query(database_url, "SELECT count(*) FROM pgcache_entries") == [(0,)]
    fake.stream_delay = 0.0
    assert (
        proxy.request("POST", "/v1/chat/completions", json.loads(body) | {"stream": False})[1]["x-pgcache-status"]
        == "miss"
    )


def test_feedback_needs_the_admin_token(client, proxy):
    chat(client)
    _, headers = chat(client, PARAPHRASE)
    lookup = {"lookup_id": headers["x-pgcache-lookup-id"], "verdict": "wrong"}
    assert proxy.request("POST", "/pgcache/feedback", lookup)[0] == 401
    status, _, content = proxy.request("POST", "/pgcache/feedback", lookup, {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert status == 200 and json.loads(content)["entry_threshold"] > float(headers["x-pgcache-similarity"])
    assert chat(client, PARAPHRASE)[1]["x-pgcache-status"] == "miss"
    status, _, content = proxy.request(
        "POST",
        "/pgcache/feedback",
        {"lookup_id": "nope", "verdict": "wrong"},
        {"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert status == 400 and "lookup id must be a UUID" in json.loads(content)["error"]["message"]


def test_a_webhook_invalidates_by_tag_with_the_admin_token(client, proxy, database_url):
    proxy.cache.store("What is a buffer overflow?", "answer from doc 42", tags=["doc:42"])
    proxy.cache.store("What is SQL injection?", "answer from doc 7", tags=["doc:7"])
    body = {"tags": ["doc:42"]}
    assert proxy.request("POST", "/pgcache/invalidate", body)[0] == 401
    status, _, content = proxy.request("POST", "/pgcache/invalidate", body, {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert (status, json.loads(content)) == (200, {"invalidated": 1})
    assert query(database_url, "SELECT prompt FROM pgcache_entries") == [("What is SQL injection?",)]
    status, _, content = proxy.request(
        "POST", "/pgcache/invalidate", {"tags": "doc:7"}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert status == 400 and "tags must be a list of strings" in json.loads(content)["error"]["message"]


def test_feedback_is_disabled_without_an_admin_token(database_url, llm, fake):
    with serving(database_url, llm, fake) as proxy:
        status, _, content = proxy.request("POST", "/pgcache/feedback", {}, {"Authorization": "Bearer anything-at-all"})
    assert status == 403 and "PGCACHE_ADMIN_TOKEN" in json.loads(content)["error"]["message"]


def test_health_and_metrics(client, proxy):
    chat(client)
    chat(client)
    status, _, content = proxy.request("GET", "/healthz")
    assert status == 200 and json.loads(content) == {"status": "ok", "database": "ok", "upstream": "ok"}
    status, headers, content = proxy.request("GET", "/metrics")
    page = content.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert 'pgcache_requests_total{namespace="default",outcome="exact"}' in page
    assert 'pgcache_lookup_seconds_bucket{le="0.5",outcome="miss"}' in page
    assert 'pgcache_breaker_open{breaker="database"} 0.0' in page
    assert "pgcache_tokens_saved_total" in page and "pgcache_upstream_seconds_count" in page


def test_the_settings_table_in_docs_is_in_step_with_the_declarations():
    from pathlib import Path

    from pgcache import config

    docs = (Path(__file__).resolve().parents[1] / "docs" / "server.md").read_text(encoding="utf-8")
    assert config.markdown_table(ServerSettings, "setting") in docs


def test_server_secrets_are_checked_and_never_shown():
    settings = ServerSettings.resolve({"admin_token": "a-long-admin-token-value", "tenant_secret": "s" * 20}, {})
    assert "a-long-admin-token-value" not in repr(settings) and "s" * 20 not in repr(settings)
    with pytest.raises(ValueError, match="PGCACHE_ADMIN_TOKEN must be a string of at least 16 characters"):
        ServerSettings.resolve({}, {"PGCACHE_ADMIN_TOKEN": "short"})
    with pytest.raises(ValueError, match="upstream_url must be an http:// or https:// URL"):
        ServerSettings.resolve({"upstream_url": "ftp://example.com"}, {})


def test_an_embedding_model_the_cache_cannot_store_stops_the_server_at_start(database_url, llm, fake, caplog):
    fake.embedding_models["wide-embed"] = (3072, "refused")
    cache = Cache(database_url, llm=llm, embedding_model="wide-embed", environ={})
    app = create_app(cache, ServerSettings.resolve({"upstream_url": fake.base_url}, {}), environ={})

    async def start():
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(ConfigurationError, match="wide-embed returns 3072-dimensional vectors and cannot shorten"):
        asyncio.run(start())
    fake.embedding_models["wide-embed"] = (768, "ignored")
    down = Cache(database_url, llm=llm, embedding_model="wide-embed", embedding_base_url="http://127.0.0.1:9/v1")
    app = create_app(down, ServerSettings.resolve({"upstream_url": fake.base_url}, {}), environ={})
    with caplog.at_level("WARNING", logger="pgcache.server"):
        asyncio.run(start())
    assert "the embedding endpoint did not answer at start (embedder openai/wide-embed failed" in caplog.text
    cache.close()
    down.close()
