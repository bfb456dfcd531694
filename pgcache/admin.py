"""Maintenance, reporting and calibration of a cache: the work behind the CLI's commands.

:class:`Admin` is composed into :class:`pgcache.Cache` (``cache.admin``); the
cache's methods of the same names call it. It uses the cache's backend,
embedder and thresholds, never its private state.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import psycopg

from . import hooks, maintenance, quality, queries, training, verifiers
from .backend import Backend
from .config import UNSET, Settings, default_prices
from .durations import parse_ttl
from .embedders import embed_texts
from .errors import InvalidRequestError
from .ledger import LedgerWriter
from .lookup import Thresholds
from .report import build_report
from .validation import check_name, check_source, check_tags, check_threshold
from .verifiers import Verifiers

FEEDBACK_MARGIN = 1e-5
"""A wrong hit raises the entry's own threshold this far above the similarity that served it."""
VERDICTS = ("wrong", "right")


class Admin:
    """Sweep, invalidate, reindex, report, evaluate, calibrate and feedback for one cache."""

    def __init__(
        self,
        backend: Backend,
        embedder: Any,
        thresholds: Thresholds,
        ledger: LedgerWriter,
        settings: Settings,
        learned: Verifiers | None = None,
    ) -> None:
        self.backend = backend
        self.embedder = embedder
        self.thresholds = thresholds
        self.ledger = ledger
        self.learned = learned
        self.namespace = settings.namespace
        self.prices = default_prices(settings)
        self.max_entries = settings.max_entries

    def sweep(self, *, max_entries: Any = UNSET, **options: Any) -> maintenance.SweepResult:
        """Delete expired entries, old ledger rows and entries over capacity (see :func:`pgcache.maintenance.sweep`).

        ``max_entries`` defaults to the cache's setting (``PGCACHE_MAX_ENTRIES``).
        """
        limit = self.max_entries if max_entries is UNSET else max_entries
        return maintenance.sweep(self.backend.database(), max_entries=limit, **options)

    def invalidate(self, *, yes: bool = False, **filters: Any) -> int:
        """Delete the entries every given filter matches; return how many.

        Filters: ``prompt``, ``similar_to`` (text) with ``min_similarity``
        (default: the threshold in force), ``tags``, ``model``, ``older_than``
        (a duration), ``source``, ``key`` (hex exact key), ``all=True``, and
        ``namespace`` (default: the cache's). Deleting every entry of a
        namespace needs ``yes=True``.
        """
        return maintenance.invalidate(self.backend.database(), self.filters(**filters), yes=yes)

    def invalidate_tags(self, tags: Iterable[str], *, namespace: str | None = None, mode: str = "delete") -> int:
        """Delete (``mode="expire"``: expire) the entries carrying any of ``tags``; return how many.

        For changes that happen outside the database (a CMS webhook, a file
        that changed). ``namespace=None`` means every namespace, as hooks do.
        """
        return hooks.invalidate_tags(self.backend.database(), tags, namespace=namespace, mode=mode)

    def add_hook(self, table: str, **options: Any) -> hooks.Hook:
        """Install an invalidation hook on an application table (see :func:`pgcache.hooks.add_hook`)."""
        return hooks.add_hook(self.backend.database(), table, **options)

    def list_hooks(self) -> list[hooks.Hook]:
        """Every installed invalidation hook."""
        return hooks.list_hooks(self.backend.database())

    def remove_hook(self, hook_id: int) -> bool:
        """Drop an invalidation hook and its triggers; False if there was none with that id."""
        return hooks.remove_hook(self.backend.database(), hook_id)

    def preview_invalidation(self, limit: int = 5, **filters: Any) -> tuple[int, list[dict[str, Any]]]:
        """What ``invalidate`` with the same filters would delete: the count and a sample."""
        return maintenance.preview_invalidation(self.backend.database(), self.filters(**filters), limit)

    def reindex(self, **options: Any) -> maintenance.ReindexResult:
        """Retrain the ivfflat index for the current row count (see :func:`pgcache.maintenance.reindex`)."""
        return maintenance.reindex(self.backend.database(), **options)

    def index_status(self) -> maintenance.IndexStatus:
        return maintenance.index_status(self.backend.database())

    def report(
        self,
        *,
        since: Any = None,
        namespace: str | None = None,
        model: str | None = None,
        limit: int = 10,
        what_if_threshold: float | None = None,
    ) -> dict[str, Any]:
        """Hit rates, tokens, money and LLM time saved, top entries, near misses, threshold and index.

        ``since`` is a duration (``"7d"``); ``namespace`` and ``model`` filter,
        and ``None`` means all of them (unlike lookups, which use the cache's namespace).
        ``what_if_threshold`` adds a ``what_if`` section: the semantic hits that
        threshold would have served instead, replayed from the ledger
        (:func:`pgcache.report.what_if`).
        """
        if what_if_threshold is not None:
            what_if_threshold = check_threshold(what_if_threshold, "what_if_threshold")
        self.ledger.flush()  # this process's latest lookups count too
        window = None
        if since is not None:
            seconds = parse_ttl(since, name="since")
            window = None if seconds is None else timedelta(seconds=seconds)
        figures = build_report(
            self.backend.database(),
            self.prices,
            since=window,
            namespace=namespace,
            model=model,
            limit=limit,
            what_if_threshold=what_if_threshold,
        )
        value, source = self.thresholds.in_force(namespace or self.namespace)
        figures["threshold"] = {
            "namespace": namespace or self.namespace,
            "embedder": self.embedder.name,
            "value": value,
            "source": source,
        }
        stored = self.backend.write(verifiers.newest, namespace or self.namespace, self.embedder.name)
        figures["verifier"] = None if stored is None else _verifier_summary(stored)
        index = self.index_status()
        figures["index"] = {
            "rows": index.rows,
            "lists": index.lists,
            "recommended_lists": index.recommended_lists,
            "needs_reindex": index.needs_reindex,
        }
        return figures

    def evaluate(self, pairs: list[quality.Pair]) -> dict[str, Any]:
        """Precision, recall and F1 of the semantic decision on labelled pairs, across thresholds."""
        sims = quality.similarities(self.embedder, pairs)
        labels = np.array([p.label for p in pairs])
        threshold, source = self.thresholds.in_force(self.namespace)
        return {
            "embedder": self.embedder.name,
            "pairs": len(pairs),
            "positives": int(labels.sum()),
            "threshold": threshold,
            "threshold_source": source,
            "at_threshold": quality.stats_at(sims, labels, threshold).as_dict(),
            "grid": [stats.as_dict() for stats in quality.evaluate(sims, labels)],
        }

    def calibrate(
        self,
        pairs: list[quality.Pair],
        *,
        target_precision: float = 0.98,
        source: str = "pairs",
        namespace: str | None = None,
        save: bool = True,
        with_feedback: bool = False,
    ) -> quality.ThresholdStats | None:
        """Choose the lowest threshold meeting ``target_precision`` (95% lower bound) and store it.

        Stored per namespace and embedder, so every process uses it. ``with_feedback``
        adds the pairs judged with :meth:`feedback`. Returns ``None`` (and stores
        nothing) when no threshold reaches the target on these pairs.
        """
        namespace = self.namespace if namespace is None else check_name(namespace, "namespace")
        if with_feedback:
            judged = self.backend.write(feedback_pairs, namespace, self.embedder.name)
            pairs = [*pairs, *(quality.Pair(a, b, label) for a, b, label in judged if a != b)]
            if not pairs:
                raise InvalidRequestError("no labelled pairs: give a pairs file or record feedback first")
        sims = quality.similarities(self.embedder, pairs)
        chosen = quality.calibrate(sims, np.array([p.label for p in pairs]), target_precision)
        if chosen is not None and save:
            self.backend.write(
                save_threshold,
                namespace,
                self.embedder.name,
                chosen.threshold,
                target_precision,
                chosen.precision_lower,
                len(pairs),
                source,
            )
            self.thresholds.forget(namespace)
        return chosen

    def train_verifier(
        self,
        pairs: Sequence[quality.Pair] = (),
        *,
        namespace: str | None = None,
        with_feedback: bool = False,
        from_judge: bool = False,
        target_precision: float = 0.98,
        options: Any = None,
        save: bool = True,
        progress: Any = None,
    ) -> training.TrainingResult:
        """Train a learned verifier on labelled pairs, feedback and judge verdicts; store it if it calibrates.

        ``options`` is a :class:`pgcache.crossencoder.TrainingOptions` (epochs,
        LoRA rank, held-out share, ...). The probability threshold is the lowest
        whose held-out precision (95% lower bound) reaches ``target_precision``;
        when none does, nothing is stored (``result.stored`` is None). Every
        process using the database picks the new version up within a minute.
        """
        namespace = self.namespace if namespace is None else check_name(namespace, "namespace")
        gathered, sources = training.gather(
            self.backend, namespace, self.embedder.name, pairs, with_feedback=with_feedback, from_judge=from_judge
        )
        result = training.train(
            self.backend,
            namespace,
            self.embedder.name,
            gathered,
            sources,
            target_precision=target_precision,
            options=options,
            save=save,
            progress=progress,
        )
        if self.learned is not None:
            self.learned.forget(namespace)
        return result

    def list_verifiers(self, namespace: str | None = None) -> list[verifiers.StoredVerifier]:
        """The stored verifiers (of ``namespace``; all when None), newest version first."""
        return self.backend.write(verifiers.listing, namespace)

    def show_verifier(self, version: int | None = None, namespace: str | None = None) -> verifiers.StoredVerifier:
        """A stored verifier of the namespace (default: the cache's): the given version, else the one in force."""
        namespace = self.namespace if namespace is None else check_name(namespace, "namespace")
        found = [v for v in self.list_verifiers(namespace) if v.embedder == self.embedder.name]
        chosen = next((v for v in found if version is None or v.version == version), None)
        if chosen is None:
            which = "a verifier" if version is None else f"verifier version {version}"
            raise InvalidRequestError(f"no {which} for namespace {namespace!r} and embedder {self.embedder.name}")
        return chosen

    def delete_verifier(self, version: int, namespace: str | None = None) -> None:
        """Delete one stored version; the previous one (if any) comes into force."""
        namespace = self.namespace if namespace is None else check_name(namespace, "namespace")
        if not self.backend.write(verifiers.delete, namespace, self.embedder.name, version):
            raise InvalidRequestError(
                f"no verifier version {version} for namespace {namespace!r} and embedder {self.embedder.name}"
            )
        if self.learned is not None:
            self.learned.forget(namespace)

    def feedback(self, verdict: str, lookup_id: Any) -> float | None:
        """Judge a semantic hit ``"wrong"`` or ``"right"``; both keep the pair for calibration.

        "wrong" also raises that entry's own threshold just above the similarity
        that served it, so the same phrasing misses it while closer paraphrases
        still hit; the new threshold is returned.
        """
        if verdict not in VERDICTS:
            raise InvalidRequestError(f"verdict must be wrong or right, got {verdict!r}")
        try:
            lookup_id = uuid.UUID(str(lookup_id))
        except ValueError:
            raise InvalidRequestError(f"lookup id must be a UUID, got {lookup_id!r}") from None
        self.ledger.flush()  # the lookup may still be queued for the ledger
        outcome, new_threshold = self.backend.write(record_feedback, lookup_id, verdict)
        if outcome == "unknown":
            raise InvalidRequestError(f"no lookup {lookup_id} in the ledger")
        if outcome != "semantic":
            raise InvalidRequestError(
                f"lookup {lookup_id} was {'a miss' if outcome == 'miss' else f'an {outcome} hit'}"
                "; feedback applies to semantic hits"
            )
        return new_threshold

    def filters(
        self,
        *,
        namespace: str | None = None,
        prompt: str | None = None,
        similar_to: str | None = None,
        min_similarity: float | None = None,
        tags: Iterable[str] | None = None,
        model: str | None = None,
        older_than: Any = None,
        source: str | None = None,
        key: str | None = None,
        all: bool = False,
    ) -> maintenance.Filters:
        """Checked invalidation filters (``similar_to`` embedded once)."""
        filters = maintenance.Filters(
            namespace=self.namespace if namespace is None else check_name(namespace, "namespace"),
            prompt=prompt,
            model=model,
            tags=check_tags(tags),
            everything=all,
        )
        if source is not None:
            filters.source = check_source(source)
        if older_than is not None:
            filters.older_than = parse_ttl(older_than, name="older_than")
            if filters.older_than is None:
                raise InvalidRequestError("older_than must be a duration such as 30m, 12h or 7d")
        if key is not None:
            try:
                filters.key = bytes.fromhex(key)
            except ValueError:
                filters.key = b""
            if len(filters.key) != 32:
                raise InvalidRequestError(f"key must be 64 hexadecimal characters (a SHA-256), got {key!r}")
        if similar_to is not None:
            filters.min_similarity = (
                self.thresholds.in_force(filters.namespace)[0]
                if min_similarity is None
                else check_threshold(min_similarity)
            )
            filters.embedder = self.embedder.name
            filters.similar_to = embed_texts(self.embedder, [similar_to])[0]
        elif min_similarity is not None:
            raise InvalidRequestError("min_similarity only applies together with similar_to")
        return filters


def _verifier_summary(stored: verifiers.StoredVerifier) -> dict[str, Any]:
    at = stored.metrics.get("at_threshold") or {}
    return {
        "version": stored.version,
        "threshold": stored.threshold,
        "precision": at.get("precision"),
        "precision_lower": at.get("precision_lower"),
        "recall": at.get("recall"),
        "pairs": stored.metrics.get("pairs"),
        "created_at": stored.created_at.isoformat(),
    }


def save_threshold(
    conn: psycopg.Connection,
    namespace: str,
    embedder: str,
    threshold: float,
    target_precision: float,
    precision_lower: float | None,
    pairs: int,
    source: str,
) -> None:
    conn.execute(
        queries.SAVE_THRESHOLD, (namespace, embedder, threshold, target_precision, precision_lower, pairs, source)
    )


def record_feedback(conn: psycopg.Connection, lookup_id: uuid.UUID, verdict: str) -> tuple[str, float | None]:
    """Keep a verdict on a lookup; on ``wrong``, tighten the entry. Returns the outcome and the new entry threshold."""
    with conn.transaction():
        found = conn.execute(queries.FEEDBACK_LOOKUP, (lookup_id,)).fetchone()
        if found is None:
            return "unknown", None
        outcome, entry_id, similarity, namespace, embedder, prompt, entry_prompt = found
        if outcome != "semantic":
            return outcome, None
        conn.execute(
            queries.SAVE_FEEDBACK, (lookup_id, verdict, namespace, embedder, entry_id, prompt, entry_prompt, similarity)
        )
        if verdict != "wrong":
            return outcome, None
        row = conn.execute(queries.TIGHTEN_ENTRY, (similarity + FEEDBACK_MARGIN, entry_id)).fetchone()
        return outcome, row[0] if row else None


def feedback_pairs(conn: psycopg.Connection, namespace: str, embedder: str) -> list[tuple[str, str, int]]:
    return [(a, b, label) for a, b, label in conn.execute(queries.FEEDBACK_PAIRS, (namespace, embedder)).fetchall()]
