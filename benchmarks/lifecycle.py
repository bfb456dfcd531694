"""Index lifecycle: recall and latency as the table grows by inserts after the index was built."""

from __future__ import annotations

import numpy as np

from pgcache import maintenance
from pgcache.connections import Database
from pgcache.queries import EXACT_SEARCH_ROWS

from .context import EMBEDDER, MAIN, Context, LoadedTable, search_timings
from .harness import Section, connect, copy_entries
from .vectors import ClusteredVectors


def run(context: Context) -> Section:
    steps = context.sizes.lifecycle_entries
    queries_per_step = min(200, context.sizes.semantic_queries)
    section = Section(
        "lifecycle",
        "Index lifecycle",
        f"One scope grows {' -> '.join(f'{n:,}' for n in steps)} entries by inserts (clustered 1536-d vectors, new "
        "phrasings spread over every intent). At each size the paraphrase queries of the semantic scenario are "
        "timed with the index as it was last trained (at the previous size; at the first size: pgcache's initial "
        "one-list index, i.e. exact search), then again after `pgcache reindex` with pgcache's policy "
        f"(1 list below {EXACT_SEARCH_ROWS:,} rows, else 2 x sqrt(rows); probes = max(2, ceil(sqrt(lists) / 8))).",
    )
    data = ClusteredVectors(max(steps), seed=11)
    url = context.server.new_database()
    database = Database(url, max_size=2, statement_timeout=120)
    rows = []
    try:
        loaded = 0
        for n in steps:
            copy_entries(
                url,
                (
                    (MAIN.key(f"question {i}"), MAIN.namespace, f"answer {i}", data.entries[i], MAIN.model)
                    for i in range(loaded, n)
                ),
                embedder=EMBEDDER,
            )
            loaded = n
            with connect(url) as conn:
                conn.execute("ANALYZE pgcache_entries")
            table = LoadedTable(url, _Prefix(data, n), np.arange(n))
            queries, _ = data.paraphrases(queries_per_step, among=n)
            before = maintenance.index_status(database)
            stale, stale_recall = search_timings(database, table, queries)
            result = maintenance.reindex(database)
            fresh, fresh_recall = search_timings(database, table, queries)
            rows.append(
                {
                    "entries": n,
                    "trained for (lists)": before.lists,
                    "as trained: p50 ms": stale.p50 / 1000,
                    "p99 ms": stale.p99 / 1000,
                    "recall@1": stale_recall,
                    "retrained lists": result.after.lists,
                    "reindex s": result.seconds,
                    "retrained: p50 ms": fresh.p50 / 1000,
                    "p99 ms ": fresh.p99 / 1000,
                    "recall@1 ": fresh_recall,
                }
            )
    finally:
        database.close()
        context.server.drop(url)
    section.table("Growth", rows)
    section.notes.append(
        f"Policy: exact search (one list) while the table is under {EXACT_SEARCH_ROWS:,} rows, where comparing "
        "every vector still costs a few milliseconds; 2 x sqrt(rows) lists above, retrained by `pgcache warm` and "
        "`pgcache sweep` whenever the table has doubled or halved since training, which keeps a lookup's cost "
        "near what the retrained column shows; probes grow with sqrt(lists) so recall holds as lists multiply."
    )
    return section


class _Prefix:
    """The first ``n`` entries of a data set, as ``search_timings`` expects."""

    def __init__(self, data: ClusteredVectors, n: int) -> None:
        self.entries = data.entries[:n]
