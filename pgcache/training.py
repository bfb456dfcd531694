"""Training a learned verifier for a namespace: gather labelled pairs, fit, calibrate, store.

Labelled pairs come from files (``a,b,label``), from feedback on semantic
hits (``pgcache feedback``) and from the LLM judge's recorded verdicts. A
cross-encoder (:mod:`pgcache.crossencoder`) is fitted on most of them; on the
pairs held out, its probability threshold is calibrated as ``pgcache
calibrate`` calibrates a cosine threshold: the lowest one whose precision, at
the lower end of a one-sided 95% Wilson interval, reaches the target. The
verifier is stored only when such a threshold exists.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg

from . import crossencoder, quality, queries, verifiers
from .backend import Backend
from .errors import InvalidRequestError

PROBABILITY_GRID = (*(round(0.05 * i, 2) for i in range(1, 20)), 0.97, 0.98, 0.99)
"""Probability thresholds the held-out evaluation is printed at."""


@dataclass
class TrainingResult:
    """What ``pgcache verifier train`` reports."""

    pairs: int
    sources: dict[str, int]
    held_out: int
    seconds: float
    grid: list[dict[str, Any]]
    chosen: dict[str, Any] | None
    """The held-out figures at the calibrated threshold; None when no threshold reaches the target."""
    stored: verifiers.StoredVerifier | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def judged_pairs(conn: psycopg.Connection, namespace: str, embedder: str) -> list[tuple[str, str, int]]:
    """The LLM judge's verdicts of a namespace as labelled pairs."""
    return [(a, b, label) for a, b, label in conn.execute(queries.JUDGEMENT_PAIRS, (namespace, embedder)).fetchall()]


def gather(
    backend: Backend,
    namespace: str,
    embedder: str,
    pairs: Sequence[quality.Pair] = (),
    *,
    with_feedback: bool = False,
    from_judge: bool = False,
) -> tuple[list[quality.Pair], dict[str, int]]:
    """Labelled pairs from the given ones, feedback and judge verdicts; each distinct pair once, its last label."""
    from .admin import feedback_pairs

    sources = {"files": len(pairs)}
    gathered = list(pairs)
    if with_feedback:
        judged = [quality.Pair(a, b, label) for a, b, label in backend.write(feedback_pairs, namespace, embedder)]
        sources["feedback"] = len(judged)
        gathered += judged
    if from_judge:
        judged = [quality.Pair(a, b, label) for a, b, label in backend.write(judged_pairs, namespace, embedder)]
        sources["judge"] = len(judged)
        gathered += judged
    distinct = {(p.a, p.b): p for p in gathered if p.a != p.b}
    return list(distinct.values()), sources


def train(
    backend: Backend,
    namespace: str,
    embedder: str,
    pairs: Sequence[quality.Pair],
    sources: dict[str, int],
    *,
    target_precision: float = 0.98,
    options: crossencoder.TrainingOptions | None = None,
    save: bool = True,
    progress: Callable[[crossencoder.Progress], None] | None = None,
) -> TrainingResult:
    """Fit a verifier on ``pairs``, calibrate it on the held-out part and (with ``save``) store it."""
    if not 0 < target_precision < 1:
        raise InvalidRequestError(f"target precision must be between 0 and 1, got {target_precision!r}")
    started = time.monotonic()
    encoder, summary = crossencoder.train(
        [(p.a, p.b) for p in pairs], [p.label for p in pairs], options, progress=progress
    )
    scores, labels = summary["held_out_scores"], summary["held_out_labels"]
    chosen = quality.calibrate(scores, labels, target_precision)
    result = TrainingResult(
        pairs=len(pairs),
        sources=sources,
        held_out=summary["held_out"],
        seconds=time.monotonic() - started,
        grid=[stats.as_dict() for stats in quality.evaluate(scores, labels, PROBABILITY_GRID)],
        chosen=chosen.as_dict() if chosen is not None else None,
        history=summary["history"],
    )
    if chosen is not None and save:
        weights = encoder.to_bytes()
        metrics = {
            "pairs": result.pairs,
            "sources": sources,
            "held_out": result.held_out,
            "positives": summary["positives"],
            "at_threshold": result.chosen,
            "auc": _auc(scores, labels),
            "history": result.history,
            "options": summary["options"],
            "base_model": "all-MiniLM-L6-v2",
            "seconds": round(result.seconds, 1),
        }
        threshold = min(max(chosen.threshold, 1e-6), 1 - 1e-6)
        result.stored = backend.write(
            verifiers.save, namespace, embedder, weights, threshold, target_precision, metrics
        )
    return result


def _auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve: the chance that a random positive outscores a random negative."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    if not len(positive) or not len(negative):
        return None
    ranks = np.argsort(np.argsort(np.concatenate([positive, negative]))) + 1
    return float(
        (ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2) / (len(positive) * len(negative))
    )
