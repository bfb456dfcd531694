"""pgcache.integrations.langchain: LangChain's LLM cache on both tiers, driven by LangChain's own fake models."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.globals import set_llm_cache
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel, GenericFakeChatModel
from langchain_core.load import dumps
from langchain_core.messages import AIMessage, AIMessageChunk, ChatMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation
from openai.types.chat import ChatCompletion

from pgcache import Cache, ConfigurationError, DatabaseError, InvalidRequestError
from pgcache.embedders import OpenAIEmbedder
from pgcache.integrations.langchain import PgcacheLangChainCache, describe_llm, model_label, openai_messages

from .conftest import query

QUESTION = "What is a buffer overflow?"
PARAPHRASE = "Explain buffer overflow attacks to me"
UNREACHABLE = "postgresql://pgcache@127.0.0.1:1/none"


class ChatModel(FakeMessagesListChatModel):
    """Answers from its list and counts its calls; its name and temperature are in LangChain's llm_string."""

    model_name: str = "fake-gpt"
    temperature: float = 0.0
    calls: int = 0

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "temperature": self.temperature}

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.calls += 1
        return super()._generate(messages, stop, run_manager, **kwargs)


class StreamingModel(GenericFakeChatModel):
    """Streams its answers word by word when ``streaming=True``."""

    streaming: bool = False


class Answers:
    """An endless iterator of answers that counts how many were taken."""

    def __init__(self, *answers: Any) -> None:
        self.answers, self.calls = answers, 0

    def __iter__(self) -> Answers:
        return self

    def __next__(self) -> Any:
        self.calls += 1
        return self.answers[(self.calls - 1) % len(self.answers)]


class Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


class Recording(PgcacheLangChainCache):
    """Notes each call's thread and llm_string."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threads: list[str] = []
        self.llm_strings: list[str] = []

    def lookup(self, prompt, llm_string):
        self.threads.append(threading.current_thread().name)
        self.llm_strings.append(llm_string)
        return super().lookup(prompt, llm_string)

    def update(self, prompt, llm_string, return_val):
        self.threads.append(threading.current_thread().name)
        return super().update(prompt, llm_string, return_val)


@pytest.fixture
def cache(database_url, llm, fake):
    with Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm, threshold=0.9) as cache:
        yield cache


@pytest.fixture
def lc(cache):
    """The cache as LangChain's global cache, reset afterwards."""
    lc = PgcacheLangChainCache(cache)
    set_llm_cache(lc)
    yield lc
    set_llm_cache(None)


def chat(*answers: Any, **fields: Any) -> ChatModel:
    return ChatModel(responses=[AIMessage(a) if isinstance(a, str) else a for a in answers], **fields)


def outcomes(cache: Cache, database_url: str) -> list[str]:
    cache.flush()
    return [row[0] for row in query(database_url, "SELECT outcome FROM pgcache_lookups ORDER BY at")]


def dump(database_url: str) -> str:
    rows = query(
        database_url,
        "SELECT string_agg(t, ' ') FROM (SELECT row_to_json(e)::text AS t FROM pgcache_entries e "
        "UNION ALL SELECT row_to_json(l)::text FROM pgcache_lookups l) AS rows",
    )
    return rows[0][0] or ""


def test_second_identical_call_is_an_exact_hit(lc, cache, database_url):
    model = chat("Writing past the end of a buffer.")
    first = model.invoke(QUESTION)
    second = model.invoke(QUESTION)
    assert model.calls == 1
    assert type(second) is AIMessage and second.content == first.content == "Writing past the end of a buffer."
    assert outcomes(cache, database_url) == ["miss", "exact"]
    rows = query(database_url, "SELECT model, prompt, tags, source, namespace FROM pgcache_entries")
    assert rows == [("fake-gpt", QUESTION, ["langchain"], "llm", cache.namespace)]


def test_paraphrase_is_a_semantic_hit_within_the_same_system_prompt(lc, cache, database_url):
    model = chat("Writing past the end of a buffer.", "Another answer.")
    system = SystemMessage("You are a security tutor.")
    model.invoke([system, HumanMessage(QUESTION)])
    hit = model.invoke([system, HumanMessage(PARAPHRASE)])
    assert model.calls == 1 and hit.content == "Writing past the end of a buffer."
    assert model.invoke([SystemMessage("You are a pirate."), HumanMessage(PARAPHRASE)]).content == "Another answer."
    assert model.calls == 2, "another system prompt is another scope"
    assert outcomes(cache, database_url) == ["miss", "semantic", "miss"]


@pytest.mark.parametrize(
    "other, call",
    [
        ({"model_name": "fake-gpt-2"}, {}),
        ({"temperature": 0.7}, {}),
        ({}, {"stop": ["\n"]}),
        ({}, {"temperature": 0.7}),
    ],
    ids=["model name", "model temperature", "stop", "call temperature"],
)
def test_another_model_or_setting_is_a_miss_even_for_the_same_question(lc, other, call):
    first = chat("first answer")
    first.invoke(QUESTION)
    second = chat("second answer", **other)
    assert second.invoke(QUESTION, **call).content == "second answer"
    assert second.invoke(PARAPHRASE, **call).content == "second answer"
    assert second.calls == 1, "the other model's answer is cached for it alone, paraphrases included"
    assert first.invoke(QUESTION).content == "first answer" and first.calls == 1


def test_chat_generations_round_trip(lc, cache, database_url):
    answer = AIMessage(
        "Let me look that up.",
        tool_calls=[{"name": "lookup_cve", "args": {"q": "buffer overflow", "limit": 3}, "id": "call_1"}],
        additional_kwargs={"refusal": None, "vendor": {"trace": [1, 2]}},
        response_metadata={"finish_reason": "tool_calls", "system_fingerprint": "fp_x"},
        usage_metadata={"input_tokens": 11, "output_tokens": 7, "total_tokens": 18},
    )
    model = chat(answer)
    miss = model.invoke(QUESTION)
    hit = model.invoke(QUESTION)
    assert model.calls == 1 and type(hit) is AIMessage
    assert (hit.content, hit.tool_calls, hit.additional_kwargs, hit.response_metadata, hit.id) == (
        miss.content,
        miss.tool_calls,
        miss.additional_kwargs,
        miss.response_metadata,
        miss.id,
    )
    assert hit.tool_calls[0]["args"] == {"q": "buffer overflow", "limit": 3}
    assert {k: v for k, v in hit.usage_metadata.items() if k != "total_cost"} == miss.usage_metadata
    ((response, prompt_tokens, completion_tokens),) = query(
        database_url, "SELECT response, prompt_tokens, completion_tokens FROM pgcache_entries"
    )
    assert (prompt_tokens, completion_tokens) == (11, 7)
    completion = ChatCompletion.model_validate(response)  # what CacheResult.completion() and the views read
    assert completion.choices[0].finish_reason == "tool_calls" and completion.model == "fake-gpt"
    assert completion.choices[0].message.content == "Let me look that up."
    call = completion.choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_1",
        "lookup_cve",
        {"q": "buffer overflow", "limit": 3},
    )


def test_generation_info_and_chunks_round_trip_through_the_cache_api(cache):
    lc = PgcacheLangChainCache(cache)
    prompt, llm_string = dumps([HumanMessage(QUESTION)]), "[('_type', 'test'), ('model_name', 'gpt-x')]"
    assert lc.lookup(prompt, llm_string) is None
    lc.update(
        prompt,
        llm_string,
        [
            ChatGeneration(message=AIMessage("first"), generation_info={"finish_reason": "length", "logprobs": None}),
            ChatGenerationChunk(message=AIMessageChunk(content="second")),
        ],
    )
    first, second = lc.lookup(prompt, llm_string)
    assert type(first) is ChatGeneration and first.generation_info == {"finish_reason": "length", "logprobs": None}
    assert type(second) is ChatGeneration and type(second.message) is AIMessage and second.text == "second"
    assert [g.text for g in lc.lookup(dumps([HumanMessage(PARAPHRASE)]), llm_string)] == ["first", "second"]


def test_a_chunk_returned_by_a_model_comes_back_as_a_message(lc):
    answers = Answers(AIMessageChunk(content="chunked answer"))
    model = GenericFakeChatModel(messages=answers)
    model.invoke(QUESTION)
    hit = model.invoke(QUESTION)
    assert answers.calls == 1 and type(hit) is AIMessage and hit.content == "chunked answer"


def test_text_llm_is_cached_exactly_and_semantically(lc, cache, database_url, fake):
    model = FakeListLLM(responses=["Writing past the end of a buffer.", "other"])
    assert model.invoke(QUESTION) == "Writing past the end of a buffer."
    assert model.invoke(QUESTION) == "Writing past the end of a buffer."
    assert model.invoke(PARAPHRASE) == "Writing past the end of a buffer."
    assert model.i == 1, "one call to the model"
    assert outcomes(cache, database_url) == ["miss", "exact", "semantic"]
    assert fake.embedded_texts == [QUESTION, PARAPHRASE]
    ((request,),) = query(database_url, "SELECT request FROM pgcache_entries")
    assert request["messages"] == [{"role": "user", "content": QUESTION}]
    assert request["params"]["langchain_prompt"] == "text"


def test_streamed_call_is_stored_then_served_from_the_cache(lc):
    answers = Answers(AIMessage("streamed word by word"))
    model = StreamingModel(messages=answers, streaming=True)
    tokens = Tokens()
    first = model.invoke(QUESTION, config={"callbacks": [tokens]})
    assert "".join(tokens.tokens) == "streamed word by word" and len(tokens.tokens) > 3, "it streamed"
    second = model.invoke(QUESTION, config={"callbacks": [tokens]})
    assert answers.calls == 1 and type(second) is AIMessage and second.content == first.content
    assert "".join(tokens.tokens) == "streamed word by word", "the hit did not stream from the model"


def test_stream_of_a_model_that_cannot_stream_is_served_from_the_cache(lc):
    model = chat("Writing past the end of a buffer.")
    model.invoke(QUESTION)
    chunks = list(model.stream(QUESTION))
    assert model.calls == 1 and "".join(c.content for c in chunks) == "Writing past the end of a buffer."


def test_async_calls_hit_and_run_on_pgcache_threads(cache):
    recording = Recording(cache)
    model = chat("Writing past the end of a buffer.", cache=recording)

    async def run():
        first = await model.ainvoke(QUESTION)
        second = await model.ainvoke(QUESTION)
        return first, second, threading.current_thread().name

    first, second, loop_thread = asyncio.run(run())
    assert model.calls == 1 and second.content == first.content
    assert len(recording.threads) == 3, "lookup, update, lookup"
    assert all(name.startswith("pgcache") for name in recording.threads), recording.threads
    assert loop_thread not in recording.threads


def test_clear_deletes_only_this_namespaces_langchain_entries(cache, database_url):
    mine, theirs = PgcacheLangChainCache(cache, namespace="a"), PgcacheLangChainCache(cache, namespace="b")
    model_a, model_b = chat("answer a", cache=mine), chat("answer b", cache=theirs)
    model_a.invoke(QUESTION)
    model_b.invoke(QUESTION)
    cache.store("A stored question", "A stored answer", namespace="a")
    mine.clear()
    rows = query(database_url, "SELECT namespace, prompt, 'langchain' = ANY(tags) FROM pgcache_entries ORDER BY 1")
    assert rows == [("a", "A stored question", False), ("b", QUESTION, True)]
    model_a.invoke(QUESTION)
    assert model_a.calls == 2, "cleared: the model answers again"
    asyncio.run(theirs.aclear())
    assert query(database_url, "SELECT count(*) FROM pgcache_entries WHERE namespace = 'b'") == [(0,)]
    with pytest.raises(InvalidRequestError, match=r"clear\(\) takes no options, got everything"):
        mine.clear(everything=True)


def test_llm_string_is_never_stored_and_the_human_message_is_embedded(cache, database_url, fake):
    recording = Recording(cache, tags=["tutor"], ttl="1h")
    model = chat("Writing past the end of a buffer.", cache=recording)
    model.invoke([SystemMessage("You are terse."), HumanMessage(QUESTION)], stop=["STOP-MARKER-31337"])
    model.invoke([SystemMessage("You are terse."), HumanMessage(QUESTION)], stop=["STOP-MARKER-31337"])
    assert model.calls == 1
    cache.flush()
    (llm_string,) = set(recording.llm_strings)
    stored = dump(database_url)
    assert "STOP-MARKER-31337" in llm_string and "_type" in llm_string
    assert "STOP-MARKER-31337" not in stored and "_type" not in stored and llm_string not in stored
    assert hashlib.sha256(llm_string.encode()).hexdigest() in stored
    assert fake.embedded_texts == [QUESTION] and fake.calls["embeddings"] == 1, "embedded once, by the lookup"
    ((request, tags, ttl, embedded),) = query(
        database_url,
        "SELECT request, tags, extract(epoch FROM expires_at - created_at), embedding IS NOT NULL FROM pgcache_entries",
    )
    assert embedded, "stored with the lookup's vector"
    assert request["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": QUESTION},
    ]
    assert tags == ["langchain", "tutor"] and round(float(ttl)) == 3600


def test_unreachable_database_fails_open(llm, fake):
    cache = Cache(UNREACHABLE, embedder=OpenAIEmbedder(client=llm), llm=llm)
    lc = PgcacheLangChainCache(cache)
    model = chat("first", "second", cache=lc)
    assert model.invoke(QUESTION).content == "first"
    assert model.invoke(QUESTION).content == "second"
    assert model.calls == 2 and cache.breaker.failures >= 1
    prompt = dumps([HumanMessage(QUESTION)])
    assert lc.lookup(prompt, "llm") is None
    lc.update(prompt, "llm", [Generation(text="answer")])

    strict = PgcacheLangChainCache(Cache(UNREACHABLE, embedder=OpenAIEmbedder(client=llm), fail_open=False))
    with pytest.raises(DatabaseError):
        strict.lookup(prompt, "llm")
    with pytest.raises(DatabaseError):
        strict.update(prompt, "llm", [Generation(text="answer")])


def test_an_unstorable_answer_is_logged_not_raised(cache, database_url, caplog):
    model = chat("a NUL \x00 in the answer")
    model.cache = PgcacheLangChainCache(cache)
    assert model.invoke(QUESTION).content == "a NUL \x00 in the answer"
    assert "answer not stored" in caplog.text
    assert query(database_url, "SELECT count(*) FROM pgcache_entries") == [(0,)]


def test_prompts_become_openai_messages():
    prompt = dumps(
        [
            SystemMessage("Be brief."),
            HumanMessage("Hi", name="bob"),
            AIMessage("Looking.", tool_calls=[{"name": "f", "args": {"a": 1}, "id": "c0"}]),
            ToolMessage("result", tool_call_id="c0"),
            ChatMessage(role="developer", content="Use the tool."),
            HumanMessage(["What is", {"type": "text", "text": "a buffer overflow?"}]),
        ]
    )
    assert openai_messages(prompt) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi", "name": "bob"},
        {
            "role": "assistant",
            "content": "Looking.",
            "tool_calls": [{"name": "f", "args": {"a": 1}, "id": "c0", "type": "tool_call"}],
        },
        {"role": "tool", "content": "result", "tool_call_id": "c0", "status": "success"},
        {"role": "developer", "content": "Use the tool."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "a buffer overflow?"}],
        },
    ]
    assert openai_messages(dumps([ChatMessage(role="critic", content="x")])) is None
    assert openai_messages(QUESTION) is None and openai_messages("[1, 2]") is None and openai_messages("[]") is None


def test_different_prompts_never_share_a_key(cache):
    lc = PgcacheLangChainCache(cache)
    llm_string = "[('_type', 'test')]"
    prompts = [
        dumps([HumanMessage(QUESTION)]),
        dumps([HumanMessage(QUESTION, name="bob")]),
        dumps([ChatMessage(role="critic", content=QUESTION)]),  # not convertible: the whole prompt as text
        QUESTION,  # a text LLM's prompt
        dumps([HumanMessage(QUESTION)]).replace('"human"', '"robot"'),
    ]
    keys = {lc.request_key(prompt, llm_string).exact_key for prompt in prompts}
    assert len(keys) == len(prompts)
    assert lc.request_key(prompts[0], llm_string).prompt == QUESTION
    assert lc.request_key(prompts[0], llm_string).exact_key != lc.request_key(prompts[0], llm_string + " ").exact_key


def test_model_label_from_either_kind_of_llm_string():
    serialised = json.dumps({"lc": 1, "type": "constructor", "kwargs": {"model_name": "gpt-4o-mini", "x": "---"}})
    assert model_label(serialised + "---[('stop', None)]") == "gpt-4o-mini"
    assert model_label(serialised + "---[('model', 'gpt-4.1'), ('stop', None)]") == "gpt-4.1", "the call's wins"
    assert model_label("[('_type', 'fake'), ('model_name', \"o'brien-1\")]") == "o'brien-1"
    assert model_label("[('_type', 'fake'), ('stop', None)]") == "langchain"
    assert model_label(f"[('model', '{'x' * 300}')]") == "langchain", "too long for a model column"


def test_temperature_from_either_kind_of_llm_string():
    serialised = json.dumps({"lc": 1, "type": "constructor", "kwargs": {"model": "m", "temperature": 0.2}})
    assert describe_llm(serialised + "---[('stop', None)]").temperature == 0.2
    assert describe_llm(serialised + "---[('stop', None), ('temperature', 0)]").temperature == 0
    assert describe_llm("[('_type', 'fake'), ('temperature', 1e-3)]").temperature == 0.001
    assert describe_llm("[('_type', 'fake')]").temperature is None


def test_the_nonzero_temperature_policy_applies(database_url, llm, fake):
    with Cache(database_url, embedder=OpenAIEmbedder(client=llm), bypass_nonzero_temperature=True) as cache:
        lc = PgcacheLangChainCache(cache)
        warm = chat("warm answer", temperature=0.7, cache=lc)
        warm.invoke(QUESTION)
        warm.invoke(QUESTION)
        assert warm.calls == 2
        cold = chat("cold answer", cache=lc)
        cold.invoke(QUESTION)
        cold.invoke(QUESTION)
        assert cold.calls == 1
        assert outcomes(cache, database_url) == ["bypass", "bypass", "miss", "exact"]
    assert query(database_url, "SELECT count(*) FROM pgcache_entries") == [(1,)]


def test_arguments_are_checked(cache, llm):
    with pytest.raises(ConfigurationError, match="namespace"):
        PgcacheLangChainCache(cache, namespace=" ")
    with pytest.raises(ConfigurationError, match="ttl"):
        PgcacheLangChainCache(cache, ttl="soon")
    with pytest.raises(InvalidRequestError, match="tags"):
        PgcacheLangChainCache(cache, tags="faq")
    with pytest.raises(ConfigurationError, match=r"a pgcache\.Cache"):
        PgcacheLangChainCache("postgresql://localhost/db")
    with pytest.raises(ConfigurationError, match="threshold"):
        PgcacheLangChainCache(cache, threshold=0.9)
    with pytest.raises(InvalidRequestError, match="strings"):
        PgcacheLangChainCache(cache).lookup(["not", "a", "string"], "llm")


def test_a_cache_built_from_settings_is_closed_a_given_one_is_not(database_url, llm, fake, monkeypatch):
    monkeypatch.setenv("PGCACHE_DATABASE_URL", database_url)
    with PgcacheLangChainCache(embedder=OpenAIEmbedder(client=llm), namespace="built") as lc:
        assert lc.owns_cache and lc.cache.database_url == database_url and lc.namespace == "built"
        model = chat("answer", cache=lc)
        model.invoke(QUESTION)
        model.invoke(QUESTION)
        assert model.calls == 1
        closed: list[bool] = []
        monkeypatch.setattr(lc.cache, "close", lambda: closed.append(True))
    assert closed == [True]
    given = PgcacheLangChainCache(lc.cache)
    given.close()
    assert closed == [True] and not given.owns_cache


def test_importing_pgcache_does_not_import_langchain_and_its_absence_is_explained():
    code = "import sys, pgcache; print('langchain_core' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"
    code = (
        "import sys; sys.modules['langchain_core'] = None\n"
        "try:\n    import pgcache.integrations.langchain\nexcept ImportError as exc:\n    print(exc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "pip install 'pgcache[langchain]'" in done.stdout
