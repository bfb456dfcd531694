"""Storage options for the embedding side by side (the ``storage`` phase of benchmarks/large.py).

The same vectors and the same other columns of a pgcache row, in plain tables that differ only in
the embedding column: full-precision ``vector(1536)`` (pgcache's column before migration 0010), or
``halfvec(1536)`` stored out of line in TOAST (its default, EXTERNAL), inline in the heap
(STORAGE MAIN), inline with lz4 compression. Each table has pgcache's other indexes and an ivfflat
``halfvec_cosine_ops`` index with pgcache's lists and probes.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import psycopg

from pgcache import maintenance
from pgcache.lookup import CANDIDATES

from .harness import Section, Timing, connect, copy_entries, measure
from .neighbourhoods import PARAPHRASES, Neighbourhoods, exact_top2, toward

if TYPE_CHECKING:
    from .large import Run

HALF = "halfvec(1536)"
LIVE = "(expires_at IS NULL OR expires_at > now())"
BAND = (0.75, 0.99)


@dataclass(frozen=True)
class Option:
    key: str
    label: str
    column: str
    storage: str | None = None
    compression: str | None = None
    toast_tuple_target: int | None = None
    index_expression: str | None = None
    """What the ivfflat index covers, if not the whole vector in half precision (pgcache's own expression)."""

    @property
    def name(self) -> str:
        return f"({self.key}) {self.label}"

    @property
    def table(self) -> str:
        return f"storage_{self.key}"

    @property
    def indexed(self) -> str:
        """What the ivfflat index is built on."""
        if self.index_expression:
            return self.index_expression
        return "embedding" if self.column == HALF else f"(embedding::{HALF})"

    def indexed_query(self, parameter: str) -> str:
        """The same expression over the query vector."""
        return re.sub(r"\bembedding\b", f"{parameter}::{self.column}", self.indexed)


OPTIONS = (
    Option("a", "vector(1536), default storage (EXTERNAL: TOAST)", "vector(1536)"),
    Option("b", "halfvec(1536), default storage (EXTERNAL: TOAST)", HALF),
    Option("c", "halfvec(1536), STORAGE MAIN (inline in the heap)", HALF, "MAIN"),
    Option("d", "halfvec(1536), STORAGE MAIN + lz4 compression", HALF, "MAIN", "lz4"),
    Option("e", "halfvec(1536), STORAGE MAIN + toast_tuple_target 8160 (whole row inline)", HALF, "MAIN", None, 8160),
)


def run_storage(run: Run) -> Section:
    from .large import EMBEDDER, MAIN, relation_sizes

    n, q = run.sizes.side_entries, run.sizes.queries
    exact_count = min(q, 30)
    pairs = min(2000, n)
    section = Section(
        "storage",
        f"Storage options for the embedding at {n:,} entries",
        f"{n:,} entries of the neighbourhood data (1536-d) with the other columns of a pgcache row (copied from "
        "pgcache_entries: namespace, keys, prompt, request and response JSON, timestamps), in plain tables that "
        "differ only in the embedding column (and, for (e), the table's toast_tuple_target; (f), when pgcache's own "
        "index covers less than the whole vector, is (b) indexed as pgcache indexes). Each has pgcache's "
        f"other indexes and an ivfflat `halfvec_cosine_ops` index with `maintenance.recommended_lists({n:,})` "
        "lists, searched as pgcache_neighbours() does (the index "
        f"picks {CANDIDATES} candidates, the stored column ranks them; pgcache's probes, iterative scan). Exact "
        f"search: every row of the scope compared ({exact_count} queries). Recall@1 against numpy exact search on "
        f"the float32 vectors ({len(PARAPHRASES)} x {q} paraphrases at ~0.95/0.90/0.85). Similarity error: "
        f"`1 - (embedding <=> query)` computed by PostgreSQL against float64 numpy for {pairs:,} query/entry pairs "
        f"with similarity {BAND[0]}–{BAND[1]}.",
    )
    data = Neighbourhoods(n, seed=505)
    entries = data.all()
    rng = np.random.default_rng(506)
    hits = np.concatenate(
        [data.paraphrase(entries[rng.integers(0, n, q)], closeness, rng) for closeness in PARAPHRASES.values()]
    )
    truth = exact_top2([(0, entries)], hits, between_chunks=run.clock.check)[0]
    anchors = rng.integers(0, n, pairs)
    band_queries = toward(entries[anchors], rng.uniform(*BAND, pairs), rng)
    e64, q64 = entries[anchors].astype(np.float64), band_queries.astype(np.float64)
    exact_similarity = np.sum(e64 * q64, axis=1) / np.linalg.norm(e64, axis=1) / np.linalg.norm(q64, axis=1)
    lists = maintenance.recommended_lists(n)
    url = run.new_database()
    scope_key = MAIN.key("x").scope_key
    size_rows, search_rows, error_rows = [], [], []
    judged: dict[str, tuple[float, float]] = {}
    try:
        run.log(f"  {n:,} rows of other columns, then the vectors beside them")
        copy_entries(
            url,
            ((MAIN.key(f"question {i}"), MAIN.namespace, f"answer {i}", None, MAIN.model) for i in range(n)),
            embedder=EMBEDDER,
        )
        with connect(url) as conn:
            conn.execute("CREATE UNLOGGED TABLE bench_vectors (id bigint PRIMARY KEY, embedding vector(1536))")
            first = conn.execute("SELECT min(id) FROM pgcache_entries").fetchone()[0]
            with conn.cursor() as cur, cur.copy("COPY bench_vectors FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "vector"])
                for i in range(n):
                    copy.write_row((first + i, entries[i]))
            columns = [
                row[0]
                for row in conn.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = 'pgcache_entries'::regclass "
                    "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
                )
            ]
            index_defs = [
                row[0]
                for row in conn.execute(
                    "SELECT indexdef FROM pg_indexes WHERE tablename = 'pgcache_entries' "
                    "AND schemaname = current_schema() AND indexdef NOT LIKE '%USING ivfflat%'"
                )
            ]
            lz4 = conn.execute(
                "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
            ).fetchone()[0]
            probes = conn.execute("SELECT pgcache_probes(%s)", (lists,)).fetchone()[0]
            options = list(OPTIONS)
            pgcache_index = _pgcache_index_expression(conn)
            if pgcache_index is not None:
                options.append(
                    Option("f", f"as (b), ivfflat over pgcache's own index expression {pgcache_index}", HALF,
                           index_expression=pgcache_index)
                )  # fmt: skip
            for option in options:
                if option.compression == "lz4" and not lz4:
                    size_rows.append({"option": option.name, "heap": "not available: this PostgreSQL has no lz4"})
                    continue
                run.log(f"  {option.key}: {option.label}")
                built = _build(conn, option, columns, index_defs, lists, EMBEDDER)
                sizes = relation_sizes(conn, option.table)
                stored, compressed = conn.execute(
                    f"SELECT avg(pg_column_size(embedding)), "
                    f"count(*) FILTER (WHERE pg_column_compression(embedding) IS NOT NULL) FROM {option.table}"
                ).fetchone()
                rows = sizes["rows"]
                total = sizes["heap"] + sizes["toast"] + sizes["ivfflat"] + sizes["other"]
                size_rows.append(
                    {
                        "option": option.name,
                        "heap": round(sizes["heap"] / rows),
                        "TOAST (+ index)": round(sizes["toast"] / rows),
                        "ivfflat": round(sizes["ivfflat"] / rows),
                        "other indexes": round(sizes["other"] / rows),
                        "total": round(total / rows),
                        "GiB per 1M": total / rows * 1e6 / 2**30,
                        "stored vector bytes": float(stored),
                        "compressed vectors": compressed,
                    }
                )
                run.clock.check()
                exact_timing, exact_found = _search(conn, option, hits[:exact_count], scope_key, EMBEDDER, exact=True)
                conn.execute("SELECT set_config('ivfflat.probes', %s, false)", (str(probes),))
                conn.execute("SELECT set_config('ivfflat.max_probes', %s, false)", (str(min(lists, 4 * probes)),))
                conn.execute("SET ivfflat.iterative_scan = relaxed_order")
                conn.execute("SET enable_sort = off")
                index_timing, index_found = _search(conn, option, hits, scope_key, EMBEDDER, exact=False)
                uses_index = _uses_index(conn, option, hits[0], scope_key, EMBEDDER)
                conn.execute("RESET enable_sort")
                exact_recall = float(np.mean(exact_found - first == truth[:exact_count]))
                index_recall = float(np.mean(index_found - first == truth))
                search_rows.append(
                    {
                        "option": option.name,
                        "exact p50 ms": exact_timing.p50 / 1000,
                        "exact p99 ms": exact_timing.p99 / 1000,
                        "exact recall@1": exact_recall,
                        "index p50 ms": index_timing.p50 / 1000,
                        "index p99 ms": index_timing.p99 / 1000,
                        "index recall@1": index_recall,
                        "plan uses the ivfflat index": uses_index,
                        "insert s": built["insert"],
                        "ivfflat build s": built["build"],
                    }
                )
                errors = np.abs(_similarities(conn, option, band_queries, anchors + first) - exact_similarity)
                error_rows.append(
                    {
                        "option": option.name,
                        "pairs": len(errors),
                        "median |error|": f"{np.median(errors):.2e}",
                        "p99.9 |error|": f"{np.percentile(errors, 99.9):.2e}",
                        "max |error|": f"{errors.max():.2e}",
                    }
                )
                judged[option.key] = (index_recall, float(errors.max()))
                conn.execute(f"DROP TABLE {option.table}")
    finally:
        run.drop(url)
    section.table(f"Bytes per entry by part at {n:,} entries (after VACUUM)", size_rows)
    section.table(f"Search ({lists} lists, probes {probes})", search_rows)
    section.table("Cosine similarity computed by PostgreSQL against float64 numpy", error_rows)
    half = {key: value for key, value in judged.items() if key != "a"}
    if half:
        section.target(
            "halfvec storage: recall@1 >= 0.99 against full precision",
            min(recall for recall, _ in half.values()) >= 0.99,
            ", ".join(f"({key}) {recall:.3f}" for key, (recall, _) in half.items())
            + (f"; vector(1536) {judged['a'][0]:.3f}" if "a" in judged else ""),
        )
        section.target(
            "halfvec storage: similarity error < 1e-3",
            max(error for _, error in half.values()) < 1e-3,
            "max |error| " + ", ".join(f"({key}) {error:.1e}" for key, (_, error) in half.items()),
        )
    toasted = {row["option"][1]: row["TOAST (+ index)"] for row in size_rows if isinstance(row.get("total"), int)}
    if toasted.get("c", 0) > 100:
        section.notes.append(
            f"With STORAGE MAIN alone (c) a row of about 3.7 KB is still over the table's toast_tuple_target "
            f"(2 KB by default), so PostgreSQL moves the row's other wide values (request and response JSON) out of "
            f"line instead: (c) keeps {toasted['c']:,} bytes per entry in TOAST, and a hit reads them from there. "
            "With `ALTER TABLE ... SET (toast_tuple_target = 8160)` (e) the whole row stays in the heap, two rows "
            "per 8 KB page."
        )
    if not lz4:
        section.notes.append(
            "Option (d) was not measured: this PostgreSQL was built without lz4 (`default_toast_compression` "
            "accepts pglz only). STORAGE MAIN already lets the server try pglz on each value; the `compressed "
            "vectors` column shows how many it kept compressed."
        )
    return section


def _pgcache_index_expression(conn: psycopg.Connection) -> str | None:
    """The expression of pgcache_entries' ivfflat index when it is more than the vector in half precision."""
    row = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'pgcache_entries' AND schemaname = current_schema() "
        "AND indexdef LIKE '%USING ivfflat%'"
    ).fetchone()
    match = re.search(r"USING ivfflat \((.*) halfvec_cosine_ops\)", row[0]) if row else None
    if match is None:
        return None
    expression = match.group(1)
    if re.sub(r"[()\s]|::halfvec\(1536\)", "", expression) == "embedding":
        return None
    return expression


def _build(
    conn: psycopg.Connection, option: Option, columns: list[str], index_defs: list[str], lists: int, embedder: str
) -> dict[str, float]:
    table = option.table
    conn.execute(f"CREATE TABLE {table} (LIKE pgcache_entries INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    conn.execute(f"ALTER TABLE {table} ALTER COLUMN embedding TYPE {option.column}")
    if option.storage:
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN embedding SET STORAGE {option.storage}")
    if option.compression:
        conn.execute(f"ALTER TABLE {table} ALTER COLUMN embedding SET COMPRESSION {option.compression}")
    if option.toast_tuple_target:
        conn.execute(f"ALTER TABLE {table} SET (toast_tuple_target = {option.toast_tuple_target})")
    values = []
    for column in columns:
        if column == "embedding":
            values.append(f"v.embedding::{option.column}")
        elif column == "embedder":
            values.append("%(embedder)s")
        else:
            values.append(f"e.{column}")
    started = time.perf_counter()
    conn.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(values)} "
        "FROM pgcache_entries AS e JOIN bench_vectors AS v ON v.id = e.id",
        {"embedder": embedder},
    )
    inserted = time.perf_counter() - started
    for j, definition in enumerate(index_defs):
        conn.execute(
            re.sub(r"^CREATE (UNIQUE )?INDEX \S+ ON \S+", rf"CREATE \g<1>INDEX {table}_{j} ON {table}", definition)
        )
    conn.execute("SET maintenance_work_mem = '512MB'")
    started = time.perf_counter()
    conn.execute(
        f"CREATE INDEX {table}_ivfflat ON {table} USING ivfflat ({option.indexed} halfvec_cosine_ops) "
        f"WITH (lists = {lists})"
    )
    build = time.perf_counter() - started
    conn.execute("RESET maintenance_work_mem")
    conn.execute(f"VACUUM (ANALYZE) {table}")
    return {"insert": inserted, "build": build}


def _query(option: Option, exact: bool) -> str:
    where = f"scope_key = %(s)s AND embedder = %(e)s AND {LIVE}"
    if exact:
        return (
            f"SELECT id FROM {option.table} WHERE {where} ORDER BY (embedding <=> %(q)s::{option.column}) + 0 LIMIT 1"
        )
    return (
        f"WITH c AS MATERIALIZED (SELECT id, embedding <=> %(q)s::{option.column} AS d FROM {option.table} "
        f"WHERE {where} ORDER BY {option.indexed} <=> {option.indexed_query('%(q)s')} LIMIT {CANDIDATES}) "
        "SELECT id FROM c ORDER BY d + 0 LIMIT 1"
    )


def _search(
    conn: psycopg.Connection, option: Option, vectors: np.ndarray, scope_key: bytes, embedder: str, *, exact: bool
) -> tuple[Timing, np.ndarray]:
    statement = _query(option, exact)
    found = np.full(len(vectors), -1, dtype=np.int64)

    def search(i: int) -> None:
        row = conn.execute(statement, {"q": vectors[i], "s": scope_key, "e": embedder}).fetchone()
        found[i] = row[0] if row else -1

    measure(search, min(5 if exact else 20, len(vectors)))
    return measure(search, len(vectors)), found


def _uses_index(conn: psycopg.Connection, option: Option, vector: np.ndarray, scope_key: bytes, embedder: str) -> bool:
    plan = conn.execute(f"EXPLAIN {_query(option, False)}", {"q": vector, "s": scope_key, "e": embedder}).fetchall()
    return any(f"{option.table}_ivfflat" in row[0] for row in plan)


def _similarities(conn: psycopg.Connection, option: Option, vectors: np.ndarray, ids: np.ndarray) -> np.ndarray:
    statement = f"SELECT 1 - (embedding <=> %(q)s::{option.column}) FROM {option.table} WHERE id = %(id)s"
    return np.array(
        [
            conn.execute(statement, {"q": vector, "id": int(i)}).fetchone()[0]
            for vector, i in zip(vectors, ids, strict=True)
        ]
    )
