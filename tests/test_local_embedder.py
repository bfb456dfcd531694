"""The bundled all-MiniLM-L6-v2 end to end: offline, padded, and serving paraphrases."""

from __future__ import annotations

import numpy as np

from pgcache import Cache
from pgcache.embedders import LocalEmbedder, embed_texts

FAQ = {
    "How do I reset my password?": "Use 'Forgot password' on the sign-in page.",
    "What are your opening hours?": "Monday to Friday, 9:00 to 17:00.",
    "How can I cancel my subscription?": "Settings > Billing > Cancel subscription.",
    "Do you ship internationally?": "Yes, to 40 countries.",
}

# Similarities 0.937 and 0.972: above the local default threshold (0.92).
PARAPHRASES = {
    "I forgot my password, how can I reset it?": "How do I reset my password?",
    "I want to cancel my subscription": "How can I cancel my subscription?",
}


def test_local_vectors_are_384_wide_and_padded(local_embedder):
    matrix = embed_texts(local_embedder, ["hello world"])
    assert local_embedder.name == "local/all-MiniLM-L6-v2" and local_embedder.dimensions == 384
    assert abs(float(np.linalg.norm(matrix[0])) - 1.0) < 1e-5
    assert not matrix[0, 384:].any()


def test_faq_answers_serve_paraphrases(database_url, llm, fake, local_embedder):
    with Cache(database_url, embedder=local_embedder, llm=llm) as cache:
        cache.store_many(FAQ.items())
        for paraphrase, original in PARAPHRASES.items():
            hit = cache.lookup(paraphrase)
            assert hit is not None, paraphrase
            assert hit.status == "semantic" and hit.content == FAQ[original], paraphrase
            assert hit.similarity >= LocalEmbedder.default_threshold
        assert cache.lookup("What is the boiling point of water?") is None
        assert cache.lookup("Do you offer international shipping?") is None, "0.886: below the default"
    assert fake.calls == {"chat": 0, "embeddings": 0}
