"""`make bench-large` (benchmarks/large.py) runs every phase at a tiny size and writes a well-formed report.

No timing is judged here: the sizes are derived from --entries (3,000 entries, 30 namespaces of 100,
10 scopes of 300, the side phases at 3,000), so the run takes well under a minute.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from benchmarks import large

pytestmark = pytest.mark.slow


def _markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown table of the report: its header cells and its rows' cells."""
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("| ") and lines[i + 1].startswith("|---"):
            header = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("| "):
                    break
                rows.append([cell.strip() for cell in row.strip("|").split(" | ")])
            tables.append((header, rows))
    return tables


def test_bench_large_runs_every_phase_at_a_tiny_size(tmp_path):
    output, data = tmp_path / "benchmarks-large.md", tmp_path / "benchmarks-large.json"
    argv = ["--entries", "3000", "--queries", "20", "--output", str(output), "--json", str(data)]
    if os.environ.get("PGCACHE_TEST_DATABASE_URL"):
        argv += ["--database-url", os.environ["PGCACHE_TEST_DATABASE_URL"]]
    assert large.main(argv) == 0
    results, text = json.loads(data.read_text()), output.read_text()

    assert results["phases"] == dict.fromkeys(large.PHASES, "done")
    assert [section["key"] for section in results["sections"]] == list(large.PHASES)
    assert text.startswith("# Benchmarks at 3,000 entries")
    for heading in ("## Targets", "## Phases", "## Machine and versions"):
        assert heading in text, heading
    for section in results["sections"]:
        assert f"## {section['title']}" in text
        assert section["tables"], section["key"]
    assert "Plan for the small (100 entries) scope" in text and "Plan for the big (3,000 entries) scope" in text
    assert "could not capture the plan" not in text

    recalls = [
        value
        for section in results["sections"]
        for table in section["tables"]
        for row in table["rows"]
        for column, value in row.items()
        if "recall@1" in column
    ]
    assert len(recalls) >= 20 and all(isinstance(r, float) and 0 <= r <= 1 for r in recalls), recalls
    cells = [
        row[header.index(column)]
        for header, rows in _markdown_tables(text)
        for column in header
        if "recall@1" in column
        for row in rows
        if len(row) == len(header)
    ]
    assert len(cells) == len(recalls)
    assert all(math.isfinite(float(cell)) and 0 <= float(cell) <= 1 for cell in cells), cells

    lookup = next(section for section in results["sections"] if section["key"] == "lookup")
    sweep = next(table for table in lookup["tables"] if table["caption"].startswith("More probes"))
    swept = [row["probes"] for row in sweep["rows"]]
    assert swept == sorted(swept) and swept[-1] > int(lookup["tables"][0]["caption"].split("probes ")[1].rstrip(")"))
