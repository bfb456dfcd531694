"""What is stored of a request when prompts must stay out of the database (``store_prompts=False``).

Every message keeps its role (and the identifiers that tie tool calls to their
results); everything it says is replaced by the SHA-256 hex digest of that
text. Model and parameters are kept, so entries can still be told apart and
filtered. A digest hides a prompt but does not encrypt it: whoever can guess a
prompt word for word can confirm the guess.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from .keys import canonical_json

# Message fields that identify rather than say something.
_KEPT = frozenset({"role", "tool_call_id"})
_KEPT_IN_CALLS = frozenset({"id", "type"})


def digest(value: Any) -> str:
    """SHA-256 hex of a text (its UTF-8 bytes) or of any other JSON value (its canonical JSON)."""
    text = value if isinstance(value, str) else canonical_json(value)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def redact_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """The canonical request with every message's contents replaced by their digests."""
    redacted = dict(request)
    redacted["messages"] = [_redact_message(message) for message in request["messages"]]
    return redacted


def _redact_message(message: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in message.items():
        if name in _KEPT:
            out[name] = value
        elif name == "tool_calls" and isinstance(value, list):
            out[name] = [_redact_call(call) for call in value]
        elif name == "function_call" and isinstance(value, Mapping):
            out[name] = _redact_function(value)
        else:
            out[name] = digest(value)
    return out


def _redact_call(call: Any) -> Any:
    if not isinstance(call, Mapping):
        return digest(call)
    out = {
        name: value if name in _KEPT_IN_CALLS else digest(value) for name, value in call.items() if name != "function"
    }
    if isinstance(call.get("function"), Mapping):
        out["function"] = _redact_function(call["function"])
    elif "function" in call:
        out["function"] = digest(call["function"])
    return out


def _redact_function(function: Mapping[str, Any]) -> dict[str, Any]:
    # The function's name is the application's vocabulary; its arguments carry the user's data.
    return {name: value if name == "name" else digest(value) for name, value in function.items()}
