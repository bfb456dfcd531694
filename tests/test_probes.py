"""The ``pgcache.probes`` setting (migration 0011): lookups probe as many ivfflat lists as an operator chose."""

from __future__ import annotations

import logging

import numpy as np
import psycopg
import pytest

from pgcache import Cache, db, keys
from pgcache.connections import Database
from pgcache.lookup import find_nearest

from .conftest import query

ENTRIES = 2000
LISTS = 40
EMBEDDER = "test/probes-1536"
rng = np.random.default_rng(29)


def unit(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=-1, keepdims=True)).astype(np.float32)


STORED = unit(rng.standard_normal((ENTRIES, 1536)))
# Far paraphrases (cosine about 0.5 to their entry): one probed list of forty often misses them.
QUERIES = unit(STORED[:100] + 1.7 * unit(rng.standard_normal((100, 1536))))


class FixedEmbedder:
    """``question i`` is STORED[i]; ``paraphrase i`` is QUERIES[i]."""

    name = EMBEDDER
    dimensions = 1536
    default_threshold = 0.5

    def embed(self, texts):
        return [(QUERIES if text.startswith("paraphrase") else STORED)[int(text.split()[1])] for text in texts]


@pytest.fixture
def trained(database_url) -> tuple[str, list[int]]:
    """Every entry stored in one scope, the index trained with LISTS lists; the URL and the ids in STORED's order."""
    with Cache(database_url, embedder=FixedEmbedder()) as cache:
        ids = cache.store_many([(f"question {i}", f"answer {i}") for i in range(ENTRIES)])
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f"ALTER INDEX pgcache_entries_embedding_idx SET (lists = {LISTS})")
        conn.execute("REINDEX INDEX pgcache_entries_embedding_idx")
    return database_url, ids


def recall(url: str, ids: list[int]) -> float:
    """How often pgcache's semantic query returns the entry each query was made from, on new connections."""
    scope = keys.request_key("x", model="gpt-4o-mini", namespace="default").scope_key
    database = Database(url, max_size=1)
    try:
        with database.connection() as conn:
            found = [find_nearest(conn, scope, EMBEDDER, vector) for vector in QUERIES]
    finally:
        database.close()
    return float(np.mean([row is not None and row.id == ids[i] for i, row in enumerate(found)]))


def set_for_database(url: str, value: str | None) -> None:
    name = query(url, "SELECT current_database()")[0][0]
    with psycopg.connect(url, autocommit=True) as conn:
        if value is None:
            conn.execute(f'ALTER DATABASE "{name}" RESET pgcache.probes')
        else:
            conn.execute(f"ALTER DATABASE \"{name}\" SET pgcache.probes = '{value}'")


def probes(url: str, lists: int, setting: str | None = None) -> int:
    """``pgcache_probes(lists)`` in a session with ``pgcache.probes`` set to ``setting`` (None: not set)."""
    with psycopg.connect(url, autocommit=True) as conn:
        if setting is not None:
            conn.execute("SELECT set_config('pgcache.probes', %s, false)", (setting,))
        return conn.execute("SELECT pgcache_probes(%s)", (lists,)).fetchone()[0]


def test_without_the_setting_probes_follow_the_lists(database_url):
    assert probes(database_url, 40) == 2  # max(2, ceil(sqrt(40) / 8))
    assert probes(database_url, 2098) == 6
    assert probes(database_url, 1) == 1


def test_the_setting_chooses_the_probes_up_to_every_list(database_url):
    assert probes(database_url, 2098, "24") == 24
    assert probes(database_url, 2098, " 7 ") == 7
    assert probes(database_url, 40, "500") == 40
    assert probes(database_url, 2098, "") == 6  # set to nothing: the policy


@pytest.mark.parametrize("value", ["0", "-3", "many", "2.5", "99999999999"])
def test_a_bad_setting_is_an_error_naming_it(database_url, value):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"pgcache\.probes must be a positive whole number"):
        probes(database_url, 2098, value)


def test_lookups_probe_what_the_database_setting_says(trained):
    url, ids = trained
    set_for_database(url, "1")
    one = recall(url, ids)
    set_for_database(url, str(LISTS))
    every = recall(url, ids)
    set_for_database(url, None)
    policy = recall(url, ids)
    # Every list probed is exact search: each query finds its entry; one list of forty misses many.
    assert every == 1.0
    assert one < 0.7, one
    assert one <= policy <= every
    print(f"recall@1 at 1 / {LISTS} lists / policy: {one:.2f} / {every:.2f} / {policy:.2f}")


def test_a_bad_setting_fails_the_lookup_loudly(trained):
    url, _ = trained
    set_for_database(url, "lots")
    scope = keys.request_key("x", model="gpt-4o-mini", namespace="default").scope_key
    database = Database(url, max_size=1)
    try:
        with database.connection() as conn, pytest.raises(Exception, match=r"pgcache\.probes must be"):
            find_nearest(conn, scope, EMBEDDER, QUERIES[0])
    finally:
        database.close()


def test_with_fail_open_a_bad_setting_sends_calls_to_the_llm_and_says_why(trained, llm, fake, caplog):
    url, _ = trained
    set_for_database(url, "lots")
    with Cache(url, embedder=FixedEmbedder(), llm=llm) as cache, caplog.at_level(logging.WARNING, logger="pgcache"):
        answer = cache.query("paraphrase 3")
    assert answer.status == "miss" and answer.content == "answer #1 to: paraphrase 3"
    assert fake.calls["chat"] == 1
    assert any("pgcache.probes must be a positive whole number" in r.getMessage() for r in caplog.records)


def test_downgrade_ignores_the_setting_and_upgrade_restores_it(database_url):
    db.downgrade(database_url, "0010")
    assert probes(database_url, 2098, "24") == 6
    db.upgrade(database_url)
    assert probes(database_url, 2098, "24") == 24
