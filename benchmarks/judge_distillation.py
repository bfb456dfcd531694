"""Judge distillation: a verifier learns from the LLM judge's verdicts, and the judge is asked less.

End to end through ``pgcache.Cache`` on a private PostgreSQL, with the Banking77 replay
(5 cached phrasings per intent, embeddings precomputed with all-MiniLM-L6-v2) and an LLM judge
served by the test suite's fake OpenAI server, which answers from the replay's labels ("yes"
exactly when both questions have the same intent):

1. *before*: the test queries with the judge alone; it is asked about every candidate from
   cosine 0.6 up (no learned verifier yet).
2. traffic: train phrasings the cache never stored go through the same cache; every verdict the
   judge gives is recorded in ``pgcache_judgements``.
3. ``cache.train_verifier(from_judge=True)`` learns from those verdicts and stores a verifier.
4. *after*: the same test queries; the judge is asked only about candidates the verifier is not
   sure of (probability within ``judge_margin`` of its threshold, in log-odds), for a few margins.

Writes docs/judge-distillation.md: judge calls per 1,000 lookups, right-hit rate and wrong
share of hits before and after.

Usage: python -m benchmarks.judge_distillation [--eval-dir PATH] [--traffic N] [--queries N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import openai
import psycopg

from pgcache import Cache
from pgcache.crossencoder import TrainingOptions
from pgcache.judge import LLMJudge
from tests.fake_openai import FakeOpenAI

from .harness import Server
from .verifier_data import EVAL, FLOOR, REPO, Vectors, first_k, read_csv

MARGINS = (2.0, 1.0, 0.5)
"""Judge margins (log-odds) measured after distillation."""


class Precomputed:
    """An embedder that looks the replay's texts up in precomputed all-MiniLM-L6-v2 vectors."""

    name, dimensions = "local/all-MiniLM-L6-v2", 384

    def __init__(self, vectors: Vectors) -> None:
        self.vectors = vectors

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.vectors(list(texts))


def run(cache: Cache, fake: FakeOpenAI, queries: list[dict[str, str]], intent_of: dict[str, str]) -> dict:
    """Look every query up; count judge calls, right and wrong hits."""
    fake.judge_calls = 0
    right = wrong = 0
    started = time.perf_counter()
    for query in queries:
        hit = cache.lookup(query["text"])
        if hit is None:
            continue
        served = hit.response["choices"][0]["message"]["content"]
        if intent_of[served] == query["intent"]:
            right += 1
        else:
            wrong += 1
    seconds = time.perf_counter() - started
    n = len(queries)
    return {
        "lookups": n,
        "judge_calls": fake.judge_calls,
        "per_1000": 1000 * fake.judge_calls / n,
        "right": right / n,
        "wrong_share": wrong / (right + wrong) if right + wrong else 0.0,
        "ms_per_lookup": 1000 * seconds / n,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-dir", type=Path, default=EVAL)
    parser.add_argument(
        "--traffic", type=int, default=None, help="train phrasings sent through the cache (default: all not cached)"
    )
    parser.add_argument("--target-precision", type=float, default=0.95)
    parser.add_argument("--queries", type=int, default=None, help="test queries (default: all 3,080)")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "judge-distillation.md")
    args = parser.parse_args()
    if not (args.eval_dir / "banking77").is_dir():
        sys.exit(f"evaluation data not found in {args.eval_dir} (see shared/eval/README.md); pass --eval-dir")
    started = time.perf_counter()
    train_rows = read_csv(args.eval_dir / "banking77" / "train.csv")
    test_rows = read_csv(args.eval_dir / "banking77" / "test.csv", args.queries)
    cached = first_k(train_rows, 5)
    cached_texts = {row["text"] for row in cached}
    traffic = [row for row in train_rows if row["text"] not in cached_texts][: args.traffic]
    intent = {row["text"]: row["intent"] for row in train_rows + test_rows}
    answer_intent = {f"answer: {row['intent']}": row["intent"] for row in cached}
    vectors = Vectors("banking77")
    vectors([row["text"] for row in train_rows + test_rows])

    def labels(a: str, b: str) -> str:
        return "yes" if intent.get(a.strip()) == intent.get(b.strip()) else "no"

    server = Server()
    fake = FakeOpenAI(record=False).start()
    fake.judge_answer = labels
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-bench-unused", max_retries=0)
    results = {}

    def cache_on(url: str, judged: bool = True, **settings) -> Cache:
        """A cache on the replay's namespace, its candidates from the floor up, the guard off."""
        judge = LLMJudge(client, model="judge") if judged else None
        return Cache(
            url,
            embedder=Precomputed(vectors),
            llm=client,
            namespace="b77",
            environ={},
            judge=judge,
            threshold=FLOOR,
            guard=False,
            **settings,
        )

    try:
        with server.database() as url:
            cache = cache_on(url)
            cache.store_many([(row["text"], f"answer: {row['intent']}") for row in cached])
            print("before: the judge alone", flush=True)
            results["before"] = run(cache, fake, test_rows, answer_intent | intent)
            cache.flush()
            # The test queries' verdicts must not teach the verifier: it learns from the traffic alone.
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DELETE FROM pgcache_judgements")
            print(f"  {results['before']}\ntraffic: {len(traffic):,} train phrasings", flush=True)
            results["traffic"] = run(cache, fake, traffic, answer_intent | intent)
            cache.flush()
            print("training on the judge's verdicts", flush=True)
            trained = cache.train_verifier(
                from_judge=True, target_precision=args.target_precision, options=TrainingOptions()
            )
            if trained.stored is None:
                sys.exit(
                    f"no probability threshold reached {args.target_precision} precision on the held-out verdicts; "
                    f"nothing stored: {trained.grid}"
                )
            results["training"] = {
                "pairs": trained.pairs,
                "seconds": trained.seconds,
                "threshold": trained.stored.threshold,
                "target_precision": args.target_precision,
                "held_out": trained.chosen,
            }
            print(f"  {results['training']}", flush=True)
            results["after"] = {}
            for margin in MARGINS:
                print(f"after: verifier, judge within {margin} log-odds of its threshold", flush=True)
                judged = cache_on(url, judge_margin=margin)
                results["after"][margin] = run(judged, fake, test_rows, answer_intent | intent)
                judged.close()
                print(f"  {results['after'][margin]}", flush=True)
            no_judge = cache_on(url, judged=False)
            results["verifier alone"] = run(no_judge, fake, test_rows, answer_intent | intent)
            print(f"  verifier alone: {results['verifier alone']}", flush=True)
            no_judge.close()
            cache.close()
    finally:
        fake.stop()
        server.close()
    args.output.write_text(_report(results, len(traffic), time.perf_counter() - started), encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


def _report(results: dict, traffic: int, seconds: float) -> str:
    rows = [
        ("before: judge alone", results["before"]),
        *(
            (f"after: judge within {margin} log-odds{' (default)' if margin == 2.0 else ''}", figures)
            for margin, figures in results["after"].items()
        ),
        ("after: verifier alone (no judge)", results["verifier alone"]),
    ]
    training = results["training"]
    lines = [
        "# Judge distillation",
        "",
        "_Generated by `benchmarks/judge_distillation.py`; rerun it rather than editing this file._",
        "",
        "A learned verifier trained on an LLM judge's verdicts takes over from the judge where it is sure, so judge "
        "calls fall as it learns. Measured end to end through `pgcache.Cache` on a private PostgreSQL: the Banking77 "
        "replay with 5 cached phrasings per intent (all-MiniLM-L6-v2 embeddings), a judge served by a fake "
        'OpenAI-compatible server that answers from the replay\'s labels ("yes" exactly when the intents agree), '
        "candidates from cosine 0.6 up, guard off.",
        "",
        f"Between the two runs, {traffic:,} Banking77 train phrasings that the cache never stored went through it with "
        f"the judge; `cache.train_verifier(from_judge=True)` learned from its {training['pairs']:,} recorded verdicts "
        f"in {training['seconds'] / 60:.0f} min and stored a verifier with threshold {training['threshold']:.3f} "
        f"(calibrated to {training['target_precision']} precision on held-out verdicts: "
        f"{100 * training['held_out']['precision']:.1f}% precision at {100 * training['held_out']['recall']:.1f}% "
        "recall there). "
        "The judge is then asked only about candidates whose probability is within `judge_margin` of that "
        "threshold in log-odds (2.0 by default; 1.0 and 0.5 shown too); the 3 nearest candidates from cosine 0.6 "
        "are scored, where the judge alone was asked about the nearest only.",
        "",
        "| Banking77 test queries | lookups | judge calls | per 1,000 lookups | right hits | wrong share of hits | "
        "ms per lookup |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['lookups']:,} | {r['judge_calls']:,} | {r['per_1000']:.0f} | "
            f"{100 * r['right']:.1f}% | {100 * r['wrong_share']:.1f}% | {r['ms_per_lookup']:.1f} |"
        )
    lines += [
        "",
        "The judge here is never wrong, so the judge alone serves no wrong hit; a real judge errs, and "
        "its errors are what a verifier trained on its verdicts learns too. Milliseconds per lookup include "
        "the fake judge's round trip on loopback, not a real model's latency.",
        "",
        f"Whole run: {seconds / 60:.0f} min.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
