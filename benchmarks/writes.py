"""Write paths: warming from an FAQ file, the insert path alone, and sweeping under load."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import openai

from pgcache import Cache, entries, keys
from pgcache import warm as warming
from pgcache.connections import Database
from pgcache.embedders import OpenAIEmbedder

from .context import MAIN, Context
from .fake_llm import fake_llm_process
from .harness import Section, Timing, connect, copy_entries
from .semantic import PrecomputedEmbedder

SCRIPT = str(Path(sys.executable).with_name("pgcache"))


def run_warm(context: Context) -> Section:
    lines, rows = context.sizes.warm_lines, context.sizes.insert_rows
    section = Section(
        "warm",
        "Warm and the insert path",
        f"A {lines:,}-line TSV FAQ file (question, answer) warmed with embeddings from a fake OpenAI-compatible "
        "server in another process on 127.0.0.1 (1536-d, base64 as the SDK asks), batches of 500, index "
        "retraining off (the lifecycle scenario measures it): once through `pgcache.warm.warm` in this process "
        "(what the command runs after start-up), once more as the `pgcache warm` command into a fresh database "
        "(process start, imports and schema check included), then the command again with every line present. "
        f"The insert path alone: `entries.insert_entries` on {rows:,} prepared entries with 1536-d vectors, "
        "1,000 per call (binary COPY into a staging table, then one upsert), with pgcache's indexes and, to show "
        "their share, without the ivfflat index.",
    )
    with fake_llm_process() as base_url, tempfile.TemporaryDirectory() as tmp:
        faq = Path(tmp) / "faqs.tsv"
        faq.write_text(
            "".join(f"How do I do task number {i} in the product?\tStep by step answer {i}.\n" for i in range(lines)),
            encoding="utf-8",
        )
        text = warming.read_text(faq)
        items, errors = warming.parse(faq, text, "tsv")
        assert not errors, errors
        with context.server.database() as url:
            client = openai.OpenAI(base_url=base_url, api_key="sk-bench-unused", max_retries=0)
            with Cache(url, embedder=OpenAIEmbedder(client=client), llm=client) as cache:
                started = time.perf_counter()
                result = warming.warm(cache, faq, items, batch_size=500)
                in_process = time.perf_counter() - started
            with connect(url) as conn:
                stored = conn.execute("SELECT count(*) FROM pgcache_entries WHERE embedding IS NOT NULL").fetchone()[0]
        env = {
            **os.environ,
            "PGCACHE_EMBEDDER": "openai",
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": "sk-bench-unused",
        }
        command = [SCRIPT, "warm", str(faq), "--batch-size", "500", "--no-retrain"]
        with context.server.database() as url:
            started = time.perf_counter()
            subprocess.run([*command, "--database-url", url], env=env, capture_output=True, text=True, check=True)
            whole = time.perf_counter() - started
            started = time.perf_counter()
            subprocess.run([*command, "--database-url", url], env=env, capture_output=True, text=True, check=True)
            again = time.perf_counter() - started
    warm_rate = lines / in_process
    insert_rate, wal_per_row = _insert_rate(context, rows)
    bare_rate, bare_wal = _insert_rate(context, rows, drop_vector_index=True)
    section.table(
        "Throughput",
        [
            {"step": f"warm, {lines:,} new lines (in process)", "seconds": in_process, "entries/s": warm_rate},
            {
                "step": f"`pgcache warm`, {lines:,} new lines (whole command)",
                "seconds": whole,
                "entries/s": lines / whole,
            },
            {"step": f"`pgcache warm` again, all {lines:,} present", "seconds": again, "entries/s": lines / again},
            {
                "step": f"insert path, {rows:,} rows",
                "seconds": rows / insert_rate,
                "entries/s": insert_rate,
                "WAL bytes/row": wal_per_row,
            },
            {
                "step": f"insert path without the ivfflat index, {rows:,} rows",
                "seconds": rows / bare_rate,
                "entries/s": bare_rate,
                "WAL bytes/row": bare_wal,
            },
        ],
    )
    section.target(
        "warm >= 2,000 entries/s",
        warm_rate >= 2000,
        f"{warm_rate:,.0f}/s in process, {lines / whole:,.0f}/s as a command; {stored:,} rows stored, "
        f"{result.added:,} added",
    )
    section.target("insert path >= 20k rows/s", insert_rate >= 20000, f"{insert_rate:,.0f}/s")
    section.notes.append(
        f"What bounds the insert path: every row writes {wal_per_row:,.0f} bytes of WAL, {wal_per_row - bare_wal:,.0f} "
        f"of them for the ivfflat index (a half-precision copy of the vector lands on an index page that is new or "
        f"logged in full) and most of the rest for the 6 KB vector in TOAST; without that index the same rows go in "
        f"at {bare_rate:,.0f}/s. One backend does the writing while the client and the fake embedding server share "
        "the other core. Going further would mean giving up crash safety (unlogged tables) or full-precision stored "
        "vectors; pgcache keeps both."
    )
    return section


def _insert_rate(context: Context, rows: int, drop_vector_index: bool = False) -> tuple[float, float]:
    """Rows per second through ``entries.insert_entries``, and WAL bytes written per row."""
    rng = np.random.default_rng(5)
    prepared = []
    for i in range(rows):
        key = MAIN.key(f"insert question {i}")
        prepared.append(
            entries.NewEntry(
                namespace=MAIN.namespace,
                exact_key=key.exact_key,
                scope_key=key.scope_key,
                model=MAIN.model,
                prompt=key.prompt,
                request=keys.canonical_json(key.request),
                response='{"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", '
                f'"content": "answer {i}"}}, "finish_reason": "stop"}}]}}',
                embedder="bench-1536",
                embedding=_unit(rng.standard_normal(1536)),
                source="warm",
            )
        )
    with context.server.database() as url:
        if drop_vector_index:
            with connect(url) as conn:
                conn.execute("DROP INDEX pgcache_entries_embedding_idx")
        database = Database(url, max_size=1, statement_timeout=60)
        try:
            with database.connection() as conn:
                wal_before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
                started = time.perf_counter()
                for start in range(0, rows, 1000):
                    entries.insert_entries(conn, prepared[start : start + 1000])
                seconds = time.perf_counter() - started
                wal = conn.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", (wal_before,)).fetchone()[0]
            return rows / seconds, float(wal) / rows
        finally:
            database.close()


def _unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def run_sweep(context: Context) -> Section:
    expired_rows = context.sizes.sweep_rows
    live_rows = max(1000, expired_rows // 5)
    section = Section(
        "sweep",
        "Sweep under load",
        f"{expired_rows:,} expired and {live_rows:,} live entries with 1536-d vectors. Four threads look up live "
        "entries (exact hits through `Cache.lookup`) for a baseline period, then go on while `pgcache sweep` "
        "(batches of 10,000, each its own transaction) deletes the expired rows.",
    )
    n = expired_rows + live_rows
    rng = np.random.default_rng(9)
    vectors = (rng.standard_normal((n, 1536)) / np.sqrt(1536)).astype(np.float32)
    expired = np.arange(n) < expired_rows
    with context.server.database() as url:
        copy_entries(
            url,
            ((MAIN.key(f"question {i}"), MAIN.namespace, f"answer {i}", vectors[i], MAIN.model) for i in range(n)),
            embedder="bench-1536",
            expired=expired,
        )
        with connect(url) as conn:
            conn.execute("VACUUM ANALYZE pgcache_entries")
        with Cache(url, embedder=PrecomputedEmbedder(), namespace=MAIN.namespace, model=MAIN.model) as cache:
            phase = {"name": "baseline"}
            samples: dict[str, list[float]] = {"baseline": [], "during sweep": []}
            stop = threading.Event()
            lock = threading.Lock()

            def worker(seed: int) -> None:
                pick = np.random.default_rng(seed)
                while not stop.is_set():
                    i = int(pick.integers(expired_rows, n))
                    started = time.perf_counter_ns()
                    cache.lookup(MAIN.messages(f"question {i}"))
                    elapsed = (time.perf_counter_ns() - started) / 1000
                    with lock:
                        samples[phase["name"]].append(elapsed)

            threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
            for thread in threads:
                thread.start()
            time.sleep(max(1.0, context.sizes.concurrency_seconds))
            phase["name"] = "during sweep"
            result = cache.sweep(batch_size=10_000)
            stop.set()
            for thread in threads:
                thread.join()
        with connect(url) as conn:
            left = conn.execute("SELECT count(*) FROM pgcache_entries").fetchone()[0]
    rate = result.expired / result.seconds
    base, during = Timing(samples["baseline"]), Timing(samples["during sweep"])
    section.table(
        "Lookup latency of the four threads",
        [
            {
                "phase": name,
                "lookups": len(t.samples),
                "p50 us": t.p50,
                "p90 us": t.p90,
                "p99 us": t.p99,
                "max us": t.max,
            }
            for name, t in (("baseline", base), (f"during the sweep ({result.seconds:.2f}s)", during))
        ],
    )
    section.table(
        "Sweep",
        [{"expired rows deleted": result.expired, "seconds": result.seconds, "rows/s": rate, "rows left": left}],
    )
    section.target("sweep >= 20k expired rows/s", rate >= 20000, f"{rate:,.0f}/s")
    section.target(
        "lookup p99 during the sweep <= 2x without",
        during.p99 <= 2 * base.p99,
        f"{during.p99:.0f} us vs {base.p99:.0f} us = {during.p99 / base.p99:.2f}x",
    )
    return section
