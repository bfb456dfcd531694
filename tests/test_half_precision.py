"""Migration 0010 on a populated table: full-precision vectors become half precision, the index covers
their first 768 dimensions, and every entry still answers its exact and semantic lookups; down and up again."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb

from pgcache import Cache, db, keys

from .conftest import query

ENTRIES = 700  # above EXACT_SEARCH_ROWS: the scope is searched through the index
EMBEDDER = "test/fixed-1536"
rng = np.random.default_rng(11)


def unit(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=-1, keepdims=True)).astype(np.float32)


STORED = unit(rng.standard_normal((ENTRIES, 1536)))
# Paraphrases: cosine about 0.9 to the entry they come from.
PARAPHRASES = unit(STORED[:50] + 0.48 * unit(rng.standard_normal((50, 1536))))


class FixedEmbedder:
    """Vectors chosen in advance, by text."""

    name = EMBEDDER
    dimensions = 1536
    default_threshold = 0.85

    def __init__(self) -> None:
        self.vectors = {f"question {i}": v for i, v in enumerate(STORED)}
        self.vectors.update({f"paraphrase {i}": v for i, v in enumerate(PARAPHRASES)})

    def embed(self, texts):
        return [self.vectors[text] for text in texts]


def embedding_type(url: str) -> str:
    """The declared type of pgcache_entries.embedding."""
    return query(
        url,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = 'pgcache_entries'::regclass AND attname = 'embedding'",
    )[0][0]


def populate_at_0009(url: str) -> None:
    """Entries as revision 0009 stored them: full-precision vectors, an index of 2 lists (both probed: exact)."""
    db.downgrade(url, "0009")
    assert embedding_type(url) == "vector(1536)"
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY pgcache_entries (namespace, exact_key, scope_key, model, embedder, prompt, request, response, "
                "embedding) FROM STDIN"
            ) as copy,
        ):
            for i, vector in enumerate(STORED):
                key = keys.request_key(f"question {i}", model="gpt-4o-mini", namespace="default")
                answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {i}"}}]}
                copy.write_row(
                    (
                        key.namespace,
                        key.exact_key,
                        key.scope_key,
                        key.model,
                        EMBEDDER,
                        key.prompt,
                        Jsonb(key.request),
                        Jsonb(answer),
                        vector,
                    )
                )
        conn.execute("ALTER INDEX pgcache_entries_embedding_idx SET (lists = 2)")
        conn.execute("REINDEX INDEX pgcache_entries_embedding_idx")


def neighbours(url: str) -> list[tuple[int, float]]:
    """The nearest entry of every paraphrase and its similarity, through pgcache_neighbours()."""
    scope = keys.request_key("x", model="gpt-4o-mini", namespace="default").scope_key
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        return [
            conn.execute(
                "SELECT id, similarity FROM pgcache_neighbours(%s, %s, %s, 1, 20, 500)", (vector, scope, EMBEDDER)
            ).fetchone()
            for vector in PARAPHRASES
        ]


def index_definition(url: str) -> str:
    return query(url, "SELECT pg_get_indexdef('pgcache_entries_embedding_idx'::regclass)")[0][0]


def test_upgrade_converts_every_row_and_keeps_every_hit(database_url, llm):
    populate_at_0009(database_url)
    before = neighbours(database_url)
    ids = [row[0] for row in query(database_url, "SELECT id FROM pgcache_entries ORDER BY id")]
    assert [i for i, _ in before] == ids[:50], "at 0009 every paraphrase finds the entry it came from"

    db.upgrade(database_url)
    assert embedding_type(database_url) == "halfvec(1536)"
    definition = index_definition(database_url)
    assert "subvector(embedding, 1, 768))::halfvec(768)" in definition and "lists='2'" in definition
    assert query(database_url, "SELECT count(*) FROM pgcache_entries WHERE embedding IS NOT NULL") == [(ENTRIES,)]
    after = neighbours(database_url)
    assert [i for i, _ in after] == [i for i, _ in before]
    errors = [abs(a - b) for (_, a), (_, b) in zip(after, before, strict=True)]
    assert max(errors) < 1e-3
    # The stored values are the full-precision ones rounded to half precision, nothing else.
    (stored,) = query(database_url, "SELECT embedding::text FROM pgcache_entries WHERE id = %s", (ids[3],))[0]
    halved = np.array([float(x) for x in stored.strip("[]").split(",")], dtype=np.float32)
    assert np.array_equal(halved, STORED[3].astype(np.float16).astype(np.float32))

    long_answer = "a long answer. " * 4000  # 60 KB of JSON beside a 3 KB vector
    with Cache(database_url, embedder=FixedEmbedder(), llm=llm) as cache:
        exact = cache.lookup("question 7")
        semantic = cache.lookup("paraphrase 7")
        cache.store("question 699", long_answer)
        assert cache.lookup("question 699").content == long_answer
        assert cache.lookup("paraphrase 7").content == "answer 7"
    assert exact.status == "exact" and exact.content == "answer 7"
    assert semantic.status == "semantic" and semantic.content == "answer 7"
    assert semantic.similarity == pytest.approx(float(PARAPHRASES[7] @ STORED[7]), abs=1e-3)


def test_downgrade_converts_back_and_upgrade_again(database_url):
    populate_at_0009(database_url)
    before = neighbours(database_url)
    db.upgrade(database_url)
    db.downgrade(database_url, "0009")
    assert embedding_type(database_url) == "vector(1536)"
    definition = index_definition(database_url)
    assert "(embedding)::halfvec(1536)" in definition and "lists='2'" in definition
    down = neighbours(database_url)
    assert [i for i, _ in down] == [i for i, _ in before]
    assert max(abs(a - b) for (_, a), (_, b) in zip(down, before, strict=True)) < 1e-3
    db.upgrade(database_url)
    assert [i for i, _ in neighbours(database_url)] == [i for i, _ in before]
    assert db.current_revision(database_url) == db.head_revision()
