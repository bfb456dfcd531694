"""pgcache demo: ask questions of a cache warmed from examples/faqs.tsv.

`make demo` first runs `pgcache warm examples/faqs.tsv --namespace demo` with the
local embedder, then this script. Everything runs offline: the embedded
PostgreSQL and the bundled all-MiniLM-L6-v2 model, no API key and no LLM call.
Set PGCACHE_DATABASE_URL to use your own server.
"""

from __future__ import annotations

from collections import Counter

from pgcache import Cache, db
from pgcache.embedders import LocalEmbedder

QUESTIONS = [
    "How do I reset my password?",  # word for word: exact tier
    "I forgot my password, how can I reset it?",  # close paraphrases: semantic tier (0.937, 0.972, 0.924)
    "I want to cancel my subscription",
    "What payment methods do you accept?",
    "Do you offer international shipping?",  # looser paraphrases (0.886, 0.915, 0.901): below the
    "How do I get a refund?",  # local model's 0.92 threshold, which keeps wrong hits
    "How do I change my email address?",  # rare (docs/semantic-quality.md), so they miss
    "Do you have a mobile app?",  # exact again
    "Can I pay with PayPal?",  # related but not the same question: miss
    "What is the boiling point of water?",  # unrelated: miss
]


def main() -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    cache = Cache.from_env(embedder=LocalEmbedder(), namespace="demo")
    print(f"database: {db.redact(cache.url)}")
    print(f"embedder: {cache.embedder.name}, semantic threshold (cosine similarity) {cache.threshold}")
    print(f"warmed FAQ entries in namespace 'demo': {cache.preview_invalidation(tags=['demo'])[0]}\n")

    counts: Counter[str] = Counter()
    print(f"{'status':<9} {'similarity':>10}  question -> answer")
    for question in QUESTIONS:
        hit = cache.lookup(question)
        status = hit.status if hit else "miss"
        counts[status] += 1
        similarity = f"{hit.similarity:.3f}" if hit and hit.similarity is not None else "-"
        answer = _shorten(hit.content) if hit else "(no cached answer: this would go to the LLM)"
        print(f"{status:<9} {similarity:>10}  {question}\n{'':21}-> {answer}")
    cache.close()
    print(
        f"\nsummary: {len(QUESTIONS)} questions, {counts['exact']} exact hits, "
        f"{counts['semantic']} semantic hits, {counts['miss']} misses; no API key used"
    )


def _shorten(text: str, width: int = 64) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


if __name__ == "__main__":
    main()
