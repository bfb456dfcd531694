"""Every benchmark scenario runs at toy size and writes a well-formed report (no timings are judged here)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("exact", "semantic", "peers", "warm", "sweep", "concurrency", "lifecycle", "proxy", "invalidation")


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """One toy-size run of every scenario: the parsed JSON results and the Markdown report."""
    folder = tmp_path_factory.mktemp("toy")
    output, data = folder / "benchmarks.md", folder / "benchmarks.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--toy", "--output", str(output), "--json", str(data)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(data.read_text()), output.read_text()


def _peer_systems(results: dict) -> set[str]:
    peers = next(section for section in results["sections"] if section["key"] == "peers")
    return {row["system"] for table in peers["tables"] for row in table["rows"]}


def test_every_scenario_runs_at_toy_size(toy_run):
    results, text = toy_run
    assert [section["key"] for section in results["sections"]] == list(SCENARIOS)
    for section in results["sections"]:
        assert section["tables"], section["key"]
        for table in section["tables"]:
            assert table["rows"], (section["key"], table["caption"])
            # Differences ("added p50 ms": proxy minus library) may fall below zero in noise; nothing else may.
            numbers = [
                v for row in table["rows"] for k, v in row.items() if isinstance(v, (int, float)) and "added" not in k
            ]
            assert numbers and all(math.isfinite(v) and v >= 0 for v in numbers if isinstance(v, float)), (
                section["key"],
                table["caption"],
            )
    by_key = {section["key"]: section for section in results["sections"]}
    assert any("single-flight" in v and v.startswith("met") for v in by_key["concurrency"]["verdicts"])
    assert any("single-flight" in v and v.startswith("met") for v in by_key["proxy"]["verdicts"])
    assert "met: no errors under load (measured 0 errors)" in by_key["proxy"]["verdicts"]
    recalls = [row["recall@1"] for table in by_key["semantic"]["tables"] for row in table["rows"] if "recall@1" in row]
    assert recalls and all(0 <= r <= 1 for r in recalls)
    assert text.startswith("# Benchmarks") and "## Targets" in text and "## Machine and versions" in text
    for section in results["sections"]:
        assert f"## {section['title']}" in text
    assert "pgcache" in _peer_systems(results)


@pytest.mark.skipif(
    shutil.which("redis-server") is None,
    reason="redis-server is not installed: the tutorial's Redis design is not exercised",
)
def test_redis_baseline_runs_at_toy_size(toy_run):
    results, _ = toy_run
    assert "Redis, tutorial design" in _peer_systems(results)


EVAL_DIR = REPO.parent / "shared" / "eval"


needs_eval_data = pytest.mark.skipif(
    not (EVAL_DIR / "banking77").is_dir(),
    reason=f"evaluation data not found in {EVAL_DIR}: the FAQ replay and threshold scripts are not run",
)


@needs_eval_data
def test_faq_replay_runs_at_toy_size(tmp_path):
    output = tmp_path / "semantic-quality.md"
    done = subprocess.run(
        [sys.executable, "benchmarks/faq_replay.py", "--toy", "--eval-dir", str(EVAL_DIR), "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = output.read_text()
    for heading in (
        "## Goal and verdict",
        "## Method",
        "## Results",
        "## What each rule buys and costs",
        "## Choosing a threshold",
        "## Recommendations",
    ):
        assert heading in text, heading
    assert "these numbers are not the results" in text
    assert not re.search(r"\bnan\b", text.split("## Method")[1], re.IGNORECASE)


@needs_eval_data
def test_local_threshold_runs_at_toy_size():
    done = subprocess.run(
        [sys.executable, "benchmarks/local_threshold.py", "--toy", "--eval-dir", str(EVAL_DIR)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "B77 K=5" in done.stdout and "PAWS" in done.stdout
    pairs = [line for line in done.stdout.splitlines() if line.strip().startswith("0.") and " vs " in line]
    assert len(pairs) == 3 and all(0 < float(line.split()[0]) <= 1 for line in pairs)
