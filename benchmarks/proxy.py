"""``pgcache serve``: what the proxy adds to a hit, and its throughput under 50 concurrent clients.

1. Overhead: the same exact and semantic hits asked of the library in process (``Cache.chat``)
   and of ``pgcache serve`` (one worker) over one keep-alive HTTP connection on loopback.
2. Throughput: ``pgcache serve --workers 2`` and 50 concurrent keep-alive clients (asyncio, one
   process), bounded in time: hits only, then 20% misses against a fake upstream that answers in
   200 ms, where pairs of clients ask each new question at about the same time (single-flight:
   one upstream call per new question).

The fake OpenAI server runs in its own process; embeddings come from it, as they would from an API.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai

from pgcache import Cache
from pgcache.embedders import OpenAIEmbedder

from .context import Context
from .fake_llm import fake_llm_process, upstream_calls
from .harness import Section, Timing

REPO = Path(__file__).resolve().parents[1]
CLIENTS = 50
HOT = 200
UPSTREAM_DELAY = 0.2
KEY = "sk-bench-unused"
QUESTION = "What is a buffer overflow?"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Proxy:
    """``pgcache serve`` in a process of its own."""

    def __init__(self, url: str, upstream: str, workers: int) -> None:
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PGCACHE_", "OPENAI_", "PROMETHEUS_"))}
        env |= {"PGCACHE_DATABASE_URL": url, "PGCACHE_EMBEDDER": "openai", "OPENAI_API_KEY": KEY}
        command = [sys.executable, "-m", "pgcache.cli", "serve", "--port", str(self.port), "--upstream", upstream]
        command += ["--workers", str(workers), "--log-level", "warning"]
        self.process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("pgcache serve did not start") from None
                time.sleep(0.1)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def _body(prompt: str) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}).encode()


HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}


def _overhead(context: Context, base_url: str, count: int) -> list[dict]:
    rows = []
    with context.server.database() as url:
        llm = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)
        cache = Cache(url, embedder=OpenAIEmbedder(client=llm), llm=llm, environ={})
        cache.chat([{"role": "user", "content": QUESTION}])
        proxy = Proxy(url, base_url, workers=1)
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port)
        try:
            for tier, prompts in (
                ("exact", itertools.repeat(QUESTION)),
                ("semantic", (f"Explain what a buffer overflow is ({n})" for n in itertools.count())),
            ):
                library, served, statuses = [], [], set()
                for n, prompt in zip(range(2 * count + 40), prompts, strict=False):
                    if n % 2:
                        started = time.perf_counter_ns()
                        result = cache.chat([{"role": "user", "content": prompt}])
                        elapsed = time.perf_counter_ns() - started
                        statuses.add(result.status)
                        if n >= 40:
                            library.append(elapsed / 1000)
                    else:
                        started = time.perf_counter_ns()
                        connection.request("POST", "/v1/chat/completions", _body(prompt), HEADERS)
                        response = connection.getresponse()
                        response.read()
                        elapsed = time.perf_counter_ns() - started
                        statuses.add(response.getheader("X-Pgcache-Status"))
                        if n >= 40:
                            served.append(elapsed / 1000)
                if statuses != {tier}:
                    raise RuntimeError(f"expected {tier} hits only, got {sorted(statuses)}")
                lib, http_ = Timing(library), Timing(served)
                rows.append(
                    {
                        "hit": tier,
                        "library p50 ms": lib.p50 / 1000,
                        "library p99 ms": lib.p99 / 1000,
                        "proxy p50 ms": http_.p50 / 1000,
                        "proxy p99 ms": http_.p99 / 1000,
                        "added p50 ms": (http_.p50 - lib.p50) / 1000,
                        "added p99 ms": (http_.p99 - lib.p99) / 1000,
                    }
                )
        finally:
            connection.close()
            proxy.close()
            cache.close()
    return rows


async def _client(port: int, next_prompt, deadline: float, samples: list) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < deadline:
            body = _body(next_prompt())
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            started = time.perf_counter()
            writer.write(head + body)
            status_line = await reader.readline()
            length, outcome = 0, ""
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.lower() == "content-length":
                    length = int(value)
                elif name.lower() == "x-pgcache-status":
                    outcome = value.strip()
            await reader.readexactly(length)
            samples.append((time.perf_counter() - started, int(status_line.split()[1]), outcome))
    finally:
        writer.close()


def _load(port: int, seconds: float, miss_share: float, asked: set[int]) -> list:
    """Samples (seconds, status, X-Pgcache-Status); ``asked`` collects the new questions sent."""
    samples: list = []
    hot = itertools.cycle(range(HOT))
    requests = itertools.count()
    fresh = itertools.count()

    def next_prompt() -> str:
        n = next(requests)
        if miss_share and n % round(1 / miss_share) == 0:
            question = next(fresh) // 2  # each new question asked twice, back to back
            asked.add(question)
            return f"a new question {question}"
        return f"recurring question {next(hot)}"

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(_client(port, next_prompt, deadline, samples) for _ in range(CLIENTS)))

    asyncio.run(main())
    return samples


def _throughput(context: Context, seconds: float) -> tuple[list[dict], dict]:
    rows, checks = [], {}
    for label, share in (("hits only", 0.0), ("20% misses", 0.2)):
        with context.server.database() as url, fake_llm_process(UPSTREAM_DELAY) as base_url:
            llm = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)
            with Cache(url, embedder=OpenAIEmbedder(client=llm), llm=llm, environ={}) as cache:
                cache.store_many([(f"recurring question {n}", f"answer {n}") for n in range(HOT)])
            before = upstream_calls(base_url)["chat"]
            proxy = Proxy(url, base_url, workers=2)
            try:
                started = time.perf_counter()
                asked: set[int] = set()
                samples = _load(proxy.port, seconds, share, asked)
                elapsed = time.perf_counter() - started
            finally:
                proxy.close()
            calls = upstream_calls(base_url)["chat"] - before
        latency = Timing([s[0] * 1e6 for s in samples])
        errors = sum(1 for s in samples if s[1] != 200)
        outcomes = [s[2] for s in samples]
        misses = outcomes.count("miss")
        rows.append(
            {
                "traffic": label,
                "requests": len(samples),
                "requests/s": len(samples) / elapsed,
                "p50 ms": latency.p50 / 1000,
                "p99 ms": latency.p99 / 1000,
                "exact hits": outcomes.count("exact"),
                "new questions": len(asked),
                "misses": misses,
                "upstream calls": calls,
                "errors": errors,
            }
        )
        checks[label] = {"rate": len(samples) / elapsed, "errors": errors, "calls": calls, "asked": len(asked)}
    return rows, checks


def run(context: Context) -> Section:
    mode = context.mode
    count = {"toy": 50, "quick": 500, "full": 2000}[mode]
    seconds = {"toy": 2.0, "quick": 5.0, "full": 15.0}[mode]
    section = Section(
        "proxy",
        "The proxy: pgcache serve",
        f"Overhead: {count:,} exact and {count:,} semantic hits, alternately through the library in process "
        "(`Cache.chat`) and through `pgcache serve` (one worker) over one keep-alive connection on loopback. "
        f"Throughput: `pgcache serve --workers 2`, {CLIENTS} concurrent keep-alive clients for {seconds:.0f}s, "
        f"{HOT} recurring questions stored beforehand; with 20% misses, each new question is asked twice back to "
        f"back and the fake upstream (its own process) answers in {UPSTREAM_DELAY * 1000:.0f} ms. The load "
        "generator, the server's workers, the fake upstream and PostgreSQL share the same 2 cores.",
    )
    with fake_llm_process() as base_url:
        overhead = _overhead(context, base_url, count)
    section.table("Added latency of the proxy on a hit", overhead)
    rows, checks = _throughput(context, seconds)
    section.table(f"Throughput, {CLIENTS} concurrent clients", rows)
    exact = overhead[0]["added p50 ms"]
    section.target("proxy overhead on an exact hit <= 1 ms p50", exact <= 1.0, f"{exact:.2f} ms")
    rate = checks["hits only"]["rate"]
    section.target("hits through --workers 2 >= 1,000 requests/s", rate >= 1000, f"{rate:,.0f} requests/s")
    errors = sum(c["errors"] for c in checks.values())
    section.target("no errors under load", errors == 0, f"{errors} errors")
    mixed = checks["20% misses"]
    section.target(
        "single-flight under load: one upstream call per new question",
        mixed["calls"] == mixed["asked"],
        f"{mixed['calls']} upstream calls for {mixed['asked']} new questions, each asked twice at once",
    )
    return section
