"""Mixed hit/miss traffic from 8 threads and from 8 processes, and single-flight under a burst."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
import time

import numpy as np
import openai

from pgcache import Cache

from .context import Context
from .fake_llm import fake_llm_process, upstream_calls
from .harness import Section, Timing

WORKERS = 8
BURST_KEYS = 20
HOT_PROMPTS = 300
CHAT_DELAY = 0.02  # seconds per upstream completion: a fast model, so the cache's own cost shows


class HashEmbedder:
    """A deterministic vector per text without any model: the semantic tier runs, nothing is learned."""

    name = "bench-hash"
    dimensions = 1536

    def embed(self, texts):
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).standard_normal(self.dimensions))
        return np.asarray(rows, dtype=np.float32)


def _traffic(url: str, base_url: str, worker: int, seconds: float, barrier, cache: Cache | None = None):
    """One worker: the burst (every worker asks for the same keys at once), then mixed traffic."""
    own = cache is None
    if own:
        cache = Cache(
            url,
            embedder=HashEmbedder(),
            llm=openai.OpenAI(base_url=base_url, api_key="sk-bench-unused", max_retries=0),
            guard=False,
        )
    try:
        barrier.wait()
        for key in range(BURST_KEYS):
            cache.chat([{"role": "user", "content": f"burst question {key}"}])
        barrier.wait()
        rng = np.random.default_rng(worker)
        latencies: dict[str, list[float]] = {"hit": [], "miss": []}
        deadline = time.monotonic() + seconds
        count = 0
        while time.monotonic() < deadline:
            if rng.random() < 0.8:
                prompt = f"hot question {int(rng.integers(HOT_PROMPTS))}"
            else:
                prompt = f"fresh question {worker}-{count}"
            started = time.perf_counter_ns()
            result = cache.chat([{"role": "user", "content": prompt}])
            elapsed = (time.perf_counter_ns() - started) / 1000
            latencies["miss" if result.status == "miss" else "hit"].append(elapsed)
            count += 1
        return latencies
    finally:
        if own:
            cache.close()


def _process_main(url, base_url, worker, seconds, barrier, results) -> None:
    results.put(_traffic(url, base_url, worker, seconds, barrier))


def run(context: Context) -> Section:
    seconds = context.sizes.concurrency_seconds
    section = Section(
        "concurrency",
        "Concurrency: 8 threads, 8 processes",
        f"Each worker first asks for the same {BURST_KEYS} new questions as every other worker at the same moment "
        f"(single-flight: one upstream call per key is the goal), then for {seconds:.0f}s sends chat requests: 80% "
        f"drawn from {HOT_PROMPTS} recurring questions (hits once asked), 20% new (misses: the fake LLM in another "
        f"process answers in {CHAT_DELAY * 1000:.0f} ms). Threads share one `Cache` (pool of 10 connections); "
        "processes have one each. Embeddings come from a hash of the text, without a model.",
    )
    rows = []
    for kind in ("threads", "processes"):
        with context.server.database() as url, fake_llm_process(CHAT_DELAY) as base_url:
            started = time.perf_counter()
            if kind == "threads":
                results = _run_threads(url, base_url, seconds)
            else:
                results = _run_processes(url, base_url, seconds)
            elapsed = time.perf_counter() - started
            calls = upstream_calls(base_url)["chat"]
            misses = sum(len(r["miss"]) for r in results)
        hits = Timing([x for r in results for x in r["hit"]])
        miss = Timing([x for r in results for x in r["miss"]])
        burst_calls = calls - misses
        rows.append(
            {
                "workers": f"{WORKERS} {kind}",
                "requests/s": (len(hits.samples) + len(miss.samples)) / seconds,
                "hit p50 ms": hits.p50 / 1000,
                "hit p99 ms": hits.p99 / 1000,
                "miss p50 ms": miss.p50 / 1000,
                "miss p99 ms": miss.p99 / 1000,
                "burst upstream calls": burst_calls,
                "run s": elapsed,
            }
        )
        section.target(
            f"single-flight with {WORKERS} {kind}: one upstream call per burst key",
            burst_calls == BURST_KEYS,
            f"{burst_calls} calls for {BURST_KEYS} keys x {WORKERS} workers",
        )
    section.table("Mixed traffic", rows)
    return section


def _run_threads(url: str, base_url: str, seconds: float) -> list[dict]:
    cache = Cache(
        url,
        embedder=HashEmbedder(),
        llm=openai.OpenAI(base_url=base_url, api_key="sk-bench-unused", max_retries=0),
        guard=False,
    )
    barrier = threading.Barrier(WORKERS)
    results: list[dict] = [{} for _ in range(WORKERS)]

    def work(worker: int) -> None:
        results[worker] = _traffic(url, base_url, worker, seconds, barrier, cache)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(WORKERS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        cache.close()
    return results


def _run_processes(url: str, base_url: str, seconds: float) -> list[dict]:
    spawn = multiprocessing.get_context("spawn")
    barrier = spawn.Barrier(WORKERS)
    queue = spawn.Queue()
    processes = [
        spawn.Process(target=_process_main, args=(url, base_url, w, seconds, barrier, queue)) for w in range(WORKERS)
    ]
    for process in processes:
        process.start()
    results = [queue.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    return results
