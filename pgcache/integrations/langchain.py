"""LangChain's LLM cache on pgcache: exact and semantic hits for chat models and text LLMs.

One line puts every LangChain model of a program in front of the cache::

    from langchain_core.globals import set_llm_cache
    from pgcache.integrations.langchain import PgcacheLangChainCache

    set_llm_cache(PgcacheLangChainCache())  # a Cache from the PGCACHE_* variables

LangChain hands a cache two strings: the prompt (for a chat model, its own JSON
serialisation of the messages; for a text LLM, the prompt text) and the
``llm_string``, which describes the model and every invocation parameter. The
serialised messages are read back as plain JSON (never with LangChain's loader,
which could build objects) into OpenAI-shaped messages, so the exact key covers
every message and the semantic tier embeds the final human message's text, not
the serialisation. The ``llm_string`` enters both keys as its SHA-256 (the
parameter ``langchain_llm``): different models or settings (temperature, stop,
…) never share answers, and the string itself, which may name credentials, is
never stored. Answers are stored as OpenAI chat completions, so that pgcache's
views, reports and ``content`` read them, with LangChain's generations kept
beside them under ``"langchain"`` for an exact round trip. The cache's settings
apply as to any other caller: threshold, TTL, ``store_prompts``, fail-open, and
``bypass_nonzero_temperature`` with the temperature the ``llm_string`` gives.

Two limits come from LangChain itself:

* Single-flight: the protocol has no hook for a model call that failed, so a
  lease taken in ``lookup`` could never be released. Concurrent misses on the
  same prompt each call the model.
* ``.stream()`` on a model that implements streaming never consults any cache
  (LangChain's behaviour). ``invoke`` on a model with streaming on does: a miss
  streams from the model and is stored, a hit comes from the cache. ``.stream()``
  on a model that cannot stream goes through ``invoke`` and so through the cache.

The async methods run the database and embedding work on the cache's own
worker threads (:mod:`pgcache.offload`), never on the event loop or in
LangChain's default executor.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Self

import numpy as np

try:
    from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
    from langchain_core.messages import (
        AIMessage,
        BaseMessage,
        BaseMessageChunk,
        message_chunk_to_message,
        message_to_dict,
        messages_from_dict,
    )
    from langchain_core.outputs import ChatGeneration, Generation
except ImportError as exc:
    raise ImportError("pgcache.integrations.langchain needs langchain-core: pip install 'pgcache[langchain]'") from exc

from ..cache import Cache
from ..config import UNSET
from ..durations import parse_ttl
from ..errors import ConfigurationError, InvalidRequestError
from ..keys import ROLES, RequestKey
from ..ledger import LookupRecord
from ..offload import offload
from ..validation import check_name, check_tags

__all__ = ["PgcacheLangChainCache"]

_log = logging.getLogger(__name__)

TAG = "langchain"
"""Every entry stored through LangChain carries this tag; :meth:`PgcacheLangChainCache.clear` deletes by it."""
DEFAULT_LABEL = "langchain"
"""The model name entries get when the ``llm_string`` names none."""
VECTORS = 256
"""Request vectors of recent misses kept for storing their answers without embedding again."""

_ROLE_OF_TYPE = {
    "human": "user",
    "ai": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "function",
    "HumanMessageChunk": "user",
    "AIMessageChunk": "assistant",
    "SystemMessageChunk": "system",
    "ToolMessageChunk": "tool",
    "FunctionMessageChunk": "function",
}
_CHAT_TYPES = frozenset({"chat", "ChatMessageChunk"})
_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
# ('model_name', 'gpt-4o') and ('temperature', 0.7) in the repr of sorted (name, value) pairs that LangChain appends.
_MODEL_PARAM = re.compile(r"""\(\s*'(model|model_name)'\s*,\s*(?:'([^'\\]*)'|"([^"\\]*)")\s*\)""")
_TEMPERATURE_PARAM = re.compile(r"\(\s*'temperature'\s*,\s*([-+0-9.eE]+)\s*\)")


class PgcacheLangChainCache(BaseCache):
    """A LangChain LLM cache (``set_llm_cache(PgcacheLangChainCache())``) on pgcache's exact and semantic tiers.

    Args:
        cache: the :class:`~pgcache.Cache` to use, left open by :meth:`close`;
            by default one is built from ``settings`` and the ``PGCACHE_*``
            variables, and :meth:`close` closes it.
        namespace: where the entries live (default: the cache's namespace).
        ttl: lifetime of new entries (``"7d"``, seconds, ``None`` = never; default: the cache's).
        tags: tags of new entries, besides ``"langchain"``.
        settings: settings of the cache built here (``database_url``, ``embedder``, ``threshold``, …).
    """

    def __init__(
        self,
        cache: Cache | None = None,
        *,
        namespace: str | None = None,
        ttl: Any = UNSET,
        tags: Iterable[str] | None = None,
        **settings: Any,
    ) -> None:
        if cache is not None and not isinstance(cache, Cache):
            raise ConfigurationError(f"cache must be a pgcache.Cache, got {type(cache).__name__}")
        if cache is not None and settings:
            raise ConfigurationError(
                f"settings ({', '.join(sorted(settings))}) configure a cache built here; the given cache has its own"
            )
        # Checked before a cache is built, so that bad arguments leave nothing open.
        namespace = None if namespace is None else check_name(namespace, "namespace")
        lifetime = UNSET if ttl is UNSET else parse_ttl(ttl)
        self.tags = list(dict.fromkeys([TAG, *check_tags(tags)]))
        self.owns_cache = cache is None
        self.cache = Cache(**settings) if cache is None else cache
        self.namespace: str = self.cache.namespace if namespace is None else namespace
        self.ttl: float | None = self.cache.ttl if lifetime is UNSET else lifetime
        self._vectors = _RecentVectors(VECTORS)

    def request_key(self, prompt: str, llm_string: str) -> RequestKey:
        """The pgcache key of a LangChain request: its messages, the model's name, the ``llm_string``'s hash.

        A prompt that is not a list of serialised messages (a text LLM's
        prompt, or messages this module cannot convert) is one user message,
        marked with ``langchain_prompt="text"`` so that it never shares a key
        with converted messages.
        """
        if not isinstance(prompt, str) or not isinstance(llm_string, str):
            raise InvalidRequestError("LangChain's prompt and llm_string must be strings")
        llm = describe_llm(llm_string)
        params = {"langchain_llm": llm.digest}
        messages = openai_messages(prompt)
        if messages is None:
            messages, params["langchain_prompt"] = [{"role": "user", "content": prompt}], "text"
        return self.cache.keys.key(messages, llm.label, self.namespace, params)

    def bypassed(self, llm_string: str) -> bool:
        """Whether the cache's ``bypass_nonzero_temperature`` policy keeps this model's calls out of the cache."""
        temperature = describe_llm(llm_string).temperature
        return self.cache.settings.bypass_nonzero_temperature and temperature is not None and temperature > 0

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """The cached generations for a prompt and model, or ``None``; never calls a model.

        With ``fail_open`` a failing database counts as a miss.
        """
        key = self.request_key(prompt, llm_string)
        if self.bypassed(llm_string):
            record = LookupRecord.start(key.model, key.namespace)
            record.outcome = "bypass"
            self.cache.ledger.record(record)
            return None
        hit, vector = self.cache.lookup_key(key)
        if hit is not None:
            return generations_from(hit.response)
        if vector is not None:
            self._vectors.put(key.exact_key, vector)
        return None

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Store the model's generations for a prompt, with the vector its lookup computed.

        With ``fail_open`` a failing database is skipped; an answer pgcache
        cannot store is logged. Either way the caller keeps its answer.
        """
        if not return_val or self.bypassed(llm_string):
            return
        key = self.request_key(prompt, llm_string)
        response = completion_from(return_val, key.model)
        # Not popped: a concurrent miss on the same key stores too, and must not replace the vector with none.
        vector = self._vectors.get(key.exact_key)
        self.cache.entries.keep_answer(key, response, self.tags, self.ttl, vector)

    def clear(self, **kwargs: Any) -> None:
        """Delete the LangChain entries of this cache's namespace; other entries and namespaces stay."""
        if kwargs:
            raise InvalidRequestError(f"clear() takes no options, got {', '.join(sorted(kwargs))}")
        self.cache.invalidate(namespace=self.namespace, tags=[TAG], yes=True)

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """:meth:`lookup` on the cache's worker threads."""
        return await offload(self.cache, self.lookup, prompt, llm_string)

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """:meth:`update` on the cache's worker threads."""
        await offload(self.cache, self.update, prompt, llm_string, return_val)

    async def aclear(self, **kwargs: Any) -> None:
        """:meth:`clear` on the cache's worker threads."""
        await offload(self.cache, functools.partial(self.clear, **kwargs))

    def close(self) -> None:
        """Close the cache if it was built here; a cache that was given stays open."""
        if self.owns_cache:
            self.cache.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _RecentVectors:
    """The request vectors of the latest misses by exact key, the oldest dropped beyond ``size``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: bytes, vector: np.ndarray) -> None:
        with self._lock:
            self._items[key] = vector
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, key: bytes) -> np.ndarray | None:
        with self._lock:
            return self._items.get(key)


# -- the request ------------------------------------------------------------------------------------------


class LLMDescription(NamedTuple):
    """What pgcache reads from an ``llm_string``."""

    label: str
    """The model's name in pgcache's rows and reports."""
    digest: str
    """The ``llm_string``'s SHA-256 in hex: the part of the keys that tells models and settings apart."""
    temperature: float | None
    """The sampling temperature, if the ``llm_string`` gives one."""


@functools.lru_cache(maxsize=256)
def describe_llm(llm_string: str) -> LLMDescription:
    """The model's name, the ``llm_string``'s hash and the temperature.

    A serialisable model's ``llm_string`` is its JSON, ``---``, then the call's
    parameters; any other model's is the repr of its sorted parameters. The
    call's parameters come first, as they override the model's own.
    """
    head, params = _split_llm_string(llm_string)
    kwargs = head.get("kwargs") if isinstance(head, dict) else None
    fields = kwargs if isinstance(kwargs, dict) else {}
    digest = hashlib.sha256(llm_string.encode("utf-8", "surrogatepass")).hexdigest()
    return LLMDescription(_model_label(params, fields), digest, _temperature(params, fields))


def model_label(llm_string: str) -> str:
    """The model name an ``llm_string`` gives (``model`` or ``model_name``), else ``"langchain"``."""
    return describe_llm(llm_string).label


def _model_label(params: str, fields: Mapping[str, Any]) -> str:
    found = {match.group(1): match.group(2) or match.group(3) for match in _MODEL_PARAM.finditer(params)}
    candidates = [found.get("model"), found.get("model_name"), fields.get("model"), fields.get("model_name")]
    for candidate in candidates:
        try:
            return check_name(candidate, "model")
        except ConfigurationError:
            continue
    return DEFAULT_LABEL


def _temperature(params: str, fields: Mapping[str, Any]) -> float | None:
    match = _TEMPERATURE_PARAM.search(params)
    if match:
        try:
            return float(match.group(1))
        except ValueError:
            return None
    value = fields.get("temperature")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _split_llm_string(llm_string: str) -> tuple[Any, str]:
    try:
        head, end = json.JSONDecoder().raw_decode(llm_string)
    except (ValueError, RecursionError):
        return None, llm_string
    if llm_string.startswith("---", end):
        return head, llm_string[end + 3 :]
    return None, llm_string


def openai_messages(prompt: str) -> list[dict[str, Any]] | None:
    """A chat model's serialised messages as OpenAI-shaped messages, or ``None`` if the prompt is not that.

    Every non-empty field of a message is kept except LangChain's ``type`` and
    ``id``, so that different prompts never become the same request.
    """
    try:
        items = json.loads(prompt)
    except (ValueError, RecursionError):
        return None
    if not isinstance(items, list) or not items:
        return None
    messages = []
    for item in items:
        message = _openai_message(item)
        if message is None:
            return None
        messages.append(message)
    return messages


def _openai_message(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict) or item.get("lc") != 1 or item.get("type") != "constructor":
        return None
    fields = item.get("kwargs")
    if not isinstance(fields, dict) or "content" not in fields:
        return None
    kind = fields.get("type")
    dropped = {"type", "id", "content"}
    if kind in _CHAT_TYPES:
        role, dropped = fields.get("role"), dropped | {"role"}
    else:
        role = _ROLE_OF_TYPE.get(kind) if isinstance(kind, str) else None
    content = _openai_content(fields["content"])
    if not isinstance(role, str) or role not in ROLES or content is None:
        return None
    message: dict[str, Any] = {"role": role, "content": content}
    message.update((name, value) for name, value in fields.items() if name not in dropped and not _empty(value))
    return message


def _openai_content(content: Any) -> str | list[dict[str, Any]] | None:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    parts = []
    for part in content:
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
        elif isinstance(part, dict) and isinstance(part.get("type"), str):
            parts.append(part)
        else:
            return None
    return parts


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, (str, list, dict)) and not value)


# -- the answer -------------------------------------------------------------------------------------------


def completion_from(generations: Sequence[Generation], model: str) -> dict[str, Any]:
    """LangChain's generations as the chat completion pgcache stores, the generations themselves inside.

    Streamed chunks are stored as the messages they add up to, so that a hit
    returns an ``AIMessage`` as a call without streaming would.
    """
    completion: dict[str, Any] = {
        "id": f"pgcache-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [_choice(index, generation) for index, generation in enumerate(generations)],
    }
    usage = _usage(generations[0])
    if usage is not None:
        completion["usage"] = usage
    completion[TAG] = {"generations": [_stored(generation) for generation in generations]}
    return completion


def _message_of(generation: Generation) -> BaseMessage | None:
    if not isinstance(generation, ChatGeneration):
        return None
    message = generation.message
    return message_chunk_to_message(message) if isinstance(message, BaseMessageChunk) else message


def _stored(generation: Generation) -> dict[str, Any]:
    message = _message_of(generation)
    if message is None:
        return {"text": generation.text, "generation_info": generation.generation_info}
    return {"message": message_to_dict(message), "generation_info": generation.generation_info}


def _choice(index: int, generation: Generation) -> dict[str, Any]:
    message = _message_of(generation)
    calls = message.tool_calls if isinstance(message, AIMessage) else []
    answer: dict[str, Any] = {"role": "assistant", "content": generation.text}
    if calls:
        answer["tool_calls"] = [
            {
                "id": call.get("id") or "",
                "type": "function",
                # A view for pgcache's reports: the exact arguments are in the stored generation.
                "function": {"name": call["name"], "arguments": json.dumps(call["args"], default=str)},
            }
            for call in calls
        ]
    reasons = [(generation.generation_info or {}).get("finish_reason")]
    if message is not None:
        reasons.append(message.response_metadata.get("finish_reason"))
    reason = next((r for r in reasons if r in _FINISH_REASONS), "tool_calls" if calls else "stop")
    return {"index": index, "message": answer, "finish_reason": reason}


def _usage(generation: Generation) -> dict[str, int] | None:
    message = _message_of(generation)
    metadata = message.usage_metadata if isinstance(message, AIMessage) else None
    if not metadata:
        return None
    prompt, completion = metadata.get("input_tokens"), metadata.get("output_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    total = metadata.get("total_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total if isinstance(total, int) else prompt + completion,
    }


def generations_from(response: Mapping[str, Any]) -> list[Generation]:
    """The generations a stored completion holds; text generations of its choices if it holds none."""
    stored = response.get(TAG)
    items = stored.get("generations") if isinstance(stored, Mapping) else None
    if isinstance(items, list) and items:
        try:
            return [_generation(item) for item in items]
        except (KeyError, TypeError, ValueError) as exc:
            _log.warning("pgcache: stored LangChain generations unreadable (%s); serving the text", exc)
    # An entry stored without LangChain (cache.store, pgcache warm): LangChain turns text into an AIMessage.
    return [Generation(text=_text(choice)) for choice in response["choices"]]


def _generation(item: Any) -> Generation:
    if not isinstance(item, Mapping):
        raise TypeError(f"a stored generation is a {type(item).__name__}")
    info = item.get("generation_info")
    if "message" in item:
        (message,) = messages_from_dict([item["message"]])
        return ChatGeneration(message=message, generation_info=info)
    return Generation(text=item["text"], generation_info=info)


def _text(choice: Any) -> str:
    message = choice.get("message") if isinstance(choice, Mapping) else None
    content = message.get("content") if isinstance(message, Mapping) else None
    return content if isinstance(content, str) else ""
