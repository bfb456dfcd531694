"""Embedders: OpenAI-compatible batching, padding and validation, and custom embedders."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pgcache import Cache, ConfigurationError, EmbedderError
from pgcache.embedders import OpenAIEmbedder, embed_texts


def test_openai_embedder_batches_within_limits(llm, fake):
    embedder = OpenAIEmbedder(client=llm)
    embedder.max_batch = 10
    vectors = embedder.embed([f"text {i}" for i in range(25)])
    assert len(vectors) == 25 and fake.calls["embeddings"] == 3
    assert fake.embedded_texts == [f"text {i}" for i in range(25)]


def test_openai_embedder_sends_no_key_material_in_its_name(llm):
    embedder = OpenAIEmbedder(client=llm, model="text-embedding-3-large")
    assert embedder.name == "openai/text-embedding-3-large@1536" and embedder.dimensions == 1536


class Fixed:
    def __init__(self, vectors, dimensions=3, name="test/fixed"):
        self.vectors, self.dimensions, self.name = vectors, dimensions, name

    def embed(self, texts):
        if isinstance(self.vectors, Exception):
            raise self.vectors
        return self.vectors


def test_narrow_vectors_are_normalised_and_zero_padded():
    matrix = embed_texts(Fixed([[3.0, 4.0, 0.0]]), ["x"])
    assert matrix.shape == (1, 1536) and matrix.dtype == np.float32
    assert matrix[0, :3].tolist() == pytest.approx([0.6, 0.8, 0.0])
    assert not matrix[0, 3:].any()


@pytest.mark.parametrize(
    "vectors, message",
    [
        ([[1.0, 2.0]], "returned 2-dimensional vectors; it declares 3"),
        ([[1.0, math.nan, 0.0]], "NaN or infinite"),
        ([[math.inf, 0.0, 0.0]], "NaN or infinite"),
        ([[0.0, 0.0, 0.0]], "zero vector"),
        ([], "returned 0 vectors for 1 texts"),
        (RuntimeError("model crashed"), "failed: RuntimeError: model crashed"),
        ([["a", "b", "c"]], "non-numeric"),
    ],
)
def test_unusable_embeddings_raise_embedder_error(vectors, message):
    with pytest.raises(EmbedderError, match=message):
        embed_texts(Fixed(vectors), ["x"])


def test_bad_embedder_is_refused_at_construction():
    with pytest.raises(ConfigurationError, match="lacks"):
        Cache("postgresql://localhost/x", embedder=object())
    with pytest.raises(ConfigurationError, match="dimensions"):
        Cache("postgresql://localhost/x", embedder=Fixed([], dimensions=4096))


def test_failing_embedder_stores_nothing(database_url, llm):
    from .conftest import query

    with Cache(database_url, embedder=Fixed([[0.0, 0.0, 0.0]]), llm=llm) as cache, pytest.raises(EmbedderError):
        cache.store("question", "answer")
    assert query(database_url, "SELECT count(*) FROM pgcache_entries")[0][0] == 0


class _Down:
    name, dimensions = "test/down", 3

    def embed(self, texts):
        raise ConnectionError("model server down")


def test_an_embedder_outage_is_logged_as_one_and_the_exact_tier_serves(database_url, llm, fake, caplog):
    with caplog.at_level("WARNING", logger="pgcache"), Cache(database_url, embedder=_Down(), llm=llm) as cache:
        assert cache.query("What is SQL injection?").status == "miss"
        assert cache.lookup("What is SQL injection?").status == "exact"
        assert cache.lookup("Explain SQL injection") is None
    outage = [r.getMessage() for r in caplog.records if "unavailable" in r.getMessage()]
    assert outage == [
        "pgcache: embedder unavailable, lookups use the exact tier only: "
        "embedder test/down failed: ConnectionError: model server down"
    ]
    assert cache.breaker.failures == 0, "the database breaker is not the embedder's"
