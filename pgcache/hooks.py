"""Invalidation hooks: a change to an application table retires the cache entries built on its rows.

An answer built from rows of the application's own tables (prices, policies,
documents) is stored with tags naming them (``tags=["article:42"]``). A hook
is a trigger on such a table: when rows change, each tag template is rendered
for every changed row (``article:{id}`` → ``article:42``) and the entries
carrying those tags are deleted, or expired, in the transaction of the change.
A rollback leaves them; a commit retires them for every process at once. The
SQL lives in the database (migration 0008: ``pgcache_add_hook``,
``pgcache_remove_hook``, ``pgcache_hook_fired``), so that the trigger needs
nothing of pgcache at run time and survives upgrades.

Changes made outside the database reach the same entries through
:func:`invalidate_tags` (``Cache.invalidate_tags``, ``POST
/pgcache/invalidate`` on ``pgcache serve``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import psycopg

from . import queries
from .connections import Database
from .errors import InvalidRequestError
from .validation import check_name, check_tags

EVENTS = ("insert", "update", "delete")
MODES = ("delete", "expire")


@dataclass(frozen=True)
class Hook:
    """An installed hook, as ``pgcache hooks list`` shows it."""

    id: int
    table: str
    """The table, schema-qualified and quoted as PostgreSQL quotes identifiers."""
    templates: list[str]
    tags: list[str]
    events: list[str]
    mode: str
    namespace: str | None
    """Only entries of this namespace are retired (None: every namespace)."""
    created_at: datetime
    table_exists: bool
    """False once the table was dropped (its triggers went with it; ``remove`` cleans up)."""


def parse_template(template: str) -> list[str]:
    """Split ``"article:{id}"`` into literal text and column names: ``["article:", "id", ""]``.

    ``{{`` and ``}}`` stand for a brace, in the text and in a column's name
    alike. Raises :class:`InvalidRequestError` for an unclosed, unopened or
    empty ``{}``.
    """
    if not isinstance(template, str) or not template:
        raise InvalidRequestError(f"a tag template must be a non-empty string, got {template!r}")
    parts: list[str] = []
    current: list[str] = []
    inside, position = False, 0
    while position < len(template):
        pair = template[position : position + 2]
        if pair in ("{{", "}}"):
            current.append(pair[0])
            position += 2
            continue
        char = template[position]
        position += 1
        if char == "{" and not inside:
            parts.append("".join(current))
            current, inside = [], True
        elif char == "}" and inside:
            if not current:
                raise InvalidRequestError(f"tag template {template!r} has an empty {{}}; name a column in it")
            parts.append("".join(current))
            current, inside = [], False
        elif char in "{}":
            problem = "a { inside a {column}" if inside else "a } without a {"
            raise InvalidRequestError(f"tag template {template!r} has {problem} (write {{{{ or }}}} for a brace)")
        else:
            current.append(char)
    if inside:
        raise InvalidRequestError(f"tag template {template!r} has an unclosed {{")
    return [*parts, "".join(current)]


def template_text(parts: list[str]) -> str:
    """The template a parsed one came from (braces doubled)."""
    text = [part.replace("{", "{{").replace("}", "}}") for part in parts]
    return "".join(part if index % 2 == 0 else "{" + part + "}" for index, part in enumerate(text))


def add_hook(
    database: Database,
    table: str,
    *,
    tag_templates: Iterable[str] = (),
    tags: Iterable[str] | None = None,
    events: Iterable[str] = EVENTS,
    mode: str = "delete",
    namespace: str | None = None,
) -> Hook:
    """Install a hook on ``table`` (a name as SQL writes it: ``articles``, ``app."Price list"``); return it.

    Installing the same hook again returns the existing one. Raises
    :class:`InvalidRequestError` naming what is wrong: a table or a column
    that does not exist, an unknown event or mode, no template and no tag.
    """
    if isinstance(tag_templates, str):
        tag_templates = [tag_templates]
    parsed = [parse_template(template) for template in tag_templates]
    fixed = check_tags(tags)
    wanted = sorted({_event(event) for event in ([events] if isinstance(events, str) else events)})
    if not wanted:
        raise InvalidRequestError(f"a hook needs at least one event: {', '.join(EVENTS)}")
    if mode not in MODES:
        raise InvalidRequestError(f"hook mode must be delete or expire, got {mode!r}")
    if not parsed and not fixed:
        raise InvalidRequestError("a hook needs a tag template (--tag-template 'article:{id}') or a tag (--tag)")
    namespace = None if namespace is None else check_name(namespace, "namespace")
    if not isinstance(table, str) or not table.strip():
        raise InvalidRequestError(f"table must be a table name, got {table!r}")
    with database.connection() as conn, conn.transaction():
        try:
            found = conn.execute(queries.FIND_TABLE, (table,)).fetchone()
        except psycopg.Error as exc:
            if not (exc.sqlstate or "").startswith("42"):  # not a malformed name: a database problem
                raise
            raise InvalidRequestError(f"{table!r} is not a table name: {exc.diag.message_primary}") from None
        if found is None or found[0] is None:
            raise InvalidRequestError(f"no table named {table} (a name as SQL writes it: quote mixed-case names)")
        try:
            hook_id = conn.execute(
                queries.ADD_HOOK, (table, json.dumps(parsed), fixed, wanted, mode, namespace)
            ).fetchone()[0]
        except (psycopg.errors.InvalidParameterValue, psycopg.errors.UndefinedColumn) as exc:
            raise InvalidRequestError(exc.diag.message_primary or str(exc)) from None
    return next(hook for hook in list_hooks(database) if hook.id == hook_id)


def list_hooks(database: Database) -> list[Hook]:
    """Every installed hook, oldest first."""
    with database.connection() as conn:
        rows = conn.execute(queries.LIST_HOOKS).fetchall()
    return [
        Hook(
            id=row[0],
            table=row[1],
            templates=[template_text(parts) for parts in row[2]],
            tags=list(row[3]),
            events=list(row[4]),
            mode=row[5],
            namespace=row[6],
            created_at=row[7],
            table_exists=row[8],
        )
        for row in rows
    ]


def remove_hook(database: Database, hook_id: int) -> bool:
    """Drop a hook's triggers and forget it; False if there was no such hook."""
    if isinstance(hook_id, bool) or not isinstance(hook_id, int):
        raise InvalidRequestError(f"a hook id is an integer, got {hook_id!r}")
    with database.connection() as conn, conn.transaction():
        return bool(conn.execute(queries.REMOVE_HOOK, (hook_id,)).fetchone()[0])


def invalidate_tags(
    database: Database, tags: Iterable[str], *, namespace: str | None = None, mode: str = "delete"
) -> int:
    """Delete (or expire) the entries carrying any of ``tags``, in ``namespace`` or all; return how many."""
    wanted = check_tags(tags)
    if not wanted:
        raise InvalidRequestError("name at least one tag to invalidate")
    if mode not in MODES:
        raise InvalidRequestError(f"mode must be delete or expire, got {mode!r}")
    namespace = None if namespace is None else check_name(namespace, "namespace")
    statement = queries.INVALIDATE_TAGS if mode == "delete" else queries.EXPIRE_TAGS
    with database.connection() as conn, conn.transaction():
        return conn.execute(statement, {"tags": wanted, "namespace": namespace}).rowcount


def _event(event: str) -> str:
    lowered = event.strip().lower() if isinstance(event, str) else event
    if lowered not in EVENTS:
        raise InvalidRequestError(f"hook events are {', '.join(EVENTS)}; got {event!r}")
    return lowered
