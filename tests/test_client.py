"""pgcache.wrap: the drop-in OpenAI client, sync and async, streaming and not."""

from __future__ import annotations

import asyncio
import gc
import json

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import pgcache
from pgcache import Cache, InvalidRequestError
from pgcache.embedders import OpenAIEmbedder

from .conftest import TEST_API_KEY, query

MESSAGES = [{"role": "user", "content": "What is a buffer overflow vulnerability?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_cve",
            "description": "Find a CVE",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def client(database_url, llm, fake):
    cache = Cache(database_url, embedder=OpenAIEmbedder(client=llm))
    yield pgcache.wrap(llm, cache)
    cache.close()


@pytest.fixture
def async_client(database_url, llm, fake):
    cache = Cache(database_url, embedder=OpenAIEmbedder(client=llm))
    yield pgcache.wrap(openai.AsyncOpenAI(base_url=fake.base_url, api_key=TEST_API_KEY, max_retries=0), cache)
    cache.close()


def content(chunks):
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_sync_miss_and_hits_return_sdk_types(client, fake):
    miss = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert type(miss) is ChatCompletion and miss.pgcache.status == "miss"
    hit = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert type(hit) is ChatCompletion and hit.pgcache.status == "exact"
    assert hit.model_dump() == miss.model_dump()
    similar = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Explain buffer overflow attacks"}]
    )
    assert similar.pgcache.status == "semantic" and similar.pgcache.similarity > 0.92
    assert similar.choices[0].message.content == miss.choices[0].message.content
    assert fake.calls["chat"] == 1
    assert "pgcache" not in hit.model_dump() and "pgcache" not in hit.model_dump_json()


def test_sync_stream_miss_is_live_then_replayed(client, fake):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(type(c) is ChatCompletionChunk for c in chunks) and len(chunks) > 3
    assert stream.pgcache.status == "miss" and stream.pgcache.entry_id is not None
    text = content(chunks)
    assert text == "answer #1 to: What is a buffer overflow vulnerability?"
    again = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert again.pgcache.status == "exact" and again.choices[0].message.content == text
    assert again.usage.total_tokens == chunks[-1].usage.total_tokens
    replay = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    replayed = list(replay)
    assert replay.pgcache.status == "exact" and all(type(c) is ChatCompletionChunk for c in replayed)
    assert content(replayed) == text and replayed[-1].usage.total_tokens == again.usage.total_tokens
    assert [c.choices[0].finish_reason for c in replayed if c.choices][-1] == "stop"
    assert fake.calls["chat"] == 1


def test_stream_abandoned_half_way_stores_nothing(client, fake, database_url):
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    for number, _ in enumerate(stream):
        if number == 3:
            break
    stream.close()
    dropped = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    next(dropped)
    del dropped
    gc.collect()
    assert query(database_url, "SELECT count(*) FROM pgcache_entries")[0][0] == 0
    assert query(database_url, "SELECT count(*) FROM pgcache_inflight")[0][0] == 0
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).pgcache.status == "miss"


def test_stream_broken_upstream_stores_nothing(client, fake, database_url):
    fake.break_stream_after = 4
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIConnectionError):  # the SDK's error for a connection dropped mid-stream
        list(stream)
    assert query(database_url, "SELECT count(*) FROM pgcache_entries")[0][0] == 0
    assert query(database_url, "SELECT count(*) FROM pgcache_inflight")[0][0] == 0


@pytest.mark.parametrize(
    "params",
    [
        {"tools": TOOLS},
        {"tools": TOOLS, "tool_choice": "auto", "n": 2},
        {"response_format": {"type": "json_object"}},
        {"n": 3, "temperature": 0.5},
    ],
    ids=["tool call", "tool calls, two choices", "json mode", "three choices"],
)
def test_responses_round_trip_unchanged(client, fake, params):
    miss = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **params)
    hit = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **params)
    assert hit.pgcache.status == "exact" and hit.model_dump() == miss.model_dump()
    assert hit.system_fingerprint == "fp_fake" and hit.usage == miss.usage
    assert [c.finish_reason for c in hit.choices] == [c.finish_reason for c in miss.choices]


def test_streamed_tool_calls_are_stored_whole(client, fake):
    streamed = list(
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, tools=TOOLS, n=2)
    )
    hit = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS, n=2)
    assert hit.pgcache.status == "exact" and len(streamed) > 4 and fake.calls["chat"] == 1
    for index, choice in enumerate(hit.choices):
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        call = choice.message.tool_calls[0]
        assert (call.id, call.type, call.function.name) == (f"call_1_{index}", "function", "lookup_cve")
        assert json.loads(call.function.arguments) == {"q": MESSAGES[0]["content"]}


def test_streamed_json_mode_is_stored_whole(client, fake):
    list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, response_format={"type": "json_object"}
        )
    )
    hit = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, response_format={"type": "json_object"}
    )
    assert json.loads(hit.choices[0].message.content) == {
        "answer": f"answer #1 to: {MESSAGES[0]['content']}",
        "number": 1,
    }
    assert hit.system_fingerprint == "fp_fake"


def test_per_call_options_and_passthrough(client, fake, database_url):
    assert client.models is client._inner.models, "other attributes are the real client's"
    client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, pgcache={"namespace": "tenant-a", "tags": ["t"]}
    )
    other = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert other.pgcache.status == "miss", "namespaces never serve each other"
    assert all("pgcache" not in body for body in fake.chat_requests), "the option never goes upstream"
    skipped = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, pgcache={"bypass": True})
    assert skipped.pgcache.status == "bypass"
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "secret"}], pgcache={"no_store": True}
    )
    assert query(database_url, "SELECT count(*) FROM pgcache_entries WHERE prompt = 'secret'")[0][0] == 0
    with pytest.raises(InvalidRequestError, match="unknown pgcache option 'ttl_seconds'"):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, pgcache={"ttl_seconds": 5})
    with pytest.raises(openai.InternalServerError):
        fake.fail_chat = 500
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "fails"}])
    assert query(database_url, "SELECT count(*) FROM pgcache_entries WHERE prompt = 'fails'")[0][0] == 0


def test_async_miss_hit_and_streams(async_client, fake):
    async def run():
        miss = await async_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        hit = await async_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        question = [{"role": "user", "content": "How does SQL injection work?"}]
        live = await async_client.chat.completions.create(model="gpt-4o-mini", messages=question, stream=True)
        live_chunks = [chunk async for chunk in live]
        replay = await async_client.chat.completions.create(model="gpt-4o-mini", messages=question, stream=True)
        replay_chunks = [chunk async for chunk in replay]
        return miss, hit, live, live_chunks, replay, replay_chunks

    miss, hit, live, live_chunks, replay, replay_chunks = asyncio.run(run())
    assert type(miss) is ChatCompletion and miss.pgcache.status == "miss"
    assert type(hit) is ChatCompletion and hit.pgcache.status == "exact" and hit.model_dump() == miss.model_dump()
    assert all(type(c) is ChatCompletionChunk for c in live_chunks + replay_chunks)
    assert live.pgcache.status == "miss" and replay.pgcache.status == "exact"
    assert content(replay_chunks) == content(live_chunks) == "answer #2 to: How does SQL injection work?"
    assert fake.calls["chat"] == 2


def test_async_fifty_concurrent_misses_one_upstream_call(async_client, fake):
    fake.chat_delay = 0.5

    async def run():
        return await asyncio.gather(
            *[async_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES) for _ in range(50)]
        )

    results = asyncio.run(run())
    assert fake.calls["chat"] == 1
    assert len({r.choices[0].message.content for r in results}) == 1
    assert [r.pgcache.status for r in results].count("miss") == 1


def test_async_stream_abandoned_stores_nothing(async_client, fake, database_url):
    async def run():
        stream = await async_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        async for number, _ in _enumerate(stream):
            if number == 2:
                break
        await stream.close()

    asyncio.run(run())
    assert query(database_url, "SELECT count(*) FROM pgcache_entries")[0][0] == 0
    assert query(database_url, "SELECT count(*) FROM pgcache_inflight")[0][0] == 0


async def _enumerate(stream):
    number = 0
    async for item in stream:
        yield number, item
        number += 1


def test_api_key_never_reaches_the_database(client, fake, database_url, caplog):
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers={"X-Trace": "1"})
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    client.cache.flush()
    dump = query(
        database_url,
        "SELECT string_agg(t::text, ' ') FROM (SELECT row_to_json(e)::text AS t FROM "
        "pgcache_entries e UNION ALL SELECT row_to_json(l)::text FROM pgcache_lookups l) AS rows",
    )
    assert dump[0][0] and TEST_API_KEY not in dump[0][0] and "X-Trace" not in dump[0][0]
    assert TEST_API_KEY not in caplog.text
