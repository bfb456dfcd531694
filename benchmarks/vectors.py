"""Clustered synthetic embeddings that behave like cached questions and their paraphrases.

Real FAQ traffic is many phrasings of fewer intents: entries come in clusters (an intent's
phrasings), a repeat question lands very close to one stored phrasing, and a new question
lands in a cluster without being a near-duplicate of anything. The generator reproduces
that in the full 1536 dimensions of the column (as text-embedding-3-small fills them):

* ``entries``: ``n`` unit vectors in ``n / cluster_size`` clusters, each member
  ``normalize(centre + spread * noise)``; members of a cluster have cosine ~0.64 to one
  another and ~0 to other clusters.
* ``paraphrases``: an entry plus small noise (cosine ~0.96 to it): these should hit.
* ``novel``: a new member of an existing cluster (cosine ~0.64 to its nearest entry): these
  should miss.

``similarity_profile`` measures what the queries actually look like, for the report.
"""

from __future__ import annotations

import numpy as np

DIMENSIONS = 1536
CLUSTER_SIZE = 20
SPREAD = 0.75  # member = centre + SPREAD * unit noise: cosine to the centre 1 / sqrt(1 + SPREAD^2)
PARAPHRASE_NOISE = 0.3  # cosine to the source ~ 1 / sqrt(1 + 0.3^2) = 0.96


def _unit(matrix: np.ndarray) -> np.ndarray:
    return (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)


def _noise(rng: np.random.Generator, rows: int) -> np.ndarray:
    return _unit(rng.standard_normal((rows, DIMENSIONS), dtype=np.float32))


class ClusteredVectors:
    """A reproducible data set of clustered entries and the queries that go with them."""

    def __init__(self, n: int, seed: int = 7, cluster_size: int = CLUSTER_SIZE) -> None:
        self.rng = np.random.default_rng(seed)
        self.clusters = max(1, n // cluster_size)
        self.centres = _noise(self.rng, self.clusters)
        self.labels = np.arange(n) % self.clusters
        self.entries = self._members(self.labels)

    def _members(self, labels: np.ndarray) -> np.ndarray:
        return _unit(self.centres[labels] + SPREAD * _noise(self.rng, len(labels)))

    def paraphrases(self, count: int, among: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Queries near stored entries (the first ``among`` of them), and the entry each one came from."""
        sources = self.rng.integers(0, among or len(self.entries), count)
        return _unit(self.entries[sources] + PARAPHRASE_NOISE * _noise(self.rng, count)), sources

    def novel(self, count: int) -> np.ndarray:
        """New phrasings of stored intents: near the clusters, near no single entry."""
        return self._members(self.rng.integers(0, self.clusters, count))


def exact_nearest(entries: np.ndarray, queries: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force nearest entry (by cosine) of each query: indices and similarities."""
    best = np.empty(len(queries), dtype=np.int64)
    score = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        sims = queries[start : start + chunk] @ entries.T
        best[start : start + chunk] = sims.argmax(axis=1)
        score[start : start + chunk] = sims.max(axis=1)
    return best, score


def similarity_profile(entries: np.ndarray, queries: dict[str, np.ndarray]) -> list[dict[str, object]]:
    """Percentiles of each query kind's similarity to its nearest entry, plus entry-to-entry."""
    sample = entries[: min(len(entries), 2000)]
    others = entries.copy()
    sims = sample @ others.T
    np.fill_diagonal(sims[:, : len(sample)], -1)
    kinds = {
        "entry to its nearest other entry": sims.max(axis=1),
        **{f"{name} query to its nearest entry": exact_nearest(entries, q)[1] for name, q in queries.items()},
    }
    return [percentiles(name, values) for name, values in kinds.items()]


def percentiles(label: str, values: np.ndarray) -> dict[str, object]:
    """A similarity profile row: p1, p10, median, p90, p99 of ``values``."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return {"pairs": label, "n": 0}
    p = np.percentile(values, [1, 10, 50, 90, 99])
    return {
        "pairs": label,
        "n": len(values),
        "p1": round(float(p[0]), 3),
        "p10": round(float(p[1]), 3),
        "median": round(float(p[2]), 3),
        "p90": round(float(p[3]), 3),
        "p99": round(float(p[4]), 3),
    }
