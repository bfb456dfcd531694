"""Semantic lookup at 10k and 100k entries, and what the entries cost in storage."""

from __future__ import annotations

import time

import numpy as np

from pgcache import Cache, maintenance
from pgcache.connections import Database

from .context import EMBEDDER, MAIN, SMALL_SCOPES, Context, load_table, search_timings
from .harness import Scope, Section, connect, latency_row, measure
from .vectors import similarity_profile


class PrecomputedEmbedder:
    """Hands out vectors computed beforehand, so a timed lookup pays for no model."""

    name = EMBEDDER
    dimensions = 1536

    def __init__(self) -> None:
        self.next: np.ndarray | None = None

    def embed(self, texts):
        return np.repeat(self.next[None, :], len(texts), axis=0)


def run(context: Context) -> Section:
    sizes = context.sizes
    section = Section(
        "semantic",
        "Semantic lookup (database time, no embedding call)",
        "Clustered 1536-d vectors (see the similarity profile): 90% of entries in one scope, 10% spread over 50 "
        "small scopes, 5% expired. The index is trained as pgcache trains it (2 x sqrt(rows) lists), then "
        "`pgcache_nearest()` is timed through pgcache's own connection pool: `paraphrase` queries sit near one "
        "stored entry (hits), `novel` ones near no entry (misses), `small scope` queries go to one of the 50 small "
        "scopes (n / 500 entries: exact search), `empty scope` to a scope with no entries. Recall@1 compares the "
        "returned entry with exact search over the live entries of the scope. `whole lookup` is `Cache.lookup()` "
        "for a paraphrase: exact-tier miss, semantic query, ledger record; the embedding is precomputed.",
    )
    for n in sizes.semantic_entries:
        started = time.perf_counter()
        table = load_table(context, n)
        loaded = time.perf_counter() - started
        database = Database(table.url, max_size=2, statement_timeout=60)
        try:
            result = maintenance.reindex(database)
            with connect(table.url) as conn:
                conn.execute("ANALYZE pgcache_entries")
            paraphrases, _ = table.data.paraphrases(sizes.semantic_queries)
            novel = table.data.novel(sizes.semantic_queries)
            hit_timing, hit_recall = search_timings(database, table, paraphrases)
            miss_timing, miss_recall = search_timings(database, table, novel)
            small_timing, _ = search_timings(database, table, paraphrases, SMALL_SCOPES[0])
            empty_timing, _ = search_timings(database, table, novel, Scope("nobody"))
            whole = _whole_lookup(table.url, paraphrases[: min(200, len(paraphrases))])
            rows = [
                latency_row("paraphrase (hit)", hit_timing, hit_recall, column="lookup"),
                latency_row("novel (miss)", miss_timing, miss_recall, column="lookup"),
                latency_row("small scope (exact search)", small_timing, column="lookup"),
                latency_row("empty scope", empty_timing, column="lookup"),
                latency_row("whole lookup, paraphrase", whole, column="lookup"),
            ]
            section.table(
                f"{n:,} entries ({result.after.lists} lists, probes "
                f"{_probes(table.url)}; loaded in {loaded:.0f}s, index built in {result.seconds:.0f}s)",
                rows,
            )
            if n >= 10_000:
                label = f"{n // 1000}k"
                section.target(
                    f"p50 <= 5 ms at {label}",
                    hit_timing.p50 <= 5000 and miss_timing.p50 <= 5000,
                    f"hit {hit_timing.p50 / 1000:.2f} ms, miss {miss_timing.p50 / 1000:.2f} ms",
                )
                section.target(
                    f"p99 <= 20 ms at {label}",
                    hit_timing.p99 <= 20000 and miss_timing.p99 <= 20000,
                    f"hit {hit_timing.p99 / 1000:.2f} ms, miss {miss_timing.p99 / 1000:.2f} ms",
                )
                section.target(f"recall@1 >= 0.95 at {label}", hit_recall >= 0.95, f"{hit_recall:.3f}")
                section.target(
                    f"a miss <= 5 ms at {label}",
                    empty_timing.p99 <= 5000 and miss_timing.p50 <= 5000,
                    f"empty scope p99 {empty_timing.p99 / 1000:.2f} ms, novel p50 {miss_timing.p50 / 1000:.2f} ms",
                )
            if n == max(sizes.semantic_entries):
                section.table(
                    "Similarity profile of the data (cosine to the nearest live entry)",
                    similarity_profile(table.data.entries, {"paraphrase": paraphrases[:300], "novel": novel[:300]}),
                )
                _storage(context, section, table, n, paraphrases, database)
        finally:
            database.close()
            context.server.drop(table.url)
    return section


def _probes(url: str) -> int:
    with connect(url) as conn:
        return conn.execute("SELECT pgcache_probes(pgcache_index_lists())").fetchone()[0]


def _whole_lookup(url: str, queries: np.ndarray):
    embedder = PrecomputedEmbedder()
    with Cache(url, embedder=embedder, threshold=0.9, guard=False, model=MAIN.model, namespace=MAIN.namespace) as cache:

        def lookup(i: int) -> None:
            embedder.next = queries[i % len(queries)]
            cache.lookup(MAIN.messages(f"paraphrase {i}"))

        return measure(lookup, len(queries), warmup=10)


SIZES_SQL = """
SELECT pg_relation_size('pgcache_entries'),
       coalesce(pg_total_relation_size(reltoastrelid), 0),
       pg_relation_size('pgcache_entries_embedding_idx'),
       pg_indexes_size('pgcache_entries') - pg_relation_size('pgcache_entries_embedding_idx'),
       (SELECT count(*) FROM pgcache_entries)
FROM pg_class WHERE oid = 'pgcache_entries'::regclass
"""


def _storage(context: Context, section: Section, table, n: int, queries: np.ndarray, database: Database) -> None:
    """Bytes per entry by part, the projection to 1M entries, and an index over whole vectors beside pgcache's."""
    with connect(table.url) as conn:
        conn.execute("VACUUM ANALYZE pgcache_entries")
        heap, toast, vector_index, other_indexes, rows = conn.execute(SIZES_SQL).fetchone()
        lists = conn.execute("SELECT pgcache_index_lists()").fetchone()[0]
        probes = conn.execute("SELECT pgcache_probes(%s)", (lists,)).fetchone()[0]
        started = time.perf_counter()
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute(
            f"CREATE INDEX bench_vector_idx ON pgcache_entries USING ivfflat "
            f"(embedding halfvec_cosine_ops) WITH (lists = {lists})"
        )
        vector_build = time.perf_counter() - started
        full_index = conn.execute("SELECT pg_relation_size('bench_vector_idx')").fetchone()[0]
        conn.execute("ANALYZE pgcache_entries")
        scope_key = MAIN.key("x").scope_key
        conn.execute(f"SET ivfflat.probes = {probes}")
        conn.execute("SET ivfflat.iterative_scan = relaxed_order")
        conn.execute("SET enable_sort = off")
        conn.execute("SET jit = off")
        found: list[int] = []

        def full_precision_lookup(i: int) -> None:
            row = conn.execute(
                """
                WITH c AS MATERIALIZED (
                    SELECT id, embedding <=> %(q)s::halfvec(1536) AS d FROM pgcache_entries
                    WHERE scope_key = %(s)s AND embedder = %(e)s AND (expires_at IS NULL OR expires_at > now())
                    ORDER BY embedding <=> %(q)s::halfvec(1536) LIMIT 4)
                SELECT id FROM c ORDER BY d + 0 LIMIT 1""",
                {"s": scope_key, "e": EMBEDDER, "q": queries[i]},
                binary=True,
            ).fetchone()
            found.append(row[0] - 1 if row else -1)

        measure(full_precision_lookup, 20)
        found.clear()
        vector_timing = measure(full_precision_lookup, len(queries))
        conn.execute("DROP INDEX bench_vector_idx")
    from .vectors import exact_nearest

    truth = table.main_live[exact_nearest(table.data.entries[table.main_live], queries)[0]]
    vector_recall = float(np.mean(np.array(found) == truth))
    half_timing, half_recall = search_timings(database, table, queries)
    per_entry = {
        "heap": heap / rows,
        "TOAST (the 1536-d halfvec)": toast / rows,
        "ivfflat index (first 768 dimensions)": vector_index / rows,
        "other indexes": other_indexes / rows,
    }
    total = sum(per_entry.values())
    section.table(
        f"Storage at {rows:,} entries (after VACUUM)",
        [
            {"part": part, "bytes per entry": round(value), "projected for 1M entries (GiB)": value * 1e6 / 2**30}
            for part, value in [*per_entry.items(), ("total", total)]
        ],
    )
    section.table(
        f"ivfflat over the first 768 dimensions vs over all 1536 at {rows:,} entries ({lists} lists, probes {probes})",
        [
            {
                "index": "first 768 dimensions, 20 candidates ranked by the whole vector (pgcache's)",
                "size MiB": vector_index / 2**20,
                "recall@1": half_recall,
                "p50 ms": half_timing.p50 / 1000,
                "p99 ms": half_timing.p99 / 1000,
            },
            {
                "index": "all 1536 dimensions",
                "size MiB": full_index / 2**20,
                "recall@1": vector_recall,
                "p50 ms": vector_timing.p50 / 1000,
                "p99 ms": vector_timing.p99 / 1000,
                "build s": vector_build,
            },
        ],
    )
    section.notes.append(
        f"The index over the first 768 dimensions takes {vector_index / 2**20:.0f} MiB against "
        f"{full_index / 2**20:.0f} MiB for the same lists over all 1536, at recall@1 {half_recall:.3f} against "
        f"{vector_recall:.3f}: a 1536-d half-precision vector is 3 KB, so an index page holds two of them and five "
        "768-d heads. The heap keeps each whole vector, in half precision, in TOAST."
    )
