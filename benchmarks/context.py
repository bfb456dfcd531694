"""What every scenario gets: the server, the sizes of the chosen mode, and shared helpers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pgcache.connections import Database
from pgcache.lookup import find_nearest

from .harness import Scope, Server, copy_entries, measure
from .vectors import ClusteredVectors, exact_nearest


@dataclass(frozen=True)
class Sizes:
    """Workload sizes of one mode (toy: the test suite's smoke run; quick; full)."""

    exact_lookups: int
    semantic_entries: tuple[int, ...]
    semantic_queries: int
    peer_entries: int
    peer_slow_lookups: int
    warm_lines: int
    insert_rows: int
    sweep_rows: int
    concurrency_seconds: float
    lifecycle_entries: tuple[int, ...]


MODES = {
    "toy": Sizes(300, (800,), 30, 300, 2, 200, 500, 3_000, 1.0, (300, 600, 1_200)),
    "quick": Sizes(2_000, (10_000,), 200, 2_000, 1, 3_000, 5_000, 30_000, 2.0, (1_000, 3_000)),
    "full": Sizes(
        20_000, (10_000, 100_000), 500, 10_000, 5, 20_000, 20_000, 100_000, 10.0, (1_000, 10_000, 30_000, 100_000)
    ),
}

MAIN = Scope("main")
SMALL_SCOPES = [Scope(f"tenant-{i}") for i in range(50)]
EMBEDDER = "bench-1536"


@dataclass
class Context:
    server: Server
    mode: str

    @property
    def sizes(self) -> Sizes:
        return MODES[self.mode]


@dataclass
class LoadedTable:
    """A database holding ``n`` entries: 90% in the main scope, 10% across 50 small scopes, 5% expired."""

    url: str
    data: ClusteredVectors
    main_live: np.ndarray  # indices (= id - 1) of live main-scope entries


def load_table(context: Context, n: int, seed: int = 7) -> LoadedTable:
    data = ClusteredVectors(n, seed=seed)
    rng = np.random.default_rng(seed + 1)
    in_main = rng.random(n) < 0.9
    expired = rng.random(n) < 0.05
    scopes = [MAIN if in_main[i] else SMALL_SCOPES[i % len(SMALL_SCOPES)] for i in range(n)]
    url = context.server.new_database()
    copy_entries(
        url,
        (
            (scopes[i].key(f"question {i}"), scopes[i].namespace, f"answer {i}", data.entries[i], scopes[i].model)
            for i in range(n)
        ),
        embedder=EMBEDDER,
        expired=expired,
    )
    return LoadedTable(url, data, np.where(in_main & ~expired)[0])


def search_timings(database: Database, table: LoadedTable, queries: np.ndarray, scope: Scope = MAIN):
    """Time pgcache's semantic query (database time, no embedding) and score recall@1 against exact search."""
    scope_key = scope.key("x").scope_key
    found: list[int] = []
    with database.connection() as conn:

        def lookup(i: int) -> None:
            row = find_nearest(conn, scope_key, EMBEDDER, queries[i])
            found.append(row.id - 1 if row else -1)

        measure(lookup, min(20, len(queries)))  # warm the plan cache and buffers
        found.clear()
        timing = measure(lookup, len(queries))
    truth = table.main_live[exact_nearest(table.data.entries[table.main_live], queries)[0]]
    recall = float(np.mean(np.array(found) == truth))
    return timing, recall
