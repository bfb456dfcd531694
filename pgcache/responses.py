"""Chat completion responses as the cache stores them: plain JSON dicts."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from .errors import InvalidRequestError

# A JSON \u0000 escape, not preceded by an escaped backslash.
_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# Largest token count an integer column holds.
_MAX_COUNT = 2**31 - 1


def completion_dict(response: Any, model: str) -> dict[str, Any]:
    """A chat completion dict from answer text, a dict, or an SDK ``ChatCompletion``.

    Answer text becomes a one-choice completion of ``model``. Anything else must
    carry at least one choice with a message, or nothing could be served later.
    """
    if isinstance(response, str):
        return {
            "id": f"pgcache-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": response}, "finish_reason": "stop"}],
        }
    if hasattr(response, "model_dump"):
        response = response.model_dump(mode="json", exclude_unset=True)
    if not isinstance(response, Mapping):
        raise InvalidRequestError(
            f"response must be answer text, a dict or a ChatCompletion, got {type(response).__name__}"
        )
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices:
        raise InvalidRequestError("response has no choices; nothing was stored")
    for index, choice in enumerate(choices):
        if not isinstance(choice, Mapping) or not isinstance(choice.get("message"), Mapping):
            raise InvalidRequestError(f"response choices[{index}] has no message; nothing was stored")
    return dict(response)


def content_of(response: Mapping[str, Any]) -> str:
    """Text of the first choice ('' for a tool-call-only answer)."""
    content = response["choices"][0]["message"].get("content")
    return content if isinstance(content, str) else ""


def answer_text(response: Mapping[str, Any]) -> str:
    """What the model wrote in its first choice: the text, and the names and arguments of any tool calls."""
    message = response["choices"][0]["message"]
    parts = [content_of(response)]
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            parts.extend(str(function.get(name) or "") for name in ("name", "arguments"))
    return "\n".join(part for part in parts if part)


def lacks_usage(response: Mapping[str, Any]) -> bool:
    """Whether the response came without the API's ``usage`` (so that its token counts are estimated)."""
    return not isinstance(response.get("usage"), Mapping)


def usage_of(response: Mapping[str, Any]) -> tuple[int | None, int | None, int | None]:
    usage = response.get("usage")
    if not isinstance(usage, Mapping):
        return None, None, None

    def count(name: str) -> int | None:
        value = usage.get(name)
        # Only counts the integer columns can hold; anything else stays in the stored response alone.
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_COUNT:
            return value
        return None

    return count("prompt_tokens"), count("completion_tokens"), count("total_tokens")


def storable_json(value: Any, what: str) -> str:
    """JSON text that PostgreSQL's jsonb accepts, or :class:`InvalidRequestError` naming ``what``."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"{what} is not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise InvalidRequestError(f"{what} is not JSON-serialisable: nested too deeply") from None
    check_text(text, what)
    return text


def check_text(text: str, what: str) -> None:
    """Refuse text that PostgreSQL cannot store: NUL characters and invalid Unicode."""
    if "\x00" in text or _JSON_NUL.search(text):
        raise InvalidRequestError(f"{what} contains a NUL character, which PostgreSQL cannot store")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{what} contains invalid Unicode (a lone surrogate)") from None
