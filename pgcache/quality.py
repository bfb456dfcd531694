"""Measuring the semantic decision on labelled pairs, and calibrating its threshold.

A labelled pair ``(a, b, label)`` says whether one answer serves both texts
(1) or not (0). For a threshold t the semantic tier decides "same" when the
cosine similarity of a and b is at least t; precision is the share of those
decisions that are right. Calibration picks the lowest threshold whose
precision still meets the target at the lower end of a one-sided 95% Wilson
interval, so that a small or lucky sample cannot talk the threshold down.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .embedders import embed_texts
from .errors import InvalidRequestError

Z_95_ONE_SIDED = 1.6448536269514722
DEFAULT_GRID = tuple(round(0.50 + 0.01 * i, 2) for i in range(50))


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    label: int


@dataclass(frozen=True)
class ThresholdStats:
    threshold: float
    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int
    precision: float | None
    precision_lower: float | None
    recall: float | None
    f1: float | None
    wrong_hit_rate: float
    """Wrong "same" decisions as a share of all pairs."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_pairs(path: Path) -> list[Pair]:
    """Pairs from a CSV or TSV file with an ``a,b,label`` header, or JSONL objects with those keys.

    Errors name the file and line. Identical pairs are skipped: they are exact hits.
    """
    from .warm import read_text

    text = read_text(path)
    first = text.lstrip().splitlines()[0]
    rows = _jsonl_rows(path, text) if first.startswith("{") else _csv_rows(path, text, first)
    pairs = []
    for line, a, b, label in rows:
        if (
            label not in ("0", "1", 0, 1)
            or isinstance(label, bool)
            or not isinstance(a, str)
            or not isinstance(b, str)
            or not a
            or not b
        ):
            raise InvalidRequestError(f"{path}:{line}: expected two texts and a label of 0 or 1")
        if a != b:  # an identical pair is an exact hit, not a semantic decision
            pairs.append(Pair(a, b, int(label)))
    if not pairs:
        raise InvalidRequestError(f"{path}: no usable pairs")
    return pairs


def _csv_rows(path: Path, text: str, first: str) -> list[tuple[int, Any, Any, Any]]:
    delimiter = "\t" if "\t" in first else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    if not reader.fieldnames or not {"a", "b", "label"} <= {f.strip() for f in reader.fieldnames}:
        raise InvalidRequestError(f"{path}:1: a pairs file needs a header with a, b and label columns")
    return [(reader.line_num, row.get("a"), row.get("b"), (row.get("label") or "").strip()) for row in reader]


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, Any, Any, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"{path}:{number}: invalid JSON: {exc.msg}") from None
        if not isinstance(item, dict):
            raise InvalidRequestError(f"{path}:{number}: expected an object with a, b and label")
        rows.append((number, item.get("a"), item.get("b"), item.get("label")))
    return rows


def similarities(embedder: Any, pairs: list[Pair]) -> np.ndarray:
    """Cosine similarity of each pair, embedding every distinct text once."""
    texts = sorted({p.a for p in pairs} | {p.b for p in pairs})
    index = {text: i for i, text in enumerate(texts)}
    vectors = embed_texts(embedder, texts)  # unit vectors
    a = vectors[[index[p.a] for p in pairs]]
    b = vectors[[index[p.b] for p in pairs]]
    # Rounded: vectors are stored as float32, whose last digits are noise, not signal.
    return np.round(np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64)), 6)


def wilson_lower(successes: int, trials: int, z: float = Z_95_ONE_SIDED) -> float | None:
    """Lower bound of the Wilson score interval for a proportion."""
    if trials == 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return (centre - margin) / denominator


def stats_at(sims: np.ndarray, labels: np.ndarray, threshold: float) -> ThresholdStats:
    same = sims >= threshold
    tp = int(np.sum(same & (labels == 1)))
    fp = int(np.sum(same & (labels == 0)))
    fn = int(np.sum(~same & (labels == 1)))
    tn = int(np.sum(~same & (labels == 0)))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * precision * recall / (precision + recall) if precision and recall else None
    return ThresholdStats(threshold, tp, fp, fn, tn, precision, wilson_lower(tp, tp + fp), recall, f1, fp / len(labels))


def evaluate(sims: np.ndarray, labels: np.ndarray, grid=DEFAULT_GRID) -> list[ThresholdStats]:
    return [stats_at(sims, labels, t) for t in grid]


def calibrate(sims: np.ndarray, labels: np.ndarray, target_precision: float) -> ThresholdStats | None:
    """The lowest threshold (one of the observed similarities) whose precision's lower bound meets the target."""
    if not 0 < target_precision < 1:
        raise InvalidRequestError(f"target precision must be between 0 and 1, got {target_precision!r}")
    for threshold in np.unique(sims[labels == 1]):  # ascending; a threshold between them changes nothing
        stats = stats_at(sims, labels, float(threshold))
        if stats.precision_lower is not None and stats.precision_lower >= target_precision:
            return stats
    return None
