"""The learned verifier's decision around its threshold, with and without a judge to hand doubtful cases to."""

from __future__ import annotations

import math

import pytest

from pgcache.breaker import CircuitBreaker
from pgcache.ledger import LookupRecord
from pgcache.verify import Candidate, LearnedCheck, log_odds


class Scored:
    """A verifier whose model returns the probabilities it is given, in order."""

    def __init__(self, threshold: float, probabilities: list[float]) -> None:
        self.threshold = threshold
        self.stored = None
        self.encoder = self
        self._probabilities = probabilities

    def score(self, pairs):
        assert len(pairs) == len(self._probabilities)
        return self._probabilities


def decide(probabilities: list[float], *, judged: bool, threshold: float = 0.98, margin: float = 2.0):
    candidates = [Candidate("new question", f"cached {i}", 0.8, i) for i in range(len(probabilities))]
    check = LearnedCheck(Scored(threshold, probabilities), margin=margin, judged=judged, breaker=CircuitBreaker())
    record = LookupRecord.start("gpt-4o-mini", "default")
    reasons = check.refusals(candidates, record)
    return [(reason is None, c.confirmed) for reason, c in zip(reasons, candidates, strict=True)], record


def test_with_a_judge_only_candidates_near_the_threshold_in_log_odds_are_left_to_it():
    # 2.0 log-odds around 0.98 spans about 0.869 to 0.9972.
    decisions, record = decide([0.999, 0.99, 0.95, 0.87, 0.86, 0.2], judged=True)
    assert decisions == [(True, True), (True, False), (True, False), (True, False), (False, False), (False, False)]
    assert [s["probability"] for s in record.verifier_scores] == [0.999, 0.99, 0.95, 0.87, 0.86, 0.2]
    assert record.verifier_probability == 0.999


def test_without_a_judge_the_threshold_alone_decides():
    decisions, _ = decide([0.985, 0.98, 0.979], judged=False)
    assert decisions == [(True, True), (True, True), (False, False)]


@pytest.mark.parametrize("p", [0.0, 1e-12, 0.5, 0.98, 1.0])
def test_log_odds_stay_finite(p):
    assert math.isfinite(log_odds(p)) and (log_odds(p) > 0) == (p > 0.5)
