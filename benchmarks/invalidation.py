"""Invalidation hooks: what a trigger that retires tagged entries adds to the application's own writes."""

from __future__ import annotations

import time
from statistics import median

import numpy as np

from pgcache import hooks
from pgcache.connections import Database

from .context import EMBEDDER, MAIN, Context
from .harness import Section, connect, copy_entries, measure

ROWS = {"toy": 300, "quick": 10_000, "full": 10_000}
REPEATS = {"toy": 1, "quick": 3, "full": 5}


def run(context: Context) -> Section:
    rows, repeats = ROWS[context.mode], REPEATS[context.mode]
    section = Section(
        "invalidation",
        "Invalidation hooks",
        f"An application table `prices` of {rows:,} rows and {rows:,} cache entries (1536-d vectors), each tagged "
        "`price:<sku>`. The same `UPDATE prices SET cents = cents + 1` over every row, without a hook and with "
        "`pgcache hooks add prices --tag-template 'price:{sku}' --on update` (which deletes all the entries in the "
        f"statement's transaction; the entries are loaded again before each run): median of {repeats} runs, "
        "commit included. Then single-row updates, one entry retired by each.",
    )
    with context.server.database() as url:
        with connect(url) as conn:
            conn.execute("CREATE TABLE prices (sku integer PRIMARY KEY, cents integer NOT NULL)")
            conn.execute("INSERT INTO prices SELECT n, 100 FROM generate_series(1, %s) AS n", (rows,))
        without = median(_bulk_update(url, rows) for _ in range(repeats))
        database = Database(url)
        try:
            hooks.add_hook(database, "prices", tag_templates=["price:{sku}"], events=["update"])
        finally:
            database.close()
        timed, retired = [], []
        for _ in range(repeats):
            _load_entries(url, rows)
            timed.append(_bulk_update(url, rows))
            retired.append(rows - _count(url))
        with_hook = median(timed)
        _load_entries(url, rows)
        single = _single_updates(url, min(rows, 500))
    section.table(
        f"`UPDATE` of all {rows:,} rows",
        [
            {"hook": "none", "ms": without * 1000, "entries retired": 0},
            {"hook": "price:{sku}, delete", "ms": with_hook * 1000, "entries retired": min(retired)},
        ],
    )
    section.table("Single-row `UPDATE` with the hook, one entry retired each", [single.summary()])
    section.notes.append(
        f"The hook added {(with_hook - without) * 1000:,.0f} ms to a statement changing {rows:,} rows, "
        f"{(with_hook - without) / rows * 1e6:,.1f} µs per row, deleting every entry in the same transaction."
    )
    return section


def _load_entries(url: str, rows: int) -> None:
    vectors = np.random.default_rng(3).standard_normal((rows, 1536)).astype(np.float32)
    copy_entries(
        url,
        (
            (MAIN.key(f"price of {n}"), MAIN.namespace, f"{n} costs $1", vectors[n - 1], MAIN.model)
            for n in range(1, rows + 1)
        ),
        embedder=EMBEDDER,
    )
    with connect(url) as conn:
        conn.execute("UPDATE pgcache_entries SET tags = ARRAY['price:' || split_part(prompt, ' ', 3)]")
        conn.execute("VACUUM ANALYZE pgcache_entries")


def _bulk_update(url: str, rows: int) -> float:
    with connect(url) as conn:
        started = time.perf_counter()
        conn.execute("UPDATE prices SET cents = cents + 1")
        return time.perf_counter() - started


def _count(url: str) -> int:
    with connect(url) as conn:
        return conn.execute("SELECT count(*) FROM pgcache_entries").fetchone()[0]


def _single_updates(url: str, count: int):
    with connect(url) as conn:
        return measure(lambda i: conn.execute("UPDATE prices SET cents = cents + 1 WHERE sku = %s", (i + 1,)), count)
