"""Canonical requests and the two cache keys derived from them.

* ``exact_key`` — SHA-256 of the canonical JSON of namespace, model, every
  message and every parameter that can change the output. Two requests share it
  exactly when the LLM would be asked the same thing.
* ``scope_key`` — the same hash without the final user message's text. A
  semantic hit is only ever looked for among entries of the same scope, so it
  never crosses namespace, model, system prompt, earlier turns, tools,
  parameters or the final message's participant ``name``.

Canonical JSON sorts keys, drops ``None`` values and writes integral floats as
integers (``temperature=1.0`` and ``temperature=1`` are the same request).
Client settings (timeouts, headers, API keys, ``stream``) never enter a key or
the stored request.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequestError
from .validation import check_name

KEY_VERSION = 1

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# Keyword arguments of ``chat.completions.create`` that change how a request is
# sent or billed, not what the model answers.
CLIENT_PARAMS = frozenset(
    {
        "stream",
        "stream_options",
        "timeout",
        "extra_headers",
        "extra_query",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "metadata",
        "store",
        "service_tier",
        "api_key",
        "organization",
        "project",
        "base_url",
        "max_retries",
        "default_headers",
        "default_query",
        "http_client",
        "idempotency_key",
    }
)


@dataclass(frozen=True, slots=True)
class RequestKey:
    """Everything the cache derives from one request."""

    exact_key: bytes
    scope_key: bytes
    prompt: str | None
    """Text of the final user message (without NUL characters); ``None`` when the request
    cannot be matched semantically (last message not from the user, or not plain text)."""
    request: dict[str, Any]
    """The canonical request as stored: model, messages and output parameters."""
    model: str
    namespace: str


def normalize_messages(prompt_or_messages: str | Sequence[Any]) -> list[dict[str, Any]]:
    """Return the chat messages for a prompt string or a list of messages.

    Messages may be dicts or SDK objects with ``model_dump()``. Raises
    :class:`InvalidRequestError` naming the first message that is malformed.
    """
    if isinstance(prompt_or_messages, str):
        return [{"role": "user", "content": prompt_or_messages}]
    if isinstance(prompt_or_messages, (bytes, Mapping)) or not isinstance(prompt_or_messages, Sequence):
        raise InvalidRequestError(
            f"messages must be a prompt string or a list of messages, got {type(prompt_or_messages).__name__}"
        )
    if not prompt_or_messages:
        raise InvalidRequestError("messages must not be empty")
    messages = []
    for index, message in enumerate(prompt_or_messages):
        if hasattr(message, "model_dump"):
            message = message.model_dump(exclude_none=True)
        if not isinstance(message, Mapping):
            raise InvalidRequestError(f"messages[{index}] must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequestError(
                f"messages[{index}] has role {role!r}; expected one of {', '.join(sorted(ROLES))}"
            )
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequestError(
                f"messages[{index}].content must be a string or a list of content parts, got {type(content).__name__}"
            )
        for position, part in enumerate(content if isinstance(content, list) else ()):
            if hasattr(part, "model_dump"):
                part = part.model_dump(exclude_none=True)
            if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
                got = "a dict without a type" if isinstance(part, Mapping) else type(part).__name__
                raise InvalidRequestError(
                    f"messages[{index}].content[{position}] must be a content part (a dict with a type), got {got}"
                )
        messages.append({k: v for k, v in message.items() if v is not None})
    return messages


def final_user_text(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """Text of the last message if it is a user message made only of text."""
    last = messages[-1]
    if last.get("role") != "user":
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        parts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                return None
            parts.append(part["text"])
        return "\n".join(parts)
    return None


def output_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters that can change the answer: all but client settings and ``None``."""
    return {k: v for k, v in params.items() if k not in CLIENT_PARAMS and v is not None}


def canonical_json(value: Any) -> str:
    """Deterministic compact JSON: sorted keys, no ``None`` in dicts, integral floats as ints."""
    try:
        return _dump(_canonical(value))
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"request is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise InvalidRequestError("request is not JSON-serialisable: nested too deeply (or refers to itself)") from None


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if hasattr(value, "model_dump"):
        return _canonical(value.model_dump(exclude_none=True))
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _dump(canonical: Any) -> str:
    """JSON of a value already passed through :func:`_canonical`."""
    return json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _digest(payload: Mapping[str, Any]) -> bytes:
    # Only called with parts of a request already passed through _canonical: dumped as they are.
    try:
        data = _dump(payload).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError("request contains invalid Unicode (a lone surrogate)") from None
    except ValueError as exc:  # a NaN or infinite float
        raise InvalidRequestError(f"request is not JSON-serialisable: {exc}") from None
    return hashlib.sha256(data).digest()


def request_key(
    prompt_or_messages: str | Sequence[Any], *, model: str, namespace: str, params: Mapping[str, Any] | None = None
) -> RequestKey:
    """Derive the exact key, scope key, prompt and stored request for one request."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError(f"model must be a non-empty string, got {model!r}")
    if not isinstance(namespace, str) or not namespace:
        raise InvalidRequestError(f"namespace must be a non-empty string, got {namespace!r}")
    messages = normalize_messages(prompt_or_messages)
    kept = output_params(params or {})
    request: dict[str, Any] = {"model": model, "messages": messages}
    if kept:
        request["params"] = kept
    try:
        request = _canonical(request)
    except TypeError as exc:
        raise InvalidRequestError(f"request is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise InvalidRequestError("request is not JSON-serialisable: nested too deeply (or refers to itself)") from None
    exact = _digest({"v": KEY_VERSION, "namespace": namespace, **request})
    scope_payload = {
        "v": KEY_VERSION,
        "namespace": namespace,
        "model": model,
        "context": request["messages"][:-1],
        "params": request.get("params", {}),
    }
    # The final message's text is what the semantic tier compares; anything else on it (a
    # participant ``name``) says who asks, so it belongs to the scope. Only added when present,
    # so that the scope keys of ordinary requests stay as they were.
    final_fields = {k: v for k, v in request["messages"][-1].items() if k not in ("role", "content")}
    if final_fields:
        scope_payload["final"] = final_fields
    scope = _digest(scope_payload)
    prompt = final_user_text(messages)
    if prompt is not None and "\x00" in prompt:
        # PostgreSQL text cannot hold NUL: the text that is embedded and logged goes without it,
        # while the request itself keeps it (so storing it is refused, with a message saying why).
        prompt = prompt.replace("\x00", "")
    return RequestKey(
        exact_key=exact, scope_key=scope, prompt=prompt, request=request, model=model, namespace=namespace
    )


@dataclass(frozen=True)
class RequestKeys:
    """Keys of requests, with a cache's default model and namespace filled in where a call names none."""

    model: str
    namespace: str

    def key(
        self,
        prompt_or_messages: str | Sequence[Any],
        model: str | None = None,
        namespace: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> RequestKey:
        return request_key(
            prompt_or_messages,
            model=self.model if model is None else check_name(model, "model"),
            namespace=self.namespace if namespace is None else check_name(namespace, "namespace"),
            params=params,
        )
