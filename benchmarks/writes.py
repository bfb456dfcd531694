"""Write paths: warming from an FAQ file, the insert path alone, and sweeping under load."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openai

from pgcache import Cache, entries, keys, queries
from pgcache import warm as warming
from pgcache.connections import Database
from pgcache.embedders import OpenAIEmbedder, embed_texts
from pgcache.tokens import estimate_usage

from .context import MAIN, Context
from .embedding_server import embedding_server
from .harness import Section, Timing, connect, copy_entries, measure
from .semantic import PrecomputedEmbedder

SCRIPT = str(Path(sys.executable).with_name("pgcache"))


def run_warm(context: Context) -> Section:
    lines, rows = context.sizes.warm_lines, context.sizes.insert_rows
    section = Section(
        "warm",
        "Warm and the insert path",
        f"A {lines:,}-line TSV FAQ file (question, answer) warmed with embeddings from a local embedding server "
        "in another process on 127.0.0.1 (`benchmarks/embedding_server.py`: OpenAI's API, 1536-d base64 vectors "
        "made from a hash of each text in microseconds, standing in for a model served on the same machine whose "
        "model time is not what is measured), batches of 500, index retraining off (the lifecycle scenario "
        "measures it): once through `pgcache.warm.warm` in this process (what the command runs after start-up), "
        "once more as the `pgcache warm` command into a fresh database (process start, imports and schema check "
        "included), then the command again with every line present. The embedding requests alone show the "
        f"server's and the client's share. The insert path alone: `entries.insert_entries` on {rows:,} prepared "
        "entries with 1536-d vectors, 1,000 per call (binary COPY into a staging table, then an upsert), then "
        "the same rows split into its steps, without each index in turn, and from two writers at once.",
    )
    with embedding_server() as base_url, tempfile.TemporaryDirectory() as tmp:
        faq = Path(tmp) / "faqs.tsv"
        faq.write_text(
            "".join(f"How do I do task number {i} in the product?\tStep by step answer {i}.\n" for i in range(lines)),
            encoding="utf-8",
        )
        text = warming.read_text(faq)
        items, errors = warming.parse(faq, text, "tsv")
        assert not errors, errors
        client = openai.OpenAI(base_url=base_url, api_key="sk-bench-unused", max_retries=0)
        embedder = OpenAIEmbedder(client=client)
        questions = [item.prompt for item in items]
        started = time.perf_counter()
        for start in range(0, lines, 500):
            embed_texts(embedder, questions[start : start + 500])
        embedding_only = time.perf_counter() - started
        encoded = base64.b64encode(_unit(np.ones(1536)).tobytes()).decode("ascii")
        decoding = measure(lambda i: np.frombuffer(base64.b64decode(encoded), dtype="<f4"), 2000, warmup=100)
        with context.server.database() as url:
            with Cache(url, embedder=embedder, llm=client) as cache:
                estimate_usage(cache.model, [], "")  # the token counter's one-off load is not per entry
                wal_before = _wal_lsn(url)
                started = time.perf_counter()
                result = warming.warm(cache, faq, items, batch_size=500)
                in_process = time.perf_counter() - started
                warm_wal = _wal_since(url, wal_before) / lines
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
    prepared = _prepared(rows)
    insert_rate, wal_per_row = _insert_rate(context, prepared)
    pair_rate, _ = _insert_rate(context, prepared, writers=2)
    section.table(
        "Throughput",
        [
            {
                "step": f"embedding requests alone, {lines:,} questions",
                "seconds": embedding_only,
                "entries/s": lines / embedding_only,
            },
            {
                "step": f"warm, {lines:,} new lines (in process)",
                "seconds": in_process,
                "entries/s": warm_rate,
                "WAL bytes/row": warm_wal,
            },
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
                "step": f"insert path, {rows:,} rows from two writers (batches of 1,000 each)",
                "seconds": rows / pair_rate,
                "entries/s": pair_rate,
            },
        ],
    )
    steps = _insert_steps(context, prepared)
    section.table("Where an inserted row's time goes (one writer, microseconds per row)", steps)
    section.target(
        "warm >= 5,000 entries/s with a local embedding server",
        warm_rate >= 5000,
        f"{warm_rate:,.0f}/s in process, {lines / whole:,.0f}/s as a command ({warm_wal:,.0f} WAL bytes/row); "
        f"{stored:,} rows stored, {result.added:,} added",
    )
    section.target(
        "insert path >= 20k rows/s",
        insert_rate >= 20000,
        f"{insert_rate:,.0f}/s from one writer, {pair_rate:,.0f}/s from two ({wal_per_row:,.0f} WAL bytes/row)",
    )
    whole_row = steps[0]
    without_vector_index = next(row for row in steps if row["step"] == f"without {queries.INDEX_NAME}")
    section.notes.append(
        f"Where the insert path's time goes: of {whole_row['total']:.0f} us per row from one writer, "
        f"{whole_row['client']:.0f} us are the client's (Python building the COPY rows), {whole_row['COPY']:.0f} "
        f"the binary COPY into the staging table, {whole_row['upsert']:.0f} the upsert into pgcache_entries and "
        f"{whole_row['commit']:.0f} the commit (the WAL flush), each the least of {_rounds(context)} rounds. The "
        f"ivfflat index costs {whole_row['total'] - without_vector_index['total']:.0f} us and "
        f"{whole_row['WAL bytes/row'] - without_vector_index['WAL bytes/row']:,.0f} bytes of WAL per row (a 768-d "
        "half-precision copy of the vector's head on a list page); the rest of the WAL is the 3 KB vector in "
        "TOAST and the row itself. One batch is one transaction on one connection, so one writer uses one core "
        "of PostgreSQL; two writers share the two cores with the client, which is why they add less than a "
        "second writer's worth."
    )
    section.notes.append(
        f"Where a warm's time goes: the embedding requests alone take {embedding_only / lines * 1e6:.0f} us per "
        "question (the server making and base64-encoding vectors, the client's SDK preparing the request and "
        f"decoding 8 KB of base64 per vector, {decoding.p50:.0f} us each); the rest is deriving each line's key, "
        "building and JSON-encoding the entry, estimating its tokens, and the insert path above. One batch "
        "embeds while the one before it is written, but both run Python under one interpreter lock, and the "
        "embedding server and PostgreSQL share the second core."
    )
    return section


def _prepared(rows: int) -> list[entries.NewEntry]:
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
    return prepared


def _insert_rate(context: Context, prepared: list[entries.NewEntry], writers: int = 1) -> tuple[float, float]:
    """Rows per second through ``entries.insert_entries`` (1,000 per call), and WAL bytes written per row."""
    batches = [prepared[start : start + 1000] for start in range(0, len(prepared), 1000)]
    with context.server.database() as url:
        database = Database(url, max_size=writers, statement_timeout=60)
        try:
            wal_before = _wal_lsn(url)

            def write(share: list[list[entries.NewEntry]]) -> None:
                with database.connection() as conn:
                    for batch in share:
                        entries.insert_entries(conn, batch)

            started = time.perf_counter()
            with ThreadPoolExecutor(writers) as pool:
                list(pool.map(write, [batches[i::writers] for i in range(writers)]))
            seconds = time.perf_counter() - started
            return len(prepared) / seconds, _wal_since(url, wal_before) / len(prepared)
        finally:
            database.close()


STEP_ROUNDS = 3
"""Rounds of the step breakdown (one at toy size): every variant once per round, in turn; each step's least
time is kept."""


def _insert_steps(context: Context, prepared: list[entries.NewEntry]) -> list[dict[str, Any]]:
    """The insert path's steps timed apart, as ``entries.insert_entries`` runs them: all indexes, then without each.

    The variants take turns for :data:`STEP_ROUNDS` rounds and each step keeps its least time, so
    that a slow moment of the machine does not land on one variant and pass for an index's cost.
    """
    indexes = [
        queries.INDEX_NAME,
        "pgcache_entries_scope_idx",
        "pgcache_entries_tags_idx",
        "pgcache_entries_expires_at_idx",
    ]
    variants: list[str | None] = [None, *indexes]
    best: dict[str | None, dict[str, float]] = {}
    wal: dict[str | None, float] = {}
    for _ in range(_rounds(context)):
        for dropped in variants:
            times, wal[dropped] = _timed_steps(context, prepared, dropped)
            kept = best.setdefault(dropped, times)
            for name, seconds in times.items():
                kept[name] = min(kept[name], seconds)
    table = []
    for dropped in variants:
        per_row = {name: seconds / len(prepared) * 1e6 for name, seconds in best[dropped].items()}
        table.append(
            {
                "step": "all indexes" if dropped is None else f"without {dropped}",
                **per_row,
                "total": sum(per_row.values()),
                "WAL bytes/row": wal[dropped] / len(prepared),
            }
        )
    return table


def _rounds(context: Context) -> int:
    return 1 if context.mode == "toy" else STEP_ROUNDS


def _timed_steps(
    context: Context, prepared: list[entries.NewEntry], dropped: str | None
) -> tuple[dict[str, float], float]:
    """Seconds in each step for all of ``prepared``, into a fresh database without index ``dropped``; WAL bytes."""
    with context.server.database() as url:
        if dropped:
            with connect(url) as conn:
                conn.execute(f"DROP INDEX {dropped}")
        with connect(url) as conn:
            times = {"client": 0.0, "COPY": 0.0, "upsert": 0.0, "commit": 0.0}
            wal_before = _wal_lsn(url)
            for start in range(0, len(prepared), 1000):
                began = time.perf_counter()
                staged = sorted(prepared[start : start + 1000], key=lambda entry: entry.exact_key)
                rows = [[p[c.source] for c in queries.ENTRY_COLUMNS] for p in (e.params() for e in staged)]
                copying = time.perf_counter()
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(queries.CREATE_STAGING)
                    with cur.copy(queries.COPY_STAGING) as copy:
                        copy.set_types(queries.STAGING_TYPES)
                        for row in rows:
                            copy.write_row(row)
                    upserting = time.perf_counter()
                    cur.execute(queries.UPSERT_STAGED, (0, len(staged))).fetchall()
                    committing = time.perf_counter()
                ended = time.perf_counter()
                for name, seconds in zip(
                    times,
                    (copying - began, upserting - copying, committing - upserting, ended - committing),
                    strict=True,
                ):
                    times[name] += seconds
            return times, _wal_since(url, wal_before)


def _wal_lsn(url: str) -> str:
    with connect(url) as conn:
        return conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]


def _wal_since(url: str, before: str) -> float:
    with connect(url) as conn:
        return float(conn.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", (before,)).fetchone()[0])


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
