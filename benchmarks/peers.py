"""pgcache against the tutorial's Redis design and GPTCache (SQLite + faiss) on the same data and queries."""

from __future__ import annotations

import atexit
import json
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager

import numpy as np

from pgcache import Cache, maintenance
from pgcache.connections import Database

from .context import EMBEDDER, MAIN, Context
from .harness import Section, connect, copy_entries, measure
from .semantic import PrecomputedEmbedder
from .vectors import ClusteredVectors


class RedisTutorialCache:
    """The tutorial's design: one JSON value per entry holding its embedding; a lookup scans every key."""

    def __init__(self, client) -> None:
        self.redis = client

    def put(self, i: int, prompt: str, answer: str, vector: np.ndarray) -> None:
        self.redis.set(f"cache:{i}", json.dumps({"prompt": prompt, "response": answer, "embedding": vector.tolist()}))

    def get(self, vector: np.ndarray, threshold: float) -> str | None:
        best, best_similarity = None, -1.0
        for key in self.redis.scan_iter("cache:*"):
            item = json.loads(self.redis.get(key))
            stored = np.array(item["embedding"])
            similarity = float(stored @ vector / (np.linalg.norm(stored) * np.linalg.norm(vector)))
            if similarity > best_similarity:
                best, best_similarity = item, similarity
        return best["response"] if best is not None and best_similarity >= threshold else None


@contextmanager
def redis_server():
    """A throwaway redis-server on 127.0.0.1 without persistence; yields a client."""
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed (Debian: apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="pgcache-bench-redis-")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield client
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _gptcache(vectors_by_text: dict[str, np.ndarray], workdir: str, threshold: float):
    from gptcache import Cache as GPTCache
    from gptcache import Config
    from gptcache.manager import CacheBase, VectorBase, get_data_manager
    from gptcache.processor.pre import get_prompt
    from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation

    cache = GPTCache()
    manager = get_data_manager(
        CacheBase("sqlite", sql_url=f"sqlite:///{workdir}/gptcache.db"),
        VectorBase("faiss", dimension=1536, index_path=f"{workdir}/faiss.index"),
    )
    cache.init(
        pre_embedding_func=get_prompt,
        embedding_func=lambda text, **_: vectors_by_text[text],
        data_manager=manager,
        similarity_evaluation=SearchDistanceEvaluation(),
        config=Config(similarity_threshold=threshold),
    )
    return cache


def run(context: Context) -> Section:
    sizes = context.sizes
    n = sizes.peer_entries
    section = Section(
        "peers",
        "Peers on the same data and queries",
        f"{n:,} entries of the clustered 1536-d data in one scope, the same paraphrase (hit) and novel (miss) "
        "queries for every system, embeddings precomputed for all of them (no model in the timings). "
        "pgcache: `Cache.lookup()` (exact tier, then semantic, ledger included). The tutorial's design: "
        "Redis (Debian's redis-server on loopback), one JSON value per entry holding its embedding, a lookup "
        "scanning every key and computing cosine in numpy (benchmarks/peers.py). GPTCache: SQLite + faiss "
        "(flat L2 index over unit vectors), `gptcache.adapter.api.get`.",
    )
    data = ClusteredVectors(n, seed=21)
    count = min(sizes.semantic_queries, 200)
    paraphrases, _ = data.paraphrases(count)
    novel = data.novel(count)
    threshold = 0.9
    rows = []
    with context.server.database() as url:
        copy_entries(
            url,
            ((MAIN.key(f"question {i}"), MAIN.namespace, f"answer {i}", data.entries[i], MAIN.model) for i in range(n)),
            embedder=EMBEDDER,
        )
        database = Database(url, max_size=1, statement_timeout=120)
        try:
            maintenance.reindex(database)
        finally:
            database.close()
        with connect(url) as conn:
            conn.execute("VACUUM ANALYZE pgcache_entries")
        embedder = PrecomputedEmbedder()
        with Cache(
            url, embedder=embedder, threshold=threshold, guard=False, namespace=MAIN.namespace, model=MAIN.model
        ) as cache:
            hits = 0
            for label, queries in (("paraphrase (hit)", paraphrases), ("novel (miss)", novel)):

                def lookup(i: int, queries=queries, label=label) -> None:
                    nonlocal hits
                    embedder.next = queries[i]
                    hits += cache.lookup(MAIN.messages(f"{label} {i}")) is not None

                timing = measure(lookup, len(queries), warmup=5)
                rows.append(
                    {
                        "system": "pgcache",
                        "queries": label,
                        "n": len(timing.samples),
                        "p50 ms": timing.p50 / 1000,
                        "p99 ms": timing.p99 / 1000,
                        "max ms": timing.max / 1000,
                    }
                )
        pgcache_p50 = rows[0]["p50 ms"]
    redis_p50 = _redis(section, rows, data, paraphrases, threshold, sizes.peer_slow_lookups)
    _gpt(section, rows, data, paraphrases, novel, threshold)
    section.table(f"{n:,} entries", rows)
    for row in rows:
        row["x pgcache p50"] = row["p50 ms"] / pgcache_p50 if row["queries"].startswith("paraphrase") else ""
    if redis_p50 is not None:
        ratio = redis_p50 / pgcache_p50
        section.target(
            f"pgcache >= 1000x faster than the tutorial's Redis design at {n:,} entries",
            ratio >= 1000,
            f"{redis_p50:.0f} ms vs {pgcache_p50:.2f} ms = {ratio:,.0f}x",
        )
    return section


def _redis(section, rows, data, queries, threshold, lookups) -> float | None:
    try:
        import redis  # noqa: F401

        server = redis_server()
        client = server.__enter__()
    except (ImportError, FileNotFoundError) as exc:
        section.notes.append(f"The tutorial's Redis design was not run: {exc}.")
        return None
    try:
        tutorial = RedisTutorialCache(client)
        started = time.perf_counter()
        with client.pipeline(transaction=False) as pipe:
            for i, vector in enumerate(data.entries):
                pipe.set(
                    f"cache:{i}",
                    json.dumps({"prompt": f"question {i}", "response": f"answer {i}", "embedding": vector.tolist()}),
                )
                if i % 1000 == 999:
                    pipe.execute()
            pipe.execute()
        load = time.perf_counter() - started
        answers = []
        timing = measure(lambda i: answers.append(tutorial.get(queries[i], threshold)), lookups)
        memory = client.info("memory")["used_memory"]
    finally:
        server.__exit__(None, None, None)
    rows.append(
        {
            "system": "Redis, tutorial design",
            "queries": "paraphrase (hit)",
            "n": lookups,
            "p50 ms": timing.p50 / 1000,
            "p99 ms": timing.p99 / 1000,
            "max ms": timing.max / 1000,
        }
    )
    section.notes.append(
        f"Redis held the entries in {memory / 2**20:.0f} MiB (JSON text) and loaded them in "
        f"{load:.1f}s; {sum(a is not None for a in answers)} of {lookups} timed lookups hit."
    )
    return timing.p50 / 1000


def _gpt(section, rows, data, paraphrases, novel, threshold) -> None:
    try:
        import gptcache  # noqa: F401
        from gptcache.adapter.api import get, put
    except ImportError as exc:
        section.notes.append(f"GPTCache was not run: {exc}.")
        return
    vectors = {f"question {i}": v for i, v in enumerate(data.entries)}
    vectors.update({f"paraphrase {i}": v for i, v in enumerate(paraphrases)})
    vectors.update({f"novel {i}": v for i, v in enumerate(novel)})
    workdir = tempfile.mkdtemp(prefix="pgcache-bench-gptcache-")
    # GPTCache saves its faiss index at exit; remove the directory only after that (atexit runs LIFO).
    atexit.register(shutil.rmtree, workdir, True)
    # SearchDistanceEvaluation scores faiss's squared L2 distance; on unit vectors cosine = 1 - d / 2.
    cache = _gptcache(vectors, workdir, threshold)
    started = time.perf_counter()
    for i in range(len(data.entries)):
        put(f"question {i}", f"answer {i}", cache_obj=cache)
    load = time.perf_counter() - started
    found = []
    for label, count in (("paraphrase", len(paraphrases)), ("novel", len(novel))):
        timing = measure(lambda i, label=label: found.append(get(f"{label} {i}", cache_obj=cache)), count)
        outcome = "hit" if label == "paraphrase" else "miss"
        rows.append(
            {
                "system": "GPTCache (SQLite + faiss)",
                "queries": f"{label} ({outcome})",
                "n": count,
                "p50 ms": timing.p50 / 1000,
                "p99 ms": timing.p99 / 1000,
                "max ms": timing.max / 1000,
            }
        )
    section.notes.append(f"GPTCache stored the entries in {load:.1f}s (one `put` each).")
