"""Exact hits through the public API against a bare ``SELECT 1`` on the same database."""

from __future__ import annotations

import time

import numpy as np
import openai

import pgcache
from pgcache import Cache, keys
from pgcache.lookup import find_exact

from .context import MAIN, Context
from .fake_llm import fake_llm
from .harness import Section, connect, copy_entries, measure
from .semantic import PrecomputedEmbedder


def run(context: Context) -> Section:
    n = context.sizes.exact_lookups
    section = Section(
        "exact",
        "Exact hit vs SELECT 1",
        f"{n:,} entries; each timed call asks for one of them by its full request (a system prompt-free "
        "single-turn chat), so every call is an exact hit. `SELECT 1` runs on a plain psycopg connection to the "
        "same database over the same Unix socket. The cache's calls include building the key (canonical JSON + "
        "SHA-256), borrowing a pooled connection, the indexed query, decoding the stored answer and queueing "
        "the ledger row and hit count; the ledger writer commits those in the background during the run, and "
        "the throughput row includes the final flush.",
    )
    with context.server.database() as url:
        rng = np.random.default_rng(3)
        vectors = rng.standard_normal((n, 1536)).astype(np.float32)
        copy_entries(
            url,
            ((MAIN.key(f"question {i}"), MAIN.namespace, f"answer {i}", vectors[i], MAIN.model) for i in range(n)),
            embedder="bench-1536",
        )
        with connect(url) as conn:
            conn.execute("VACUUM ANALYZE pgcache_entries")
            select_one = measure(lambda i: conn.execute("SELECT 1").fetchone(), n, warmup=200)
        with (
            fake_llm() as server,
            Cache(url, embedder=PrecomputedEmbedder(), namespace=MAIN.namespace, model=MAIN.model) as cache,
        ):

            def lookup(i: int) -> None:
                assert cache.lookup(MAIN.messages(f"question {i}")).status == "exact"

            lookup_timing = measure(lookup, n, warmup=200)
            chat_timing = measure(lambda i: cache.chat(MAIN.messages(f"question {i}")), n, warmup=50)
            database = cache.database()
            exact_keys = [MAIN.key(f"question {i}").exact_key for i in range(n)]

            def borrow_select_one(i: int) -> None:
                with database.connection() as conn:
                    conn.execute("SELECT 1").fetchone()

            def borrow_find_exact(i: int) -> None:
                with database.connection() as conn:
                    find_exact(conn, exact_keys[i])

            parts = {
                "key only (canonical JSON + SHA-256)": measure(
                    lambda i: keys.request_key(
                        MAIN.messages(f"question {i}"), model=MAIN.model, namespace=MAIN.namespace, params={}
                    ),
                    n,
                    200,
                ),
                "pooled connection + SELECT 1": measure(borrow_select_one, n, 200),
                "pooled connection + the exact-key query": measure(borrow_find_exact, n, 200),
            }
            client = pgcache.wrap(openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0), cache)
            create_timing = measure(
                lambda i: client.chat.completions.create(model=MAIN.model, messages=MAIN.messages(f"question {i}")),
                n,
                warmup=50,
            )
            started = time.perf_counter()
            for i in range(n):
                cache.lookup(MAIN.messages(f"question {i}"))
            cache.flush()
            per_call = (time.perf_counter() - started) / n * 1e6
            upstream = server.calls["chat"]
        with connect(url) as conn:
            ledger_rows = conn.execute("SELECT count(*) FROM pgcache_lookups WHERE outcome = 'exact'").fetchone()[0]
    base = select_one.p50
    rows = []
    for label, timing in (
        ("SELECT 1 (psycopg)", select_one),
        ("Cache.lookup, exact hit", lookup_timing),
        ("Cache.chat, exact hit", chat_timing),
        ("wrap(OpenAI()).chat.completions.create, exact hit", create_timing),
    ):
        rows.append(
            {
                "call": label,
                "p50 us": timing.p50,
                "p90 us": timing.p90,
                "p99 us": timing.p99,
                "max us": timing.max,
                "p50 / SELECT 1": timing.p50 / base,
            }
        )
    rows.append(
        {
            "call": f"Cache.lookup x {n:,} then flush, per call (throughput)",
            "p50 us": per_call,
            "p50 / SELECT 1": per_call / base,
        }
    )
    section.table(f"{n:,} calls each", rows)
    section.table(
        "Where an exact hit's time goes (the same run)",
        [
            {"part": label, "p50 us": timing.p50, "p99 us": timing.p99, "p50 / SELECT 1": timing.p50 / base}
            for label, timing in parts.items()
        ],
    )
    ratio = lookup_timing.p50 / base
    section.target(
        "exact hit <= 5x SELECT 1 (p50)", ratio <= 5, f"{lookup_timing.p50:.0f} us vs {base:.0f} us = {ratio:.1f}x"
    )
    section.notes.append(
        f"The fake LLM was called {upstream} times (every call was a hit); the ledger holds "
        f"{ledger_rows:,} exact-hit rows."
    )
    return section
