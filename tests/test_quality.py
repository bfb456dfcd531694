"""pgcache evaluate and calibrate on labelled pairs with known similarities."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from pgcache import Cache, InvalidRequestError
from pgcache.cli import app
from pgcache.quality import Z_95_ONE_SIDED, Pair, calibrate, read_pairs, wilson_lower

from .conftest import TEST_API_KEY, query
from .fake_openai import fake_embedding

runner = CliRunner()

# Positives at similarity 0.99 (20), 0.95 (20), 0.90 (10); negatives at 0.93 (1) and 0.85 (10).
GROUPS = [(0.99, 1, 20), (0.95, 1, 20), (0.90, 1, 10), (0.93, 0, 1), (0.85, 0, 10)]


class TableEmbedder:
    """Vectors whose pairwise similarities are exactly the table's."""

    name, dimensions = "test/table", 2

    def __init__(self):
        self.vectors = {}
        self.pairs = []
        for similarity, label, count in GROUPS:
            for i in range(count):
                a, b = f"a {similarity} {label} {i}", f"b {similarity} {label} {i}"
                self.vectors[a] = [1.0, 0.0]
                self.vectors[b] = [similarity, math.sqrt(1 - similarity**2)]
                self.pairs.append(Pair(a, b, label))

    def embed(self, texts):
        return [self.vectors[t] for t in texts]


def test_wilson_lower_bound():
    assert wilson_lower(40, 40) == pytest.approx(1 / (1 + Z_95_ONE_SIDED**2 / 40))
    assert wilson_lower(0, 0) is None
    assert wilson_lower(50, 51) == pytest.approx(0.9167, abs=1e-4)


@pytest.mark.parametrize("target, expected", [(0.90, 0.90), (0.92, 0.95), (0.95, None)])
def test_calibrate_picks_the_lowest_threshold_meeting_the_lower_bound(target, expected):
    embedder = TableEmbedder()
    sims = np.array([[1.0, 0.0] @ np.array(embedder.vectors[p.b]) for p in embedder.pairs])
    labels = np.array([p.label for p in embedder.pairs])
    chosen = calibrate(sims, labels, target)
    assert (None if chosen is None else round(chosen.threshold, 6)) == expected


def test_cache_calibrate_stores_a_threshold_every_process_uses(database_url, llm):
    embedder = TableEmbedder()
    with Cache(database_url, embedder=embedder, llm=llm) as cache:
        assert cache.threshold_in_force() == (0.92, "default for test/table")
        chosen = cache.calibrate(embedder.pairs, target_precision=0.92, source="fixture.csv")
        assert round(chosen.threshold, 6) == 0.95 and (chosen.true_positives, chosen.false_positives) == (40, 0)
        report = cache.evaluate(embedder.pairs)
    assert query(
        database_url, "SELECT round(threshold::numeric, 6)::float8, pairs, source FROM pgcache_thresholds"
    ) == [(0.95, 61, "fixture.csv")]
    with Cache(database_url, embedder=TableEmbedder(), llm=llm) as other:
        value, source = other.threshold_in_force()
        assert round(value, 6) == 0.95 and source.startswith("calibrated on fixture.csv at ")
        assert other.threshold_in_force("elsewhere")[1] == "default for test/table"
    at = report["at_threshold"]
    assert round(report["threshold"], 6) == 0.95 and (at["true_positives"], at["false_positives"]) == (40, 0)
    row_090 = next(r for r in report["grid"] if r["threshold"] == 0.9)
    assert (row_090["true_positives"], row_090["false_positives"], row_090["recall"]) == (50, 1, 1.0)


def write_pairs(tmp_path, rows, delimiter=","):
    path = tmp_path / "pairs.csv"
    path.write_text(
        f"a{delimiter}b{delimiter}label\n" + "".join(f"{a}{delimiter}{b}{delimiter}{label}\n" for a, b, label in rows)
    )
    return path


def test_cli_evaluate_and_calibrate_with_the_fake_embeddings(database_url, fake, tmp_path):
    rows = [
        ("What is SQL injection", "Explain SQL injection", 1),
        ("SQL injection attacks", "SQL injection in PHP", 1),
        ("buffer overflow basics", "what is a buffer overflow", 1),
        ("weather today", "SQL injection", 0),
        ("buffer overflow", "sql injection defence", 0),
    ]
    path = write_pairs(tmp_path, rows)
    env = {"PGCACHE_DATABASE_URL": database_url, "OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": TEST_API_KEY}
    result = runner.invoke(app, ["evaluate", str(path), "--format", "json"], env=env)
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert (figures["pairs"], figures["positives"], figures["threshold"]) == (5, 3, 0.92)
    assert figures["at_threshold"]["precision"] == 1.0 and figures["at_threshold"]["recall"] == 1.0
    sims = [float(np.dot(fake_embedding(a), fake_embedding(b))) for a, b, label in rows if label]
    done = runner.invoke(app, ["calibrate", str(path), "--target-precision", "0.3"], env=env)
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith(f"stored threshold {min(sims):.4f} for openai/text-embedding-3-small")
    assert query(database_url, "SELECT threshold FROM pgcache_thresholds")[0][0] == pytest.approx(min(sims))
    strict = runner.invoke(app, ["calibrate", str(path), "--target-precision", "0.99"], env=env)
    assert strict.exit_code != 0 and "no threshold reaches precision 0.99" in str(strict.exception)
    report = json.loads(runner.invoke(app, ["report", "--format", "json"], env=env).stdout)
    assert report["threshold"]["value"] == pytest.approx(min(sims))
    assert report["threshold"]["source"].startswith("calibrated on pairs.csv")


def test_pairs_files_are_checked(tmp_path):
    assert [p.label for p in read_pairs(write_pairs(tmp_path, [("x", "y", 1), ("x", "x", 0)], "\t"))] == [1]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\nx,y,maybe\n")
    with pytest.raises(InvalidRequestError, match=r"bad.csv:2: expected two texts and a label of 0 or 1"):
        read_pairs(bad)
    bad.write_text("left,right\nx,y\n")
    with pytest.raises(InvalidRequestError, match="header with a, b and label"):
        read_pairs(bad)


def test_pairs_files_may_be_jsonl(tmp_path):
    from pgcache.quality import read_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text(
        '{"a": "How do I reset my password?", "b": "Password reset steps?", "label": 1}\n\n'
        '{"a": "How do I reset my password?", "b": "How do I reset my router?", "label": "0"}\n'
    )
    assert [(p.b, p.label) for p in read_pairs(path)] == [
        ("Password reset steps?", 1),
        ("How do I reset my router?", 0),
    ]
    path.write_text('{"a": "x", "b": "y", "label": 1}\n{"a": "x", "b": "y", "label": true}\n')
    with pytest.raises(InvalidRequestError, match=r"pairs.jsonl:2: expected two texts and a label of 0 or 1"):
        read_pairs(path)
    path.write_text('{"a": "x", "b": "y", "label": 1}\nnot json\n')
    with pytest.raises(InvalidRequestError, match=r"pairs.jsonl:2: invalid JSON"):
        read_pairs(path)
