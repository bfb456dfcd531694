"""docs/schema.md documents every column of every table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pgcache.models import Base

SCHEMA_DOC = Path(__file__).resolve().parents[1] / "docs" / "schema.md"


@pytest.mark.parametrize("table", sorted(Base.metadata.tables))
def test_every_column_is_documented(table):
    text = SCHEMA_DOC.read_text(encoding="utf-8")
    section = text.split(f"## `{table}`", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", section, re.M)
    assert documented == [column.name for column in Base.metadata.tables[table].columns]
