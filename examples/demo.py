"""pgcache demo: ask questions of a cache warmed from examples/faqs.tsv.

`make demo` first runs `pgcache warm examples/faqs.tsv --namespace demo` with the
local embedder, then this script. Everything runs offline: the embedded
PostgreSQL and the bundled all-MiniLM-L6-v2 model, no API key and no LLM call.
Set PGCACHE_DATABASE_URL to use your own server.

When a learned verifier is stored for the namespace (`pgcache verifier train
--namespace demo` with PGCACHE_EMBEDDER=local, on a few thousand labelled pairs:
examples/faq-pairs.csv shows the format but is far too small to train one), it
decides the semantic hits, and the script says which candidates it refused.
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
    learned = cache.verifiers.in_force("demo")
    if learned is None:
        print(f"embedder: {cache.embedder.name}, semantic threshold (cosine similarity) {cache.threshold}")
    else:
        print(
            f"embedder: {cache.embedder.name}, learned verifier version {learned.stored.version} "
            f"(serves from probability {learned.threshold:.3f}, scores candidates from cosine "
            f"{cache.settings.verifier_floor})"
        )
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
    cache.flush()
    refused = _refusals(cache, len(QUESTIONS))
    cache.close()
    for question, reason in zip(QUESTIONS, refused, strict=True):
        if reason and reason.startswith("verifier"):
            print(f"the learned verifier refused the nearest entry for {question!r} ({reason})")
    print(
        f"\nsummary: {len(QUESTIONS)} questions, {counts['exact']} exact hits, "
        f"{counts['semantic']} semantic hits, {counts['miss']} misses; no API key used"
    )


def _refusals(cache: Cache, count: int) -> list[str | None]:
    """Why each of the last ``count`` lookups of the namespace served nothing (the ledger's ``rejected_by``)."""
    with cache.database().connection() as conn:
        rows = conn.execute(
            "SELECT rejected_by FROM pgcache_lookups WHERE namespace = 'demo' ORDER BY at DESC LIMIT %s", (count,)
        ).fetchall()
    reasons = [row[0] for row in reversed(rows)]
    return [None] * (count - len(reasons)) + reasons


def _shorten(text: str, width: int = 64) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


if __name__ == "__main__":
    main()
