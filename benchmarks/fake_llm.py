"""The test suite's fake OpenAI-compatible server on 127.0.0.1, for scenarios that need an LLM."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from tests.fake_openai import FakeOpenAI


@contextmanager
def fake_llm() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI().start()
    server.reset()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def fake_llm_process(chat_delay: float = 0.0) -> Iterator[str]:
    """The fake server in a process of its own (as a real API would be); yields its base URL.

    ``chat_delay``: seconds each chat completion takes. ``upstream_calls(base_url)`` reads its counters.
    """
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from tests.fake_openai import FakeOpenAI; "
        "s = FakeOpenAI().start(); s.reset(); s.chat_delay = float(sys.argv[2]); print(s.base_url, flush=True); "
        "sys.stdin.read()"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, repo, str(chat_delay)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        yield process.stdout.readline().strip()
    finally:
        process.stdin.close()
        process.terminate()
        process.wait(timeout=10)


def upstream_calls(base_url: str) -> dict[str, int]:
    """The call counters of a fake server started by :func:`fake_llm_process`."""
    import json
    import urllib.request

    root = base_url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(root + "/calls", timeout=5) as answer:
        return json.load(answer)
