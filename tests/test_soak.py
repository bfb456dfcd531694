"""A short run of scripts/soak.py, as `make soak` runs it: every kind of operation at once, nothing broken."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("chat", "warm", "sweep", "invalidate", "reindex")
ZEROS = (
    "errors",
    "deadlocks",
    "duplicate exact keys",
    "unreadable answers",
    "lookups missing from the ledger",
    "LLM calls other than misses",
    "invalid indexes",
)


def test_short_soak_runs_every_operation_and_breaks_nothing():
    done = subprocess.run(
        [sys.executable, "scripts/soak.py", "--seconds", "8", "--workers", "4", "--progress-every", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = done.stdout + done.stderr
    ops = dict(re.findall(rf"(?m)^  ({'|'.join(KINDS)})\s+(\d+) ops", done.stdout))
    zeros = dict(re.findall(rf"(?m)^  ({'|'.join(ZEROS)})\s+(\d+)", done.stdout))
    assert set(ops) == set(KINDS) and set(zeros) == set(ZEROS), output
    assert all(int(count) >= 1 for count in ops.values()), f"every kind of operation ran: {ops}\n{output}"
    assert zeros == dict.fromkeys(ZEROS, "0"), output
    assert done.returncode == 0 and done.stdout.rstrip().endswith("\nOK"), output
    assert len(re.findall(r"(?m)^\[\s*\d+\.\d+s\] chat \d+", done.stdout)) >= 2, "progress is printed as it runs"
    home = re.search(r"(?m)^embedded PostgreSQL in (\S+)$", done.stdout)
    assert home and not Path(home.group(1)).exists(), "the private server's directory is removed afterwards"
