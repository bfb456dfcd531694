"""Feedback on semantic hits: per-entry thresholds and labelled pairs for calibration."""

from __future__ import annotations

import math
import uuid
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from pgcache import Cache, InvalidRequestError
from pgcache.cli import app

from .conftest import query

runner = CliRunner()
ENABLE = "How do I enable two-factor authentication?"
DISABLE = "How do I disable two-factor authentication?"
TURN_ON = "How can I turn on two-factor authentication?"


class Angles:
    """2-d vectors at fixed similarities to ENABLE: DISABLE 0.90, TURN_ON 0.97."""

    name, dimensions = "test/angles", 2
    similarity: ClassVar[dict[str, float]] = {ENABLE: 1.0, DISABLE: 0.90, TURN_ON: 0.97}

    def embed(self, texts):
        return [[self.similarity[t], math.sqrt(1 - self.similarity[t] ** 2)] for t in texts]


@pytest.fixture
def cache(database_url, llm):
    with Cache(database_url, embedder=Angles(), llm=llm, threshold=0.85, guard=False) as cache:
        cache.store(ENABLE, "Settings > Security > Enable two-factor authentication.")
        yield cache


def test_a_wrong_hit_tightens_only_that_phrasing(cache, database_url):
    wrong = cache.lookup(DISABLE)
    assert wrong.status == "semantic" and wrong.similarity == pytest.approx(0.90, abs=1e-4)
    new_threshold = cache.feedback("wrong", wrong.lookup_id)
    assert new_threshold == pytest.approx(wrong.similarity + 1e-5)
    assert cache.lookup(DISABLE) is None, "the reported phrasing no longer hits that entry"
    right = cache.lookup(TURN_ON)
    assert right is not None and right.status == "semantic", "a true paraphrase above the new threshold still hits"
    cache.feedback("right", right.lookup_id)
    cache.flush()
    assert query(database_url, "SELECT rejected_by FROM pgcache_lookups WHERE rejected_by IS NOT NULL") == [
        ("feedback: entry threshold",)
    ]
    assert query(database_url, "SELECT verdict, prompt, entry_prompt FROM pgcache_feedback ORDER BY created_at") == [
        ("wrong", DISABLE, ENABLE),
        ("right", TURN_ON, ENABLE),
    ]


def test_feedback_pairs_feed_calibration(cache):
    cache.feedback("wrong", cache.lookup(DISABLE).lookup_id)
    cache.feedback("right", cache.lookup(TURN_ON).lookup_id)
    chosen = cache.calibrate([], target_precision=0.1, with_feedback=True, save=False)
    assert chosen.threshold == pytest.approx(0.97, abs=1e-4)
    assert (chosen.true_positives, chosen.false_positives) == (1, 0)


def test_feedback_errors_are_clear(cache):
    exact = cache.lookup(ENABLE)
    with pytest.raises(InvalidRequestError, match="was an exact hit; feedback applies to semantic hits"):
        cache.feedback("wrong", exact.lookup_id)
    with pytest.raises(InvalidRequestError, match="no lookup"):
        cache.feedback("wrong", uuid.uuid4())
    with pytest.raises(InvalidRequestError, match="must be a UUID"):
        cache.feedback("right", "not-a-uuid")


def test_feedback_cli(cache, database_url):
    hit = cache.lookup(DISABLE)
    cache.flush()
    done = runner.invoke(app, ["feedback", "wrong", str(hit.lookup_id), "--database-url", database_url])
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("kept as a wrong hit; the entry now needs similarity >= 0.900")
    bad = runner.invoke(app, ["feedback", "maybe", str(hit.lookup_id), "--database-url", database_url])
    assert bad.exit_code != 0
