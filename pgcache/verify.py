"""The checks a semantic candidate passes before it is served, and why one refuses it.

A candidate is the nearest live entry in the request's scope whose similarity
reached the threshold. :class:`Verifier` runs the chain built by
:func:`build_verifier`, in order; the first check that refuses names the reason,
which the ledger keeps as ``rejected_by``:

1. :class:`EntryThreshold` — the entry's own threshold, raised by wrong-hit feedback;
2. :class:`GuardRules` — the offline guard (:mod:`pgcache.guard`);
3. :class:`JudgeCheck` — an LLM judge (:mod:`pgcache.judge`), when configured.

Checks that are not ``always`` run only in the verification band, below the
sure threshold. A check that compares texts cannot verify an entry stored
without its prompt (``store_prompts=False``): such a candidate is refused.
A new kind of check is a class with ``name``, ``always``, ``compares_texts``
and ``refuses()``, added to the chain in :func:`build_verifier`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .config import Settings
from .guard import rejects, select
from .ledger import LookupRecord


@dataclass(frozen=True, slots=True)
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


class Check(Protocol):
    name: str
    always: bool
    """Run above the sure threshold too."""
    compares_texts: bool
    """Needs the entry's stored prompt."""

    def refuses(self, candidate: Candidate, record: LookupRecord) -> str | None:
        """Why the candidate must not be served, or None; may note its cost on ``record``."""
        ...


class EntryThreshold:
    """An entry that was reported as a wrong hit needs more similarity than the one that served it."""

    name = "feedback"
    always = True
    compares_texts = False

    def refuses(self, candidate: Candidate, record: LookupRecord) -> str | None:
        limit = candidate.entry_threshold
        return "feedback: entry threshold" if limit is not None and candidate.similarity < limit else None


class GuardRules:
    """The offline guard: rules for differences embeddings overlook (argument order, numbers, ...)."""

    name = "guard"
    always = False
    compares_texts = True

    def __init__(self, rules: Sequence[str]) -> None:
        self.rules: dict[str, Callable[[str, str], bool]] = select(rules)

    def refuses(self, candidate: Candidate, record: LookupRecord) -> str | None:
        rule = rejects(candidate.request, candidate.cached or "", self.rules)
        return None if rule is None else f"guard: {rule}"


class JudgeCheck:
    """An LLM judge asked whether one answer serves both requests; its tokens are kept in the ledger."""

    name = "judge"
    always = False
    compares_texts = True

    def __init__(self, judge: Any) -> None:
        self.judge = judge

    def refuses(self, candidate: Candidate, record: LookupRecord) -> str | None:
        verdict = self.judge.verify(candidate.request, candidate.cached or "")
        record.judge_tokens = verdict.prompt_tokens + verdict.completion_tokens
        if verdict.same:
            return None
        return f"judge: {verdict.error}" if verdict.error else "judge"


class Verifier:
    """Runs the chain of checks on a candidate."""

    def __init__(self, checks: Sequence[Check], sure_threshold: float = 1.0) -> None:
        self.checks = list(checks)
        self.sure_threshold = sure_threshold

    def refusal(self, candidate: Candidate, record: LookupRecord) -> str | None:
        """The first reason a check gives to refuse the candidate, or None: serve it."""
        in_band = candidate.similarity < self.sure_threshold
        for check in self.checks:
            if not (check.always or in_band):
                continue
            if check.compares_texts and candidate.cached is None:
                return "unverifiable: no stored prompt"
            reason = check.refuses(candidate, record)
            if reason is not None:
                return reason
        return None


def build_verifier(settings: Settings, judge: Any = None) -> Verifier:
    """The chain in force for a cache's settings: entry thresholds, then the guard, then the judge."""
    checks: list[Check] = [EntryThreshold()]
    if settings.guard and settings.guard_rules:
        checks.append(GuardRules(settings.guard_rules))
    if judge is not None:
        checks.append(JudgeCheck(judge))
    return Verifier(checks, settings.sure_threshold)
