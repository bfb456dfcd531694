"""Data and trained verifiers for the learned-verifier benchmarks.

* Replays (Banking77, CLINC150): the first K train phrasings of every intent are the cached
  questions; a test query's candidates are its nearest cached phrasings by cosine (the top
  :data:`TOP` from the floor up), as ``pgcache_neighbours()`` returns them.
* In-domain training pairs: every other train phrasing with its nearest cached phrasings,
  labelled 1 when the intents agree: the same distribution the verifier meets when serving.
* Trained verifiers are cached under ``.bench-cache/verifiers/`` (not in the repository), keyed
  by the recipe, so that a rerun of a report scores without training again.

The evaluation data is read by path (shared/eval/README.md); it is not part of this repository.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pgcache.crossencoder import CrossEncoder, TrainingOptions, held_out_split, train
from pgcache.embedders import LocalEmbedder, embed_texts
from pgcache.quality import calibrate

REPO = Path(__file__).resolve().parents[1]
EVAL = REPO.parent / "shared" / "eval"
CACHE = REPO / ".bench-cache"
OOS = "oos"
TOP = 3
"""Candidates per query the verifier scores (pgcache's ``verifier_candidates`` default)."""
FLOOR = 0.6
"""Cosine similarity from which a candidate is scored (pgcache's ``verifier_floor`` default)."""
GOAL = 0.02
"""At most 2% of semantic hits wrong."""
TARGET_PRECISION = 0.98
"""What ``pgcache verifier train`` calibrates to by default."""


def read_csv(path: Path, limit: int | None = None) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))[:limit]


def first_k(rows: list[dict[str, str]], k: int) -> list[dict[str, str]]:
    """The first k phrasings of every in-scope intent, in file order."""
    seen: dict[str, int] = defaultdict(int)
    picked = []
    for row in rows:
        if row["intent"] != OOS and seen[row["intent"]] < k:
            seen[row["intent"]] += 1
            picked.append(row)
    return picked


class Vectors:
    """all-MiniLM-L6-v2 unit vectors (384-d) of texts, embedded once and kept on disk between runs."""

    def __init__(self, name: str) -> None:
        self.path = CACHE / f"embeddings-{name}.npz"
        self.vectors: dict[str, np.ndarray] = {}
        if self.path.exists():
            stored = np.load(self.path)
            self.vectors = dict(zip(stored["texts"].tolist(), stored["vectors"], strict=True))
        self._embedder: LocalEmbedder | None = None

    def __call__(self, texts: list[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self.vectors}, key=len)
        if missing:
            self._embedder = self._embedder or LocalEmbedder()
            for start in range(0, len(missing), 2000):
                chunk = missing[start : start + 2000]
                self.vectors.update(zip(chunk, embed_texts(self._embedder, chunk)[:, :384], strict=True))
            CACHE.mkdir(exist_ok=True)
            np.savez(self.path, texts=np.array(list(self.vectors)), vectors=np.array(list(self.vectors.values())))
        return np.stack([self.vectors[t] for t in texts])


@dataclass
class Replay:
    """Test queries with their nearest cached phrasings: indices, similarities, and whether each is right."""

    name: str
    queries: list[dict[str, str]]
    cache: list[dict[str, str]]
    neighbours: np.ndarray  # (queries, TOP) indices into cache, nearest first
    sims: np.ndarray  # (queries, TOP) cosine similarities
    right: np.ndarray  # (queries, TOP) the cached phrasing's intent is the query's (never for oos)

    def pairs(self, floor: float = FLOOR) -> tuple[list[tuple[str, str]], list[tuple[int, int]]]:
        """The candidate pairs from the floor up, and where each sits in the (query, rank) grid."""
        pairs, where = [], []
        for qi, (query, row, sims) in enumerate(zip(self.queries, self.neighbours, self.sims, strict=True)):
            for rank, (j, s) in enumerate(zip(row, sims, strict=True)):
                if s >= floor:
                    pairs.append((query["text"], self.cache[j]["text"]))
                    where.append((qi, rank))
        return pairs, where

    def grid(self, scores: np.ndarray, where: list[tuple[int, int]]) -> np.ndarray:
        """Scores placed in a (queries, TOP) grid; -1 where nothing was scored."""
        grid = np.full(self.neighbours.shape, -1.0)
        for (qi, rank), score in zip(where, scores, strict=True):
            grid[qi, rank] = score
        return grid

    def served(self, probabilities: np.ndarray, threshold: float, top: int = TOP) -> tuple[int, int]:
        """(right, wrong) hits when the nearest candidate whose probability reaches the threshold is served."""
        passing = probabilities[:, :top] >= threshold
        first = passing.argmax(axis=1)
        hit = passing.any(axis=1)
        correct = self.right[np.arange(len(self.queries)), first]
        return int((hit & correct).sum()), int((hit & ~correct).sum())

    def cosine(self, threshold: float) -> tuple[int, int]:
        """(right, wrong) hits of the nearest phrasing at a cosine threshold."""
        hit = self.sims[:, 0] >= threshold
        return int((hit & self.right[:, 0]).sum()), int((hit & ~self.right[:, 0]).sum())


def replay(
    name: str, vec: Vectors, train_rows: list[dict[str, str]], test_rows: list[dict[str, str]], k: int, top: int = TOP
) -> Replay:
    cache = first_k(train_rows, k)
    sims = vec([q["text"] for q in test_rows]) @ vec([c["text"] for c in cache]).T
    order = np.argsort(-sims, axis=1)[:, :top]
    right = np.array(
        [[cache[j]["intent"] == q["intent"] for j in row] for q, row in zip(test_rows, order, strict=True)]
    )
    return Replay(name, test_rows, cache, order, np.take_along_axis(sims, order, axis=1), right)


def training_pairs(
    vec: Vectors,
    train_rows: list[dict[str, str]],
    k: int,
    limit: int,
    *,
    top: int = TOP,
    floor: float = FLOOR - 0.1,
    seed: int = 0,
) -> tuple[list[tuple[str, str]], list[int]]:
    """Train phrasings outside the K-per-intent cache, each with its nearest cached phrasings (1: same intent)."""
    cache = first_k(train_rows, k)
    cached = {c["text"] for c in cache}
    queries = [r for r in train_rows if r["text"] not in cached and r["intent"] != OOS]
    sims = vec([q["text"] for q in queries]) @ vec([c["text"] for c in cache]).T
    order = np.argsort(-sims, axis=1)[:, :top]
    pairs, labels = [], []
    for q, row, all_sims in zip(queries, order, sims, strict=True):
        for j in row:
            if all_sims[j] >= floor:
                pairs.append((q["text"], cache[j]["text"]))
                labels.append(int(q["intent"] == cache[j]["intent"]))
    picked = list(range(len(pairs)))
    random.Random(seed).shuffle(picked)
    picked = picked[:limit]
    return [pairs[i] for i in picked], [labels[i] for i in picked]


def best_at_goal(rates: list[tuple[float, float, float]]) -> tuple[float, float, float] | None:
    """Of (threshold, right-hit rate, wrong share) points, the highest right-hit rate with wrong share <= 2%."""
    eligible = [point for point in rates if point[2] <= GOAL and point[1] > 0]  # serving nothing is no point
    return max(eligible, key=lambda point: point[1]) if eligible else None


def cached_verifier(
    name: str,
    pairs_of: Callable[[], tuple[list[tuple[str, str]], list[int]]],
    options: TrainingOptions,
    log: Callable[[str], None] | None = None,
) -> tuple[CrossEncoder, dict]:
    """A verifier trained on ``pairs_of()`` with ``options``, from the disk cache when the same recipe ran before."""
    log = log or (lambda line: print(line, flush=True))
    pairs, labels = pairs_of()
    recipe = hashlib.sha256(json.dumps([name, asdict(options), pairs, labels]).encode()).hexdigest()[:16]
    folder = CACHE / "verifiers"
    weights, info = folder / f"{name}-{recipe}.safetensors", folder / f"{name}-{recipe}.json"
    if weights.exists() and info.exists():
        log(f"  {name}: trained before ({weights.name})")
        encoder, facts = CrossEncoder.from_bytes(weights.read_bytes()), json.loads(info.read_text())
        if "calibrated" not in facts:
            facts["calibrated"] = calibrated_threshold(encoder, pairs, labels, options)
            info.write_text(json.dumps(facts, indent=2))
        return encoder, facts
    log(f"  {name}: training on {len(pairs):,} pairs ({sum(labels):,} positive), {options.kind}")
    started, last = time.perf_counter(), [0.0]

    def progress(step):
        if time.perf_counter() - last[0] > 60 or step.held_out_loss is not None:
            last[0] = time.perf_counter()
            held = f", held-out loss {step.held_out_loss:.3f}" if step.held_out_loss is not None else ""
            log(f"    epoch {step.epoch}/{step.epochs} batch {step.batch}/{step.batches}, loss {step.loss:.3f}{held}")

    encoder, summary = train(pairs, labels, options, progress=progress)
    data = encoder.to_bytes()
    facts = {
        "name": name,
        "pairs": len(pairs),
        "positives": sum(labels),
        "seconds": time.perf_counter() - started,
        "bytes": len(data),
        "history": summary["history"],
        "options": asdict(options),
        "calibrated": calibrated_threshold(encoder, pairs, labels, options),
    }
    folder.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(data)
    info.write_text(json.dumps(facts, indent=2))
    return CrossEncoder.from_bytes(data), facts


def calibrated_threshold(
    encoder: CrossEncoder, pairs: list[tuple[str, str]], labels: list[int], options: TrainingOptions
) -> float | None:
    """The probability threshold training would have calibrated on its held-out pairs (as pgcache stores it)."""
    held, _, _ = held_out_split(len(pairs), options)
    chosen = calibrate(
        encoder.score([pairs[i] for i in held], batch_size=64), np.array([labels[i] for i in held]), TARGET_PRECISION
    )
    return None if chosen is None else chosen.threshold


def latency(encoder: CrossEncoder, pairs: list[tuple[str, str]], per_lookup: int = TOP, n: int = 200) -> dict:
    """Per-candidate scoring time when a lookup scores ``per_lookup`` candidates in one batch (ms)."""
    rng = random.Random(3)
    times = []
    for _ in range(n):
        batch = rng.sample(pairs, per_lookup)
        started = time.perf_counter()
        encoder.score(batch)
        times.append((time.perf_counter() - started) * 1000 / per_lookup)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99))}
