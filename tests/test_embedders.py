"""Embedders: OpenAI-compatible batching, padding and validation, and custom embedders."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pgcache import Cache, ConfigurationError, EmbedderError
from pgcache.embedders import NO_KEY, OpenAIEmbedder, embed_texts

from .conftest import TEST_API_KEY, query


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


# -- embedding endpoints of any width -------------------------------------------------------------

QUESTION, PARAPHRASE = "What is a buffer overflow?", "Explain a buffer overflow to me"


@pytest.fixture
def embedding_server():
    """A second OpenAI-compatible server that serves only embeddings, as a local embedding server would."""
    from .fake_openai import FakeOpenAI

    with FakeOpenAI() as server:
        server.topics = ["buffer overflow", "sql injection"]
        yield server


@pytest.mark.parametrize("width", [384, 768, 1024])
def test_a_local_server_of_any_width_works_from_variables_alone(database_url, llm, fake, embedding_server, width):
    model = f"local-embed-{width}"
    embedding_server.embedding_models[model] = (width, "ignored")
    variables = {
        "PGCACHE_DATABASE_URL": database_url,
        "PGCACHE_EMBEDDING_MODEL": model,
        "PGCACHE_EMBEDDING_BASE_URL": embedding_server.base_url,
        "PGCACHE_THRESHOLD": "0.9",
    }
    with Cache.from_env(variables, llm=llm) as cache:
        assert cache.query(QUESTION).status == "miss"
        hit = cache.query(PARAPHRASE)
        assert hit.status == "semantic" and hit.content == f"answer #1 to: {QUESTION}"
        assert cache.embedder.name == f"openai/{model}@{width}" and cache.embedder.dimensions == width
    assert fake.calls == {"chat": 1, "embeddings": 0}, "chat on the SDK's endpoint, embeddings on their own"
    # The width came with the first real request: no probe, and no dimensions parameter sent.
    assert embedding_server.embedded_texts == [QUESTION, PARAPHRASE]
    assert {row[0] for row in query(database_url, "SELECT embedder FROM pgcache_entries")} == {
        f"openai/{model}@{width}"
    }
    # The chat client's key never goes to an endpoint of the embedder's own.
    sent = {headers.get("authorization") for headers in embedding_server.headers}
    assert sent == {f"Bearer {NO_KEY}"} and not any(TEST_API_KEY in str(h) for h in embedding_server.headers)


def test_the_embedding_endpoint_gets_its_own_key(database_url, llm, embedding_server):
    with Cache(
        database_url, llm=llm, embedding_base_url=embedding_server.base_url, embedding_api_key="tei-key"
    ) as cache:
        cache.store(QUESTION, "answer")
    assert {headers.get("authorization") for headers in embedding_server.headers} == {"Bearer tei-key"}
    assert "tei-key" not in repr(cache.settings) and "embedding_api_key='***'" in repr(cache.settings)


def test_a_changed_width_is_a_different_embedder(database_url, llm, fake):
    fake.embedding_models["nomic-embed-text"] = (768, "ignored")
    with Cache(database_url, llm=llm, embedding_model="nomic-embed-text", threshold=0.9) as cache:
        cache.store(QUESTION, "answer at 768")
        assert cache.lookup(PARAPHRASE).status == "semantic"
    fake.embedding_models["nomic-embed-text"] = (384, "ignored")  # the server now runs another build
    with Cache(database_url, llm=llm, embedding_model="nomic-embed-text", threshold=0.9) as cache:
        assert cache.lookup(PARAPHRASE) is None, "384-wide vectors are never compared with 768-wide ones"
        assert cache.lookup(QUESTION).status == "exact", "the exact tier does not depend on the embedder"
        cache.store(PARAPHRASE, "answer at 384")
    names = query(database_url, "SELECT embedder FROM pgcache_entries ORDER BY id")
    assert names == [("openai/nomic-embed-text@768",), ("openai/nomic-embed-text@384",)]


def test_reading_the_width_first_asks_once(llm, fake):
    fake.embedding_models["bge-base"] = (768, "ignored")
    embedder = OpenAIEmbedder(client=llm, model="bge-base")
    assert (embedder.dimensions, embedder.name) == (768, "openai/bge-base@768")
    embedder.embed(["one", "two"])
    assert fake.calls["embeddings"] == 2 and len(fake.embedded_texts) == 3


def test_a_wider_model_that_can_shorten_is_asked_for_the_column(database_url, llm, fake):
    fake.embedding_models["big-embed"] = (3072, "shortens")
    with Cache(database_url, llm=llm, embedding_model="big-embed", threshold=0.9) as cache:
        cache.store(QUESTION, "answer")
        assert cache.lookup(PARAPHRASE).status == "semantic"
        assert cache.embedder.name == "openai/big-embed@1536"
    dimensions = [request.get("dimensions") for request in fake.embedding_requests]
    assert dimensions == [None, 1536, 1536], "the first full-width answer is asked again, shortened, then always"


@pytest.mark.parametrize("shortening", ["refused", "ignored"])
def test_a_wider_model_that_cannot_shorten_is_refused_in_one_sentence(database_url, llm, fake, shortening):
    fake.embedding_models["wide-embed"] = (3072, shortening)
    with Cache(database_url, llm=llm, embedding_model="wide-embed") as cache:
        for attempt in (lambda: cache.store(QUESTION, "answer"), lambda: cache.query(QUESTION)):
            with pytest.raises(ConfigurationError) as refused:
                attempt()
            assert str(refused.value) == (
                "embedding model wide-embed returns 3072-dimensional vectors and cannot shorten them to the 1536 "
                "the cache stores: choose a model of at most 1536 dimensions (PGCACHE_EMBEDDING_MODEL) or one that "
                "accepts a dimensions parameter"
            )
    assert fake.calls["embeddings"] == 2, "learned once: the second attempt is refused without asking again"
    assert fake.calls["chat"] == 0
    assert query(database_url, "SELECT count(*) FROM pgcache_entries")[0][0] == 0, "never truncated, never stored"


def test_dimensions_ask_for_a_shorter_vector(database_url, llm, fake):
    with Cache(database_url, llm=llm, embedding_dimensions=256, threshold=0.9) as cache:
        cache.store(QUESTION, "answer")
        assert cache.lookup(PARAPHRASE).status == "semantic"
        assert (cache.embedder.name, cache.embedder.dimensions) == ("openai/text-embedding-3-small@256", 256)
    assert {request.get("dimensions") for request in fake.embedding_requests} == {256}


def test_dimensions_a_model_ignores_are_refused(llm, fake):
    fake.embedding_models["e5-large"] = (1024, "ignored")
    embedder = OpenAIEmbedder(client=llm, model="e5-large", dimensions=256)
    with pytest.raises(ConfigurationError, match="returned 1024-dimensional vectors when asked for 256"):
        embed_texts(embedder, ["x"])


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"model": "text-embedding-ada-002", "dimensions": 512}, "cannot shorten them; leave dimensions unset"),
        ({"dimensions": 3072}, r"dimensions must be an integer in 1\.\.1536"),
        ({"dimensions": 0}, r"dimensions must be an integer in 1\.\.1536"),
        ({"client": object(), "base_url": "http://127.0.0.1:1/v1"}, "either a client or base_url"),
        ({"base_url": "  "}, "base_url must be a non-empty string"),
    ],
)
def test_impossible_embedder_settings_are_refused_at_construction(arguments, message):
    with pytest.raises(ConfigurationError, match=message):
        OpenAIEmbedder(**arguments)


def test_endpoint_settings_do_not_apply_to_the_local_embedder():
    variables = {"PGCACHE_EMBEDDER": "local", "PGCACHE_EMBEDDING_BASE_URL": "http://127.0.0.1:8080/v1"}
    with pytest.raises(ConfigurationError, match="PGCACHE_EMBEDDING_BASE_URL applies to the openai embedder"):
        Cache.from_env(variables)
