"""``pgcache serve`` as users run it: the command with two workers, and a database outage under load."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import openai
import pytest

from pgcache import Cache
from pgcache.embedders import OpenAIEmbedder
from pgcache.server.app import create_app
from pgcache.server.settings import ServerSettings

from .conftest import TEST_API_KEY
from .test_outages import database, pg, wait_for  # noqa: F401 (fixtures)
from .test_server import Running

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def test_the_serve_command_with_two_workers(database_url, fake):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGCACHE_", "OPENAI_", "PROMETHEUS_"))}
    env |= {"PGCACHE_DATABASE_URL": database_url, "PGCACHE_EMBEDDER": "openai", "OPENAI_API_KEY": TEST_API_KEY}
    command = [
        sys.executable,
        "-m",
        "pgcache.cli",
        "serve",
        "--port",
        str(port),
        "--upstream",
        fake.base_url,
        "--workers",
        "2",
    ]
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(base + "/healthz")[0] == 200, "the server to answer", process=process)
        client = openai.OpenAI(base_url=base + "/v1", api_key=TEST_API_KEY, max_retries=0)
        statuses = []
        for _ in range(12):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "What is a buffer overflow?"}]
            )
            statuses.append(raw.headers["x-pgcache-status"])
        page = "".join(get(base + "/metrics")[1].decode() for _ in range(4))
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert statuses == ["miss"] + ["exact"] * 11 and fake.calls["chat"] == 1
    # Whichever worker answers a scrape, it reports both workers' requests.
    exact = [
        line
        for line in page.splitlines()
        if line.startswith('pgcache_requests_total{namespace="default",outcome="exact"}')
    ]
    assert exact and all(float(line.split()[-1]) == 11.0 for line in exact), exact
    assert f"http://127.0.0.1:{port}/v1 in front of {fake.base_url}" in out and "2 workers" in out
    assert TEST_API_KEY not in out + err
    assert process.returncode == 0, err


def test_a_database_outage_under_load_is_served_from_upstream(pg, database, fake, llm):  # noqa: F811
    cache = Cache(database, embedder=OpenAIEmbedder(client=llm), llm=llm, environ={})
    app = create_app(cache, ServerSettings.resolve({"upstream_url": fake.base_url}, {}), environ={})
    running = Running(app).start()
    phase, results, stop = ["before"], [], threading.Event()

    def work(worker: int) -> None:
        for n in range(3000):
            if stop.is_set():
                return
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {worker}-{n % 4}"}]}
            began = phase[0]
            status, headers, _ = running.request("POST", "/v1/chat/completions", body)
            # A call that saw the database go down or come back belongs to neither state.
            filed = began if phase[0] == began else "transition"
            results.append((filed, status, headers.get("x-pgcache-status")))

    def count(name: str, outcome: str | None = None) -> int:
        return sum(1 for p, _, o in list(results) if p == name and outcome in (None, o))

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: count("before", "exact") >= 10, "exact hits before the outage")
        phase[0] = "crashing"
        pg.crash()
        phase[0] = "down"
        wait_for(lambda: count("down") >= 30, "requests during the outage")
        health = json.loads(running.request("GET", "/healthz")[2])
        phase[0] = "restarting"
        pg.restart()
        phase[0] = "after"
        wait_for(lambda: count("after", "exact") >= 10, "exact hits after the restart")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        running.stop()
    assert [r for r in results if r[1] != 200] == [], "every request is answered, from the upstream when need be"
    assert health["status"] == "degraded" and health["database"].startswith("unreachable")
    assert count("down", "exact") + count("down", "semantic") == 0
