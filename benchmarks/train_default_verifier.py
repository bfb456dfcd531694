"""Try to make a verifier that works out of the box, and judge it only on data it never saw.

Training data (none of it Banking77):

* CLINC150 train (CC BY 3.0, Larson et al. 2019): every train phrasing outside the 5-per-intent
  cache with its nearest cached phrasings, label 1 when the intents agree (``oos`` never cached);
* PAWS-Wiki dev (free for any purpose; data from Google LLC): word-swap paraphrase pairs;
* generated contrast pairs: a CLINC150 phrasing and the same phrasing with one number, negation,
  operation (enable/disable, import/export ...), name, unit or direction changed (label 0),
  and pairs of same-intent phrasings (label 1).

Judged on the Banking77 test replay (K=1 and K=5), which no part of training touched, against
cosine alone and cosine + the guard at their best operating points with at most 2% of hits
wrong. The verifier is adopted as pgcache's default only if it beats both there and reaches at
least three times the cosine-only right-hit rate; the verdict and the numbers go to
docs/default-verifier.md. When adopted, ``--install`` writes it to
pgcache/verifiers/default.safetensors.

Usage: python -m benchmarks.train_default_verifier [--eval-dir PATH] [--pairs N] [--install]
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

from pgcache import guard
from pgcache.crossencoder import TrainingOptions

from .verifier_data import EVAL, REPO, TOP, Vectors, best_at_goal, cached_verifier, latency, read_csv, replay
from .verifier_data import training_pairs as replay_pairs

NUMBERS = re.compile(r"\b\d+(?:[.,]\d+)?\b")
UNITS = [
    ("miles", "kilometers"),
    ("celsius", "fahrenheit"),
    ("dollars", "euros"),
    ("pounds", "kilograms"),
    ("hours", "minutes"),
    ("days", "weeks"),
    ("inches", "centimeters"),
]
DIRECTIONS = [
    (" to ", " from "),
    (" from ", " to "),
    (" into ", " out of "),
    (" before ", " after "),
    (" after ", " before "),
    (" above ", " below "),
]
NAMES = [
    "paris",
    "london",
    "tokyo",
    "berlin",
    "spanish",
    "french",
    "italian",
    "german",
    "chase",
    "visa",
    "amazon",
    "google",
    "john",
    "mary",
    "monday",
    "friday",
    "january",
    "july",
    "python",
    "java",
    "windows",
    "linux",
]
OPPOSITES = [pair for pair in guard.OPPOSITES if " " not in pair[0] + pair[1]]
VARIANTS = {"number": 0, "negation": 0, "opposite": 0, "name": 0, "unit": 0, "direction": 0}


def contrast(text: str, rng: random.Random) -> tuple[str, str] | None:
    """The text with one thing changed that changes the answer, and what kind of change it was."""
    lowered = f" {text.lower()} "
    options: list[tuple[str, str]] = []
    for found in NUMBERS.finditer(text):
        value = found.group(0).replace(",", "")
        other = str(int(float(value)) + rng.choice([1, 2, 5, 10, 100])) if value.replace(".", "").isdigit() else "7"
        options.append((text[: found.start()] + other + text[found.end() :], "number"))
    for a, b in OPPOSITES:
        for x, y in ((a, b), (b, a)):
            if f" {x} " in lowered:
                options.append((lowered.replace(f" {x} ", f" {y} ", 1).strip(), "opposite"))
    for x, y in UNITS:
        for p, q in ((x, y), (y, x)):
            if f" {p} " in lowered:
                options.append((lowered.replace(f" {p} ", f" {q} ", 1).strip(), "unit"))
    for x, y in DIRECTIONS:
        if x in lowered:
            options.append((lowered.replace(x, y, 1).strip(), "direction"))
    for group in NAMES:
        for name in group:
            if f" {name} " in lowered:
                other = rng.choice([n for n in group if n != name])
                options.append((lowered.replace(f" {name} ", f" {other} ", 1).strip(), "name"))
    for verb in (" can i ", " should i ", " do i ", " is it ", " will ", " does "):
        if verb in lowered:
            options.append((lowered.replace(verb, verb.rstrip() + " not ", 1).strip(), "negation"))
            break
    if not options:
        return None
    return rng.choice(options)


def default_pairs(eval_dir: Path, vec: Vectors, limit: int, seed: int = 0) -> tuple[list[tuple[str, str]], list[int]]:
    rng = random.Random(seed)
    clinc = read_csv(eval_dir / "clinc150" / "train.csv")
    pairs, labels = replay_pairs(vec, clinc, 5, limit // 2, seed=seed)
    paws = [r for r in read_csv(eval_dir / "paws_wiki" / "dev.csv") if r["a"] != r["b"]]
    rng.shuffle(paws)
    for row in paws[: limit // 4]:
        pairs.append((row["a"], row["b"]))
        labels.append(int(row["label"]))
    by_intent: dict[str, list[str]] = {}
    for row in clinc:
        if row["intent"] != "oos":
            by_intent.setdefault(row["intent"], []).append(row["text"])
    texts = [row["text"] for row in clinc if row["intent"] != "oos"]
    rng.shuffle(texts)
    made = 0
    for text in texts:
        if made >= limit // 8:
            break
        changed = contrast(text, rng)
        if changed is None or changed[0].lower() == text.lower():
            continue
        pairs.append((text, changed[0]))
        labels.append(0)
        VARIANTS[changed[1]] += 1
        made += 1
    intents = list(by_intent)
    for _ in range(limit // 8):
        phrasings = by_intent[rng.choice(intents)]
        a, b = rng.sample(phrasings, 2)
        pairs.append((a, b))
        labels.append(1)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    return [pairs[i] for i in order], [labels[i] for i in order]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-dir", type=Path, default=EVAL)
    parser.add_argument("--pairs", type=int, default=12_000)
    parser.add_argument("--install", action="store_true", help="write the verifier into the package if adopted")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "default-verifier.md")
    args = parser.parse_args()
    if not (args.eval_dir / "clinc150").is_dir():
        sys.exit(f"evaluation data not found in {args.eval_dir} (see shared/eval/README.md); pass --eval-dir")
    started = time.perf_counter()
    vec = Vectors("default")
    options = TrainingOptions(kind="full", learning_rate=5e-5, batch_size=32)
    encoder, facts = cached_verifier("default", lambda: default_pairs(args.eval_dir, vec, args.pairs), options)
    b77_train = read_csv(args.eval_dir / "banking77" / "train.csv")
    b77_test = read_csv(args.eval_dir / "banking77" / "test.csv")
    b77 = Vectors("banking77")
    results = []
    for k in (1, 5):
        test = replay(f"Banking77 K={k}", b77, b77_train, b77_test, k)
        pairs, where = test.pairs()
        grid = test.grid(encoder.score(pairs, batch_size=64), where)
        n = len(b77_test)
        thresholds = np.round(np.arange(0.5, 0.996, 0.005), 3)
        verifier = best_at_goal([(t, *_rates(test.served(grid, t), n)) for t in thresholds])
        cosine = best_at_goal([(t, *_rates(test.cosine(t), n)) for t in np.round(np.arange(0.7, 0.99, 0.005), 3)])
        guarded = best_at_goal([(t, *_rates(_guarded(test, t), n)) for t in np.round(np.arange(0.7, 0.99, 0.005), 3)])
        table = [(t, *_rates(test.served(grid, t), n)) for t in (0.5, 0.8, 0.9, 0.95, 0.98, 0.99)]
        results.append((test.name, verifier, cosine, guarded, table))
        print(test.name, "verifier", verifier, "cosine", cosine, "cosine + guard", guarded, flush=True)
    timing = latency(encoder, pairs)
    k5 = results[1]
    adopted = (
        k5[1] is not None
        and k5[2] is not None
        and k5[3] is not None
        and k5[1][1] > max(k5[2][1], k5[3][1])
        and k5[1][1] >= 3 * k5[2][1]
    )
    if adopted and args.install:
        target = REPO / "pgcache" / "verifiers" / "default.safetensors"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(encoder.to_bytes())
    args.output.write_text(_report(results, facts, timing, adopted, time.perf_counter() - started), encoding="utf-8")
    print(f"{'adopted' if adopted else 'not adopted'}; wrote {args.output}")
    return 0


def _guarded(test, threshold: float) -> tuple[int, int]:
    """Cosine with pgcache's default guard rules on the nearest phrasing."""
    right = wrong = 0
    for qi, query in enumerate(test.queries):
        if test.sims[qi, 0] < threshold:
            continue
        cached = test.cache[test.neighbours[qi, 0]]["text"]
        if guard.rejects(query["text"], cached, guard.select(guard.DEFAULT_RULES)) is not None:
            continue
        if test.right[qi, 0]:
            right += 1
        else:
            wrong += 1
    return right, wrong


def _rates(right_wrong: tuple[int, int], queries: int) -> tuple[float, float]:
    right, wrong = right_wrong
    return right / queries, (wrong / (right + wrong) if right + wrong else 0.0)


def _cell(point) -> str:
    return (
        "none at ≤ 2% wrong"
        if point is None
        else f"{100 * point[1]:.1f}% at {100 * point[2]:.1f}% wrong ({point[0]:.3f})"
    )


def _report(results, facts, timing, adopted: bool, seconds: float) -> str:
    verdict = (
        "**Adopted**: it beats cosine alone and cosine + guard on the Banking77 K=5 replay it never saw, by at "
        "least 3x the cosine-only right-hit rate, and ships as pgcache/verifiers/default.safetensors."
        if adopted
        else "**Not adopted.** On the Banking77 replay it never saw, it does not beat cosine + guard by the margin "
        "the goal asks (3x the cosine-only right-hit rate with at most 2% of hits wrong), so pgcache keeps the "
        "guard as the default and uses a learned verifier only once one is trained on the deployment's own "
        "labels (`pgcache verifier train`)."
    )
    lines = [
        "# A default verifier, judged on data it never saw",
        "",
        "_Generated by `benchmarks/train_default_verifier.py`; rerun it rather than editing this file._",
        "",
        verdict,
        "",
        "## Training data",
        "",
        f"{facts['pairs']:,} pairs ({facts['positives']:,} positive): CLINC150 train replay pairs (CC BY 3.0, "
        "Larson et al. 2019), PAWS-Wiki dev pairs (data from Google LLC, free for any purpose) and generated "
        "contrast pairs — a CLINC150 phrasing against itself with one thing changed ("
        + ", ".join(f"{n} {k}" for k, n in VARIANTS.items())
        + ") as negatives, and same-intent CLINC150 phrasings as positives. The bundled all-MiniLM-L6-v2 "
        f"fine-tuned in full (pgcache's default recipe), lr 5e-5, {len(facts['history'])} epochs run, "
        f"{facts['seconds'] / 60:.0f} min on 2 cores, {facts['bytes'] / 1e6:.1f} MB.",
        "",
        "## Banking77 replay (never seen in training)",
        "",
        f"The {TOP} nearest cached phrasings from cosine 0.6 up are scored; the nearest whose probability reaches the "
        "threshold is served. Each cell: the most right hits (share of queries) with at most 2% of hits wrong, the "
        "wrong share there and the threshold.",
        "",
        "| replay | default verifier | cosine alone | cosine + guard |",
        "|---|---|---|---|",
    ]
    for name, verifier, cosine, guarded, _ in results:
        lines.append(f"| {name} | {_cell(verifier)} | {_cell(cosine)} | {_cell(guarded)} |")
    lines += [
        "",
        "What the default verifier serves at fixed probabilities (right-hit rate / wrong share of hits, in percent):",
        "",
        "| replay | " + " | ".join(f"{t:.2f}" for t, *_ in results[0][4]) + " |",
        "|---" * (len(results[0][4]) + 1) + "|",
    ]
    for name, *_, table in results:
        lines.append(f"| {name} | " + " | ".join(f"{100 * r:.1f} / {100 * w:.1f}" for _, r, w in table) + " |")
    lines += [
        "",
        f"Scoring: {timing['p50']:.1f} ms p50, {timing['p99']:.1f} ms p99 per candidate (3 per lookup, one "
        f"batch, 2 CPU cores). Whole run: {seconds / 60:.0f} min.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
