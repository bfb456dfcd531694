"""A local OpenAI-compatible embedding server for write-path benchmarks, in a process of its own.

It stands in for an embedding model served on the same machine (text-embeddings-inference,
Ollama, vLLM) whose model time is not what is measured: each text gets a distinct 1536-d unit
vector made from a hash of the text and a fixed pool of random directions, in a few microseconds,
so that a warm's rate shows pgcache's own costs (keys, JSON, HTTP, decoding, COPY) rather than a
model's. Only ``POST /v1/embeddings`` with ``encoding_format=base64`` (what pgcache asks for).
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

DIMENSIONS = 1536
POOL = 4096


class _Vectors:
    def __init__(self) -> None:
        pool = np.random.default_rng(2026).standard_normal((POOL, DIMENSIONS)).astype(np.float32)
        self.pool = pool / np.linalg.norm(pool, axis=1, keepdims=True)

    def encode(self, texts: list[str]) -> list[str]:
        picks = (
            np.array(
                [
                    np.frombuffer(hashlib.blake2b(t.encode("utf-8", "replace"), digest_size=8).digest(), "<u2")
                    for t in texts
                ]
            ).astype(np.int64)
            % POOL
        )
        # Four directions with hash-chosen weights: distinct texts get distinct vectors.
        weights = 1.0 + picks[:, 2:3].astype(np.float32) / POOL
        vectors = self.pool[picks[:, 0]] + weights * self.pool[picks[:, 1]] + 0.5 * self.pool[picks[:, 3]]
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        raw = vectors.astype("<f4").tobytes()
        width = DIMENSIONS * 4
        return [base64.b64encode(raw[i * width : (i + 1) * width]).decode("ascii") for i in range(len(texts))]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    vectors: _Vectors

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not self.path.endswith("/embeddings") or not isinstance(texts, list):
            self._send(404, {"error": {"message": f"no route {self.path} or no input"}})
            return
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(self.vectors.encode(texts))]
        tokens = sum(len(t.split()) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        self._send(200, {"object": "list", "data": data, "model": body.get("model"), "usage": usage})

    def _send(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve() -> None:
    """Serve on a free port of 127.0.0.1; print the base URL; stop when stdin closes."""
    _Handler.vectors = _Vectors()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    sys.stdin.read()
    server.shutdown()


@contextmanager
def embedding_server() -> Iterator[str]:
    """The server in a process of its own; yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.embedding_server"],
        cwd=Path(__file__).resolve().parents[1],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    serve()
