"""The checks semantic candidates pass before one is served, and why they are refused.

Candidates are the nearest live entries of the request's scope that were
admitted (by the cosine threshold, or by the verifier floor when a learned
verifier is in force), nearest first. :meth:`Verifier.choose` runs the chain
built by :func:`build_verifier` over them, in order, and serves the nearest
candidate that every check lets through:

1. :class:`EntryThreshold` — the entry's own threshold, raised by wrong-hit feedback;
2. :class:`GuardRules` — the offline guard (:mod:`pgcache.guard`);
3. :class:`LearnedCheck` — the learned verifier in force (:mod:`pgcache.verifiers`),
   scoring every remaining candidate in one batch;
4. :class:`JudgeCheck` — an LLM judge (:mod:`pgcache.judge`), asked only about
   candidates the learned verifier is not sure of (all of them when there is none).

Checks that are not ``always`` run only below the sure threshold. A check that
compares texts cannot verify an entry stored without its prompt
(``store_prompts=False``): such a candidate is refused. The ledger's
``rejected_by`` says why the nearest candidate was refused when none is
served. A new kind of check is a class with ``name``, ``always``,
``compares_texts`` and ``refusals()``, added to the chain in
:func:`build_verifier` (or, like the learned verifier, per lookup).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from .config import Settings
from .guard import rejects, select
from .ledger import Judgement, LookupRecord


@dataclass(slots=True)
class Candidate:
    """A semantic candidate: the request's text, the entry's, and how close they are."""

    request: str
    cached: str | None
    """The entry's final user message; None when it was stored without prompts."""
    similarity: float
    """Cosine similarity (1 - pgvector's cosine distance)."""
    entry_id: int
    entry_threshold: float | None = None
    """The entry's own minimum similarity, set by wrong-hit feedback."""
    probability: float | None = None
    """The learned verifier's probability that one answer serves both, once scored."""
    confirmed: bool = False
    """The learned verifier is sure enough that no judge needs to be asked."""


class Check(Protocol):
    name: str
    always: bool
    """Run above the sure threshold too."""
    compares_texts: bool
    """Needs the entry's stored prompt."""

    def refusals(self, candidates: list[Candidate], record: LookupRecord) -> list[str | None]:
        """For each candidate (nearest first), why it must not be served, or None; may note costs on ``record``."""
        ...


class EntryThreshold:
    """An entry that was reported as a wrong hit needs more similarity than the one that served it."""

    name = "feedback"
    always = True
    compares_texts = False

    def refusals(self, candidates: list[Candidate], record: LookupRecord) -> list[str | None]:
        return [
            "feedback: entry threshold" if c.entry_threshold is not None and c.similarity < c.entry_threshold else None
            for c in candidates
        ]


class GuardRules:
    """The offline guard: rules for differences embeddings overlook (argument order, numbers, ...)."""

    name = "guard"
    always = False
    compares_texts = True

    def __init__(self, rules: Sequence[str]) -> None:
        self.rules: dict[str, Callable[[str, str], bool]] = select(rules)

    def refusals(self, candidates: list[Candidate], record: LookupRecord) -> list[str | None]:
        reasons = []
        for c in candidates:
            rule = rejects(c.request, c.cached or "", self.rules)
            reasons.append(None if rule is None else f"guard: {rule}")
        return reasons


def log_odds(probability: float) -> float:
    """log(p / (1 - p)), with p kept a hair inside (0, 1) so that certainty stays finite."""
    p = min(max(probability, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


class LearnedCheck:
    """The learned verifier: a cross-encoder's probability that one answer serves both questions.

    With a judge configured, a candidate within ``margin`` of the threshold is
    left to the judge; one further above is confirmed without asking, one
    further below refused. The distance is in log-odds, because calibrated
    thresholds sit near 1, where a fixed distance in probability leaves no room
    above them. Without a judge the threshold alone decides. A scoring failure
    refuses every candidate (a miss) and trips ``breaker``.
    """

    name = "verifier"
    always = False
    compares_texts = True

    def __init__(self, learned: Any, *, margin: float, judged: bool, breaker: Any) -> None:
        self.learned = learned
        self.margin = margin if judged else 0.0
        self.breaker = breaker

    def refusals(self, candidates: list[Candidate], record: LookupRecord) -> list[str | None]:
        if not candidates:
            return []
        if not self.breaker.allow():
            return ["verifier: unavailable"] * len(candidates)
        started = time.perf_counter()
        try:
            probabilities = self.learned.encoder.score([(c.request, c.cached or "") for c in candidates])
        except (RuntimeError, ValueError, OSError, MemoryError) as exc:
            self.breaker.failure(exc)
            return ["verifier: error"] * len(candidates)
        finally:
            # The forward pass is CPU-bound work: its time is what the verifier costs (pgcache_savings).
            record.verifier_ms = (record.verifier_ms or 0.0) + (time.perf_counter() - started) * 1000
        self.breaker.success()
        threshold = self.learned.threshold
        reasons: list[str | None] = []
        scores = []
        for c, p in zip(candidates, probabilities, strict=True):
            c.probability = float(p)
            if self.margin:
                distance = log_odds(c.probability) - log_odds(threshold)
                c.confirmed, below = distance >= self.margin, distance < -self.margin
            else:
                c.confirmed = c.probability >= threshold
                below = not c.confirmed
            reasons.append(f"verifier: {c.probability:.3f}" if below else None)
            scores.append(
                {"entry_id": c.entry_id, "similarity": round(c.similarity, 6), "probability": round(c.probability, 6)}
            )
        record.verifier_scores = (record.verifier_scores or []) + scores
        if record.verifier_probability is None:
            record.verifier_probability = candidates[0].probability
        return reasons


class JudgeCheck:
    """An LLM judge asked whether one answer serves both requests, nearest unconfirmed candidate first.

    It stops at the first candidate that is confirmed or that it accepts, so a
    lookup costs at most one "yes". Every verdict is recorded (``record_verdict``)
    with both texts, to train a verifier on (``pgcache verifier train --from-judge``).
    """

    name = "judge"
    always = False
    compares_texts = True

    def __init__(self, judge: Any, record_verdict: Callable[[Judgement], None] | None = None) -> None:
        self.judge = judge
        self.record_verdict = record_verdict

    def refusals(self, candidates: list[Candidate], record: LookupRecord) -> list[str | None]:
        reasons: list[str | None] = []
        decided = False
        for c in candidates:
            if decided or c.confirmed:
                decided = True
                reasons.append(None)
                continue
            verdict = self.judge.verify(c.request, c.cached or "")
            record.judge_tokens = (record.judge_tokens or 0) + verdict.prompt_tokens + verdict.completion_tokens
            record.judge_completion_tokens = (record.judge_completion_tokens or 0) + verdict.completion_tokens
            record.judge_model = getattr(self.judge, "model", None)
            if self.record_verdict is not None and verdict.error is None:
                self.record_verdict(
                    Judgement(
                        at=datetime.now(UTC),
                        lookup_id=record.id,
                        namespace=record.namespace,
                        embedder=record.embedder,
                        judge=getattr(self.judge, "model", None),
                        prompt=c.request,
                        entry_prompt=c.cached or "",
                        similarity=c.similarity,
                        verifier_probability=c.probability,
                        verdict=verdict.same,
                    )
                )
            if verdict.same:
                decided = True
                reasons.append(None)
            else:
                reasons.append(f"judge: {verdict.error}" if verdict.error else "judge")
        return reasons


class Verifier:
    """Runs the chain of checks over the candidates of one lookup."""

    def __init__(
        self, checks: Sequence[Check], sure_threshold: float = 1.0, *, judge_margin: float = 2.0, breaker: Any = None
    ) -> None:
        self.checks = list(checks)
        self.sure_threshold = sure_threshold
        self.judge_margin = judge_margin
        self.breaker = breaker

    def chain(self, learned: Any = None) -> list[Check]:
        """The checks in force: the learned verifier, when there is one, goes before the judge."""
        if learned is None:
            return self.checks
        judged = any(isinstance(check, JudgeCheck) for check in self.checks)
        check = LearnedCheck(learned, margin=self.judge_margin, judged=judged, breaker=self.breaker)
        position = next((i for i, c in enumerate(self.checks) if isinstance(c, JudgeCheck)), len(self.checks))
        return [*self.checks[:position], check, *self.checks[position:]]

    def choose(self, candidates: list[Candidate], record: LookupRecord, learned: Any = None) -> Candidate | None:
        """The nearest candidate no check refuses; else None, with the nearest one's refusal on ``record``."""
        refused: dict[int, str] = {}
        for check in self.chain(learned):
            alive = [c for c in candidates if c.entry_id not in refused]
            todo = [c for c in alive if check.always or c.similarity < self.sure_threshold]
            if check.compares_texts:
                for c in todo:
                    if c.cached is None:
                        refused[c.entry_id] = "unverifiable: no stored prompt"
                todo = [c for c in todo if c.cached is not None]
            for c, reason in zip(todo, check.refusals(todo, record), strict=True):
                if reason is not None:
                    refused[c.entry_id] = reason
        for c in candidates:
            if c.entry_id not in refused:
                return c
        record.rejected_by = refused[candidates[0].entry_id]
        return None


def build_verifier(
    settings: Settings,
    judge: Any = None,
    record_verdict: Callable[[Judgement], None] | None = None,
    breaker: Any = None,
) -> Verifier:
    """The chain in force for a cache's settings: entry thresholds, then the guard, then the judge."""
    checks: list[Check] = [EntryThreshold()]
    if settings.guard and settings.guard_rules:
        checks.append(GuardRules(settings.guard_rules))
    if judge is not None:
        # Judge verdicts name both texts; with store_prompts=False they are not kept.
        checks.append(JudgeCheck(judge, record_verdict if settings.store_prompts else None))
    return Verifier(checks, settings.sure_threshold, judge_margin=settings.judge_margin, breaker=breaker)
