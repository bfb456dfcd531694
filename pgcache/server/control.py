"""What a proxied chat completion asks of the cache: the request's parts and its cache options.

Per request, in the conventions HTTP clients know:

* ``Cache-Control: no-cache`` looks nothing up and refreshes the entry,
  ``no-store`` keeps the answer out, ``max-age=N`` stores it for N seconds;
* ``X-Pgcache-Namespace`` and ``X-Pgcache-Threshold``;
* or a ``pgcache`` object in the JSON body with the keys of
  :class:`~pgcache.options.CallOptions` (``ttl``, ``tags``, ``namespace``,
  ``threshold``, ``bypass``, ``no_store``). Where both say something, the
  body wins. The object is removed before the request goes upstream.

With a tenant secret, the namespace is suffixed with a keyed hash of the
caller's API key, so callers with different keys never share entries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import PgcacheError
from ..options import CallOptions


class BadRequest(Exception):
    """A request the server refuses with 400, in OpenAI's error shape."""

    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


@dataclass
class ChatRequest:
    """A chat completion request, split for the cache."""

    messages: list[Any]
    model: str
    stream: bool
    params: dict[str, Any]
    """Every other field of the body: they are part of the cache key."""
    options: CallOptions
    upstream_body: bytes
    """The body as it goes upstream (without the ``pgcache`` object)."""

    @property
    def include_usage(self) -> bool:
        return bool((self.params.get("stream_options") or {}).get("include_usage"))


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request's JSON object, or :class:`BadRequest` saying what is wrong with it."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def chat_request(raw: bytes, headers: Mapping[str, str], base_namespace: str, tenant_secret: str | None) -> ChatRequest:
    """Split a ``/v1/chat/completions`` body and its headers into what the cache needs."""
    body = parse_body(raw)
    messages, model = body.get("messages"), body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("'model' is required and must be a non-empty string", "model")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' is required and must be a non-empty array", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{index}] must be an object with a string 'role'", f"messages[{index}]")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(f"'stream' must be true or false, got {stream!r}", "stream")
    given = body.pop("pgcache", None)
    if given is not None and not isinstance(given, dict):
        raise BadRequest("'pgcache' must be an object", "pgcache")
    options = header_options(headers) | (given or {})
    namespace = options.get("namespace") or base_namespace
    if tenant_secret is not None:
        options["namespace"] = f"{namespace}/{tenant(headers, tenant_secret)}"
    try:
        call_options = CallOptions.build(options)
    except PgcacheError as exc:
        raise BadRequest(str(exc), "pgcache") from None
    params = {k: v for k, v in body.items() if k not in ("messages", "model", "stream")}
    upstream_body = raw if given is None else json.dumps(body).encode()
    return ChatRequest(messages, model, stream, params, call_options, upstream_body)


def header_options(headers: Mapping[str, str]) -> dict[str, Any]:
    """Cache options from ``Cache-Control`` and ``X-Pgcache-*`` headers."""
    options: dict[str, Any] = {}
    for directive in (headers.get("cache-control") or "").split(","):
        name, _, value = directive.strip().partition("=")
        name = name.strip().lower()
        if name == "no-cache":
            options["bypass"] = True
        elif name == "no-store":
            options["no_store"] = True
        elif name == "max-age":
            if not value.strip().isdigit():
                raise BadRequest(f"Cache-Control max-age must be a whole number of seconds, got {value!r}")
            options["ttl"] = int(value)
    if headers.get("x-pgcache-namespace"):
        options["namespace"] = headers["x-pgcache-namespace"]
    if headers.get("x-pgcache-threshold"):
        try:
            options["threshold"] = float(headers["x-pgcache-threshold"])
        except ValueError:
            raise BadRequest(f"X-Pgcache-Threshold must be a number, got {headers['x-pgcache-threshold']!r}") from None
    return options


def tenant(headers: Mapping[str, str], secret: str) -> str:
    """A keyed hash of the caller's API key: the same key always gives the same tenant, and no key reveals another."""
    key = (headers.get("authorization") or "").removeprefix("Bearer ").strip()
    if not key:
        raise BadRequest("an Authorization header with an API key is required", status=401)
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()[:24]


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict[str, Any]:
    """An error in the shape of OpenAI's API, which every OpenAI SDK understands."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}
