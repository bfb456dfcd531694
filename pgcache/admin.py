"""Maintenance and reporting methods of :class:`pgcache.Cache`: invalidate, sweep, reindex, report."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import numpy as np

from . import maintenance, quality, store
from .durations import parse_ttl
from .embedders import embed_texts
from .errors import InvalidRequestError
from .report import build_report
from .validation import check_name, check_source, check_tags, check_threshold


class CacheAdmin:
    """Mixed into ``Cache``; relies on its ``database()``, ``namespace``, ``embedder``, ``threshold`` and ``prices``.
    """

    def sweep(self, **options: Any) -> maintenance.SweepResult:
        """Delete expired entries and old ledger rows in batches (see :func:`pgcache.maintenance.sweep`)."""
        return maintenance.sweep(self.database(), **options)

    def invalidate(self, *, yes: bool = False, **filters: Any) -> int:
        """Delete the entries every given filter matches; return how many.

        Filters: ``prompt``, ``similar_to`` (text) with ``min_similarity``
        (default: the cache's threshold), ``tags``, ``model``, ``older_than``
        (a duration), ``source``, ``key`` (hex exact key), ``all=True``, and
        ``namespace`` (default: the cache's). Deleting every entry of a
        namespace needs ``yes=True``.
        """
        return maintenance.invalidate(self.database(), self._filters(**filters), yes=yes)

    def preview_invalidation(self, limit: int = 5, **filters: Any) -> tuple[int, list[dict[str, Any]]]:
        """What ``invalidate`` with the same filters would delete: the count and a sample."""
        return maintenance.preview_invalidation(self.database(), self._filters(**filters), limit)

    def reindex(self, **options: Any) -> maintenance.ReindexResult:
        """Retrain the ivfflat index for the current row count (``lists`` = 2 * sqrt(rows), 1 below 2,000 rows)."""
        return maintenance.reindex(self.database(), **options)

    def report(self, *, since: Any = None, namespace: str | None = None, model: str | None = None,
               limit: int = 10) -> dict[str, Any]:
        """Hit rates, tokens, money and LLM time saved, top entries and near misses.

        ``since`` is a duration (``"7d"``); ``namespace`` and ``model`` filter,
        and ``None`` means all of them (unlike lookups, which use the cache's namespace).
        """
        window = None
        if since is not None:
            seconds = parse_ttl(since, name="since")
            window = None if seconds is None else timedelta(seconds=seconds)
        figures = build_report(self.database(), self.prices, since=window, namespace=namespace,
                               model=model, limit=limit)
        value, source = self.threshold_in_force(namespace)
        figures["threshold"] = {"namespace": namespace or self.namespace, "embedder": self.embedder.name,
                                "value": value, "source": source}
        index = self.index_status()
        figures["index"] = {"rows": index.rows, "lists": index.lists, "recommended_lists": index.recommended_lists,
                            "needs_reindex": index.needs_reindex}
        return figures

    def evaluate(self, pairs: list[quality.Pair]) -> dict[str, Any]:
        """Precision, recall and F1 of the semantic decision on labelled pairs, across thresholds.

        Also the figures at the threshold in force for the cache's namespace.
        """
        sims = quality.similarities(self.embedder, pairs)
        labels = np.array([p.label for p in pairs])
        threshold, source = self.threshold_in_force()
        return {
            "embedder": self.embedder.name, "pairs": len(pairs), "positives": int(labels.sum()),
            "threshold": threshold, "threshold_source": source,
            "at_threshold": quality.stats_at(sims, labels, threshold).as_dict(),
            "grid": [stats.as_dict() for stats in quality.evaluate(sims, labels)],
        }

    def calibrate(self, pairs: list[quality.Pair], *, target_precision: float = 0.98, source: str = "pairs",
                  namespace: str | None = None, save: bool = True,
                  with_feedback: bool = False) -> quality.ThresholdStats | None:
        """Choose the lowest threshold meeting ``target_precision`` (95% lower bound) and store it.

        ``with_feedback`` adds the pairs judged with ``report_wrong_hit`` /
        ``report_right_hit`` in the namespace. Returns ``None`` (and stores
        nothing) when no threshold reaches the target on these pairs.
        """
        namespace = self.namespace if namespace is None else check_name(namespace, "namespace")
        if with_feedback:
            with self.database().connection() as conn:
                judged = store.feedback_pairs(conn, namespace, self.embedder.name)
            pairs = [*pairs, *(quality.Pair(a, b, label) for a, b, label in judged if a != b)]
            if not pairs:
                raise InvalidRequestError("no labelled pairs: give a pairs file or record feedback first")
        sims = quality.similarities(self.embedder, pairs)
        chosen = quality.calibrate(sims, np.array([p.label for p in pairs]), target_precision)
        if chosen is not None and save:
            with self.database().connection() as conn:
                store.save_threshold(conn, namespace, self.embedder.name, chosen.threshold, target_precision,
                                     chosen.precision_lower, len(pairs), source)
            self._calibrated.pop((namespace, self.embedder.name), None)
        return chosen

    def report_wrong_hit(self, lookup_id: Any) -> float | None:
        """A semantic hit served the wrong answer: keep the pair, and raise that entry's own threshold
        just above the similarity that served it, so the same phrasing no longer hits it (true
        paraphrases closer than that still do). Returns the entry's new threshold.
        """
        return self._feedback(lookup_id, "wrong")

    def report_right_hit(self, lookup_id: Any) -> None:
        """A semantic hit served the right answer: keep the pair as a positive example for calibration."""
        self._feedback(lookup_id, "right")

    def _feedback(self, lookup_id: Any, verdict: str) -> float | None:
        try:
            lookup_id = uuid.UUID(str(lookup_id))
        except ValueError:
            raise InvalidRequestError(f"lookup id must be a UUID, got {lookup_id!r}") from None
        self.flush()  # the lookup may still be queued for the ledger
        with self.database().connection() as conn:
            outcome, new_threshold = store.record_feedback(conn, lookup_id, verdict)
        if outcome == "unknown":
            raise InvalidRequestError(f"no lookup {lookup_id} in the ledger")
        if outcome != "semantic":
            raise InvalidRequestError(f"lookup {lookup_id} was {'a miss' if outcome == 'miss' else f'an {outcome} hit'}"
                                      "; feedback applies to semantic hits")
        return new_threshold

    def index_status(self) -> maintenance.IndexStatus:
        return maintenance.index_status(self.database())

    def _filters(self, *, namespace: str | None = None, prompt: str | None = None, similar_to: str | None = None,
                 min_similarity: float | None = None, tags: Iterable[str] | None = None, model: str | None = None,
                 older_than: Any = None, source: str | None = None, key: str | None = None,
                 all: bool = False) -> maintenance.Filters:  # noqa: A002 - mirrors the CLI's --all
        filters = maintenance.Filters(
            namespace=self.namespace if namespace is None else check_name(namespace, "namespace"),
            prompt=prompt, model=model, tags=check_tags(tags), everything=all,
        )
        if source is not None:
            filters.source = check_source(source)
        if older_than is not None:
            filters.older_than_seconds = parse_ttl(older_than, name="older_than")
            if filters.older_than_seconds is None:
                raise InvalidRequestError("older_than must be a duration such as 30m, 12h or 7d")
        if key is not None:
            try:
                filters.key = bytes.fromhex(key)
            except ValueError:
                filters.key = b""
            if len(filters.key) != 32:
                raise InvalidRequestError(f"key must be 64 hexadecimal characters (a SHA-256), got {key!r}")
        if similar_to is not None:
            filters.min_similarity = self.threshold if min_similarity is None else check_threshold(min_similarity)
            filters.embedder = self.embedder.name
            filters.similar_to = embed_texts(self.embedder, [similar_to])[0]
        elif min_similarity is not None:
            raise InvalidRequestError("min_similarity only applies together with similar_to")
        return filters

