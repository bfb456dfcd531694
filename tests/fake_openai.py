"""A fake OpenAI-compatible HTTP server on 127.0.0.1 for tests.

It serves ``/v1/chat/completions`` and ``/v1/embeddings`` well enough for the
real ``openai`` SDK, counts every call, and makes embeddings whose geometry
tests can control: texts that mention the same topic phrase land close
together (cosine similarity about 0.96), all other texts are nearly orthogonal.
A topic is a lower-case phrase, or a compiled regular expression whose match is
the topic (``re.compile("feature [0-9]+")`` keeps "feature 1" and "feature 10"
apart); either is looked for in the lower-cased text.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import numpy as np

DEFAULT_TOPICS = ("buffer overflow", "sql injection")


@functools.lru_cache(maxsize=256)
def _unit(seed_text: str, dimensions: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(seed_text.encode("utf-8", "surrogatepass")).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimensions)
    vector /= np.linalg.norm(vector)
    vector.flags.writeable = False  # shared by the cache
    return vector


def fake_vector(text: str, topics=DEFAULT_TOPICS, dimensions: int = 1536, noise: float = 0.2) -> np.ndarray:
    """Unit vector for ``text``: its topic's direction plus text-specific noise of norm ``noise``."""
    topic = _topic(text.lower(), topics)
    if topic is None:
        return _unit("text:" + text, dimensions)
    vector = _unit("topic:" + topic, dimensions) + noise * _unit("text:" + text, dimensions)
    return vector / np.linalg.norm(vector)


def _topic(lowered: str, topics) -> str | None:
    for topic in topics:
        if isinstance(topic, re.Pattern):
            if match := topic.search(lowered):
                return match.group(0)
        elif topic in lowered:
            return topic
    return None


def fake_embedding(text: str, topics=DEFAULT_TOPICS, dimensions: int = 1536, noise: float = 0.2) -> list[float]:
    """:func:`fake_vector` as the list of floats the API returns by default."""
    return fake_vector(text, topics, dimensions, noise).tolist()


class FakeOpenAI:
    """The server and its counters; ``base_url`` is what an ``openai.OpenAI`` client needs."""

    def __init__(self, record: bool = True) -> None:
        self.topics = list(DEFAULT_TOPICS)
        self.record = record  # keep every request's body, headers and texts; a long soak would only grow
        self.lock = threading.Lock()
        self.reset()
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-openai", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/v1"

    def start(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def reset(self) -> None:
        with self.lock:
            self.calls = {"chat": 0, "embeddings": 0}
            self.embedded_texts: list[str] = []
            self.embedding_requests: list[dict] = []  # each request's parameters, without its input
            self.chat_requests: list[dict] = []
            self.headers: list[dict] = []
            self.fail_chat = None  # an HTTP status to answer chat calls with
            self.chat_delay = 0.0  # seconds each chat call takes
            self.break_stream_after = None  # drop the connection after this many streamed chunks
            self.stream_delay = 0.0  # seconds between streamed chunks
            self.judge_answer = "yes"  # what the judge says; an int: fail with that status; a function of (a, b)
            self.judge_calls = 0
            # Embedding models by name: (width, what a `dimensions` parameter gets: "shortens", "ignored" or
            # "refused" with a 400). Any other name answers 1536 wide and shortens.
            self.embedding_models: dict[str, tuple[int, str]] = {}

    def chat(self, body: dict) -> tuple[int, dict]:
        if "cached answer may be reused" in str(body["messages"][0].get("content")):
            return self.judge(body)
        with self.lock:
            self.calls["chat"] += 1
            number = self.calls["chat"]
            if self.record:
                self.chat_requests.append(body)
            fail, delay = self.fail_chat, self.chat_delay
        if delay:
            time.sleep(delay)
        if fail:
            return fail, {"error": {"message": "upstream failure", "type": "server_error", "code": None}}
        last = body["messages"][-1].get("content")
        choices = []
        for index in range(body.get("n") or 1):
            content = f"answer #{number} to: {last}" + (f" (choice {index})" if index else "")
            message = {"role": "assistant", "content": content, "refusal": None}
            finish = "stop"
            if (body.get("response_format") or {}).get("type") in ("json_object", "json_schema"):
                message["content"] = json.dumps({"answer": content, "number": number})
            if body.get("tools") and body.get("tool_choice") != "none":
                tool = body["tools"][0]["function"]["name"]
                message["content"] = None
                message["tool_calls"] = [
                    {
                        "id": f"call_{number}_{index}",
                        "type": "function",
                        "function": {"name": tool, "arguments": json.dumps({"q": last})},
                    }
                ]
                finish = "tool_calls"
            choices.append({"index": index, "message": message, "logprobs": None, "finish_reason": finish})
        words = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        produced = sum(len(str(c["message"]["content"] or "").split()) + 1 for c in choices)
        return 200, {
            "id": f"chatcmpl-fake-{number}",
            "object": "chat.completion",
            "created": 1_700_000_000 + number,
            "model": body["model"],
            "system_fingerprint": "fp_fake",
            "choices": choices,
            "usage": {"prompt_tokens": words, "completion_tokens": produced, "total_tokens": words + produced},
        }

    def judge(self, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.judge_calls += 1
            answer = self.judge_answer
        if isinstance(answer, int):
            return answer, {"error": {"message": "judge down", "type": "server_error", "code": None}}
        if callable(answer):  # answers from labels: called with the two requests
            found = re.search(r"Request A: (.*)\nRequest B: (.*)", body["messages"][-1]["content"], re.S)
            answer = answer(found.group(1), found.group(2)) if found else "no"
        return 200, {
            "id": "chatcmpl-judge",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 60, "completion_tokens": 1, "total_tokens": 61},
        }

    def stream_events(self, completion: dict, include_usage: bool) -> list[dict]:
        """The chunks a real server would stream for ``completion``: role, words, tool calls, finish."""
        base = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint")}
        base["object"] = "chat.completion.chunk"
        events = []
        for choice in completion["choices"]:
            index, message = choice["index"], choice["message"]
            first = "" if message["content"] is not None else None  # as OpenAI: "" before text, null before tool calls
            events.append({**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": first}}]})
            for piece in re.split(r"(?<= )", message["content"] or ""):
                if piece:
                    events.append({**base, "choices": [{"index": index, "delta": {"content": piece}}]})
            for position, call in enumerate(message.get("tool_calls") or []):
                arguments = call["function"]["arguments"]
                events.append(
                    {
                        **base,
                        "choices": [
                            {
                                "index": index,
                                "delta": {
                                    "tool_calls": [
                                        {
                                            "index": position,
                                            "id": call["id"],
                                            "type": "function",
                                            "function": {"name": call["function"]["name"], "arguments": arguments[:5]},
                                        }
                                    ]
                                },
                            }
                        ],
                    }
                )
                events.append(
                    {
                        **base,
                        "choices": [
                            {
                                "index": index,
                                "delta": {
                                    "tool_calls": [{"index": position, "function": {"arguments": arguments[5:]}}]
                                },
                            }
                        ],
                    }
                )
            events.append(
                {**base, "choices": [{"index": index, "delta": {}, "finish_reason": choice["finish_reason"]}]}
            )
        if include_usage:
            events.append({**base, "choices": [], "usage": completion["usage"]})
        return events

    def embeddings(self, body: dict) -> tuple[int, dict]:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        with self.lock:
            self.calls["embeddings"] += 1
            if self.record:
                self.embedded_texts.extend(texts)
                self.embedding_requests.append({k: v for k, v in body.items() if k != "input"})
            topics = tuple(self.topics)
            width, shortening = self.embedding_models.get(body["model"], (1536, "shortens"))
        dimensions = width
        if body.get("dimensions"):
            if shortening == "refused":
                message = f"model {body['model']} does not support the dimensions parameter"
                return 400, {"error": {"message": message, "type": "invalid_request_error", "code": None}}
            if shortening == "shortens":
                dimensions = body["dimensions"]
        arrays = [fake_vector(t, topics, dimensions) for t in texts]
        if body.get("encoding_format") == "base64":  # what the SDK asks for unless told otherwise
            vectors = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in arrays]
        else:
            vectors = [v.tolist() for v in arrays]
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        tokens = sum(len(t.split()) for t in texts)
        return 200, {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAI
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle's algorithm holds the body
        # back until the client's delayed ACK (about 40 ms), which would dwarf what is measured.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.fake.record:
            with self.fake.lock:
                self.fake.headers.append(dict(self.headers))
        if self.path.endswith("/chat/completions"):
            status, payload = self.fake.chat(body)
            if status == 200 and body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                self._stream(self.fake.stream_events(payload, include_usage))
                return
        elif self.path.endswith("/embeddings"):
            status, payload = self.fake.embeddings(body)
        else:
            status, payload = 404, {"error": {"message": f"no route {self.path}"}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        with self.fake.lock:
            data = json.dumps(self.fake.calls if self.path == "/calls" else {}).encode()
        self.send_response(200 if self.path == "/calls" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, events: list[dict]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        limit = self.fake.break_stream_after
        for number, event in enumerate(events):
            if limit is not None and number >= limit:
                self.close_connection = True
                self.wfile.flush()
                self.connection.shutdown(2)  # mid-stream: no [DONE], no final chunk
                return
            if number and self.fake.stream_delay:
                time.sleep(self.fake.stream_delay)
            try:
                self._chunk(f"data: {json.dumps(event)}\n\n".encode())
            except (BrokenPipeError, ConnectionResetError):
                return  # the client went away
        self._chunk(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def log_message(self, format: str, *args) -> None:
        pass
