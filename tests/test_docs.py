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


CLI_DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
SHARED_OPTIONS = {"--database-url", "--data-dir"}


def _commands():
    import typer.main

    from pgcache.cli import app

    def walk(group, prefix):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from walk(command, [*prefix, name])
            else:
                yield " ".join([*prefix, name]), command

    return list(walk(typer.main.get_command(app), ["pgcache"]))


@pytest.mark.parametrize("name, command", _commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_and_option_is_documented_with_an_example(name, command):
    text = CLI_DOC.read_text(encoding="utf-8")
    assert f"## `{name}`" in text, name
    section = text.split(f"## `{name}`", 1)[1].split("\n## ", 1)[0]
    options = {o for p in command.params for o in p.opts if o.startswith("--")} - SHARED_OPTIONS
    assert {o for o in options if f"`{o}`" not in section} == set()
    assert "```sh" in section
    assert "Example:" in (command.help or "")
