"""Between chat completions and streams of chunks, both ways.

A live stream is accumulated into the completion it amounts to (content,
refusals, tool calls and function calls joined per choice, finish reasons,
usage, system fingerprint), so that it can be stored; a stored completion is
replayed as chunks.
"""

from __future__ import annotations

from typing import Any


class ChunkAccumulator:
    """Builds a ``chat.completion`` dict from ``ChatCompletionChunk`` objects."""

    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}
        self.usage: dict[str, Any] | None = None
        self.choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: Any) -> None:
        data = chunk.model_dump(mode="json", exclude_none=True) if hasattr(chunk, "model_dump") else dict(chunk)
        for name in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if name in data and name not in self.meta:
                self.meta[name] = data[name]
        if data.get("usage"):
            self.usage = data["usage"]
        for choice in data.get("choices", []):
            state = self.choices.setdefault(choice["index"], {"message": {}, "finish_reason": None})
            message = state["message"]
            delta = choice.get("delta") or {}
            if "role" in delta:
                message["role"] = delta["role"]
            for text_field in ("content", "refusal"):
                if delta.get(text_field) is not None:
                    message[text_field] = message.get(text_field, "") + delta[text_field]
            for call in delta.get("tool_calls") or []:
                calls = message.setdefault("tool_calls", {})
                slot = calls.setdefault(call.get("index", len(calls)), {"function": {"name": "", "arguments": ""}})
                for key in ("id", "type"):
                    if call.get(key):
                        slot[key] = call[key]
                function = call.get("function") or {}
                slot["function"]["name"] += function.get("name") or ""
                slot["function"]["arguments"] += function.get("arguments") or ""
            if delta.get("function_call"):
                function_call = message.setdefault("function_call", {"name": "", "arguments": ""})
                function_call["name"] += delta["function_call"].get("name") or ""
                function_call["arguments"] += delta["function_call"].get("arguments") or ""
            if choice.get("finish_reason"):
                state["finish_reason"] = choice["finish_reason"]

    @property
    def complete(self) -> bool:
        """Every choice ended with a finish reason: the stream was not cut short."""
        return bool(self.choices) and all(state["finish_reason"] for state in self.choices.values())

    def completion(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self.choices):
            state = self.choices[index]
            message = {"role": "assistant", "content": None, **state["message"]}
            if not message["content"] and ("tool_calls" in message or "function_call" in message):
                message["content"] = None  # a call, not an empty answer: as the non-streaming API says it
            if "tool_calls" in message:
                message["tool_calls"] = [message["tool_calls"][i] for i in sorted(message["tool_calls"])]
            choices.append({"index": index, "message": message, "finish_reason": state["finish_reason"]})
        completion = {**self.meta, "object": "chat.completion", "choices": choices}
        if self.usage is not None:
            completion["usage"] = self.usage
        return completion


def replay_chunks(response: dict[str, Any], include_usage: bool = False) -> list[Any]:
    """``ChatCompletionChunk`` objects that replay a stored completion."""
    from openai.types.chat import ChatCompletionChunk

    base = {
        "id": response.get("id", "pgcache"),
        "object": "chat.completion.chunk",
        "created": response.get("created", 0),
        "model": response.get("model", ""),
    }
    if response.get("system_fingerprint"):
        base["system_fingerprint"] = response["system_fingerprint"]
    chunks = []
    for choice in response["choices"]:
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant")}
        for name in ("content", "refusal", "function_call"):
            if message.get(name) is not None:
                delta[name] = message[name]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        index = choice.get("index", 0)
        chunks.append({**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
        chunks.append(
            {**base, "choices": [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}]}
        )
    if include_usage and response.get("usage"):
        chunks.append({**base, "choices": [], "usage": response["usage"]})
    return [ChatCompletionChunk.model_validate(chunk) for chunk in chunks]
