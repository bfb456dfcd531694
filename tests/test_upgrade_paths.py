"""Upgrading pgcache itself: a database at each earlier revision, with rows written in that revision's
schema, upgraded to head keeps every entry's exact and semantic hits and every ledger row's report.

Rows are written by introspection: whatever columns ``pgcache_entries`` and ``pgcache_lookups``
have at that revision, the ones an application of that version filled (keys, request, answer,
vector, usage; outcome, timings, tokens) get values and the rest keep their defaults.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from pgcache import Cache, db, keys

from .conftest import query

EMBEDDER = "test/upgrade-1536"
ENTRIES = 40
rng = np.random.default_rng(41)
VECTORS = rng.standard_normal((ENTRIES, 1536)).astype(np.float32)
VECTORS /= np.linalg.norm(VECTORS, axis=1, keepdims=True)
# A paraphrase of each entry: cosine about 0.95.
NEAR = VECTORS + 0.33 * rng.standard_normal((ENTRIES, 1536)).astype(np.float32) / np.sqrt(1536)
NEAR /= np.linalg.norm(NEAR, axis=1, keepdims=True)


class Vectors:
    """``question i`` is VECTORS[i]; ``paraphrase i`` is NEAR[i]."""

    name, dimensions, default_threshold = EMBEDDER, 1536, 0.9

    def embed(self, texts):
        return [(NEAR if text.startswith("paraphrase") else VECTORS)[int(text.split()[1])] for text in texts]


def revisions() -> list[str]:
    """Every revision before head, oldest first."""
    from alembic.script import ScriptDirectory

    chain = [revision.revision for revision in ScriptDirectory(str(db.migrations_dir())).walk_revisions()]
    return list(reversed(chain))[:-1]


def columns(conn: psycopg.Connection, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s AND table_schema = 'public'", (table,)
    ).fetchall()
    return {row[0] for row in rows}


def vector_literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{value:.7g}" for value in vector) + "]"


def write_old_rows(url: str) -> None:
    """Entries and ledger rows as an application of this revision wrote them."""
    now = datetime.now(UTC)
    with psycopg.connect(url, autocommit=True) as conn:
        entry_columns, ledger_columns = columns(conn, "pgcache_entries"), columns(conn, "pgcache_lookups")
        for i in range(ENTRIES):
            key = keys.request_key(f"question {i}", model="gpt-4o-mini", namespace="default")
            answer = {
                "object": "chat.completion",
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {i}"}}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
            }
            values = {
                "namespace": key.namespace,
                "exact_key": key.exact_key,
                "scope_key": key.scope_key,
                "model": key.model,
                "embedder": EMBEDDER,
                "prompt": key.prompt,
                "request": json.dumps(key.request),
                "response": json.dumps(answer),
                "embedding": vector_literal(VECTORS[i]),
                "source": "llm",
                "prompt_tokens": 9,
                "completion_tokens": 3,
                "total_tokens": 12,
            }
            values = {name: value for name, value in values.items() if name in entry_columns}
            names = ", ".join(values)
            marks = ", ".join(f"%({name})s" for name in values)
            entry_id = conn.execute(
                f"INSERT INTO pgcache_entries ({names}) VALUES ({marks}) RETURNING id", values
            ).fetchone()[0]
            for outcome, similarity in (("miss", None), ("exact", None), ("semantic", 0.95)):
                row = {
                    "id": uuid.uuid4(),
                    "at": now - timedelta(minutes=5),
                    "namespace": "default",
                    "model": "gpt-4o-mini",
                    "outcome": outcome,
                    "entry_id": None if outcome == "miss" else entry_id,
                    "embedder": EMBEDDER,
                    "similarity": similarity,
                    "threshold": 0.9 if outcome == "semantic" else None,
                    "latency_ms": 1.5,
                    "prompt_tokens": 9,
                    "completion_tokens": 3,
                    "prompt": f"question {i}",
                }
                row = {name: value for name, value in row.items() if name in ledger_columns}
                names = ", ".join(row)
                marks = ", ".join(f"%({name})s" for name in row)
                conn.execute(f"INSERT INTO pgcache_lookups ({names}) VALUES ({marks})", row)


@pytest.mark.parametrize("revision", revisions())
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
