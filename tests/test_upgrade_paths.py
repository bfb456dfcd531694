"""Upgrading pgcache itself: a database at each earlier revision, with rows written in that revision's
columns (tests/old_schema.py), upgraded to head keeps every entry's exact and semantic hits and
every ledger row's report."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import psycopg
import pytest

from pgcache import Cache, db

from . import old_schema
from .conftest import query

ENTRIES = 40
rng = np.random.default_rng(41)
VECTORS = rng.standard_normal((ENTRIES, 1536)).astype(np.float32)
VECTORS /= np.linalg.norm(VECTORS, axis=1, keepdims=True)
# A paraphrase of each entry: cosine about 0.95.
NEAR = VECTORS + 0.33 * rng.standard_normal((ENTRIES, 1536)).astype(np.float32) / np.sqrt(1536)
NEAR /= np.linalg.norm(NEAR, axis=1, keepdims=True)


class Vectors:
    """``question i`` is VECTORS[i]; ``paraphrase i`` is NEAR[i]."""

    name, dimensions, default_threshold = old_schema.EMBEDDER, 1536, 0.9

    def embed(self, texts):
        return [(NEAR if text.startswith("paraphrase") else VECTORS)[int(text.split()[1])] for text in texts]


def write_old_rows(url: str) -> None:
    """Entries and ledger rows (a miss, an exact and a semantic hit each) as this revision's application wrote them."""
    at = old_schema.now() - timedelta(minutes=5)
    with psycopg.connect(url, autocommit=True) as conn:
        entry_columns = old_schema.columns(conn, "pgcache_entries")
        ledger_columns = old_schema.columns(conn, "pgcache_lookups")
        for i in range(ENTRIES):
            entry_id = old_schema.insert_entry(conn, f"question {i}", f"answer {i}", VECTORS[i], entry_columns)
            for outcome in ("miss", "exact", "semantic"):
                hit = None if outcome == "miss" else entry_id
                old_schema.insert_lookup(conn, f"question {i}", outcome, hit, at, ledger_columns)


@pytest.mark.parametrize("revision", old_schema.chain()[:-1])
def test_rows_written_at_an_old_revision_still_hit_and_report_after_upgrading(revision, empty_database_url):
    url = empty_database_url
    db.upgrade(url, revision)
    assert db.current_revision(url) == revision
    write_old_rows(url)
    db.upgrade(url)
    assert db.current_revision(url) == db.head_revision()
    assert query(url, "SELECT count(*) FROM pgcache_entries") == [(ENTRIES,)]
    with Cache(url, embedder=Vectors()) as cache:
        totals = cache.report()["totals"]
        assert (totals["lookups"], totals["exact_hits"], totals["semantic_hits"]) == (3 * ENTRIES, ENTRIES, ENTRIES)
        assert (totals["prompt_tokens_saved"], totals["completion_tokens_saved"]) == (2 * ENTRIES * 9, 2 * ENTRIES * 3)
        for i in range(0, ENTRIES, 7):
            exact = cache.lookup(f"question {i}")
            assert exact is not None and exact.status == "exact" and exact.content == f"answer {i}"
            near = cache.lookup(f"paraphrase {i}")
            assert near is not None and near.status == "semantic" and near.content == f"answer {i}"
        # The old rows take part in maintenance as new ones do.
        cache.reindex()
        assert cache.lookup(f"paraphrase {ENTRIES - 1}").content == f"answer {ENTRIES - 1}"
