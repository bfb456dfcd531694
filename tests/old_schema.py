"""Rows as earlier versions of pgcache wrote them, whatever revision the schema is at.

Columns are found by introspection: of the values an application filled at any revision (keys,
request, answer, vector, usage; a lookup's outcome, timing and tokens), those the table has at
this revision are written and the rest keep their defaults. The SQL is the kind every version
ran, so it also serves as load while a migration is applied.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import numpy as np
import psycopg

from pgcache import db, keys

EMBEDDER = "test/upgrade-1536"
MODEL = "gpt-4o-mini"
NAMESPACE = "default"


def chain() -> list[str]:
    """Every revision, oldest first."""
    from alembic.script import ScriptDirectory

    revisions = [revision.revision for revision in ScriptDirectory(str(db.migrations_dir())).walk_revisions()]
    return list(reversed(revisions))


def columns(conn: psycopg.Connection, table: str) -> set[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = %s AND table_schema = 'public'", (table,)
    ).fetchall()
    return {row[0] for row in rows}


def vector_literal(vector: np.ndarray) -> str:
    """Text both ``vector`` and ``halfvec`` columns accept."""
    return "[" + ",".join(f"{value:.7g}" for value in vector) + "]"


def answer(text: str) -> dict:
    return {
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }


def insert(conn: psycopg.Connection, table: str, values: dict, have: set[str], returning: str = "") -> tuple | None:
    """Insert the ``values`` whose columns ``table`` has (``have``)."""
    kept = {name: value for name, value in values.items() if name in have}
    names = ", ".join(kept)
    marks = ", ".join(f"%({name})s" for name in kept)
    cursor = conn.execute(f"INSERT INTO {table} ({names}) VALUES ({marks}) {returning}", kept)
    return cursor.fetchone() if returning else None


def insert_entry(conn: psycopg.Connection, prompt: str, content: str, vector: np.ndarray, have: set[str]) -> int:
    """An entry for ``prompt`` as the application stored an LLM's answer; its id."""
    key = keys.request_key(prompt, model=MODEL, namespace=NAMESPACE)
    values = {
        "namespace": key.namespace,
        "exact_key": key.exact_key,
        "scope_key": key.scope_key,
        "model": key.model,
        "embedder": EMBEDDER,
        "prompt": key.prompt,
        "request": json.dumps(key.request),
        "response": json.dumps(answer(content)),
        "embedding": vector_literal(vector),
        "source": "llm",
        "prompt_tokens": 9,
        "completion_tokens": 3,
        "total_tokens": 12,
    }
    row = insert(conn, "pgcache_entries", values, have, "RETURNING id")
    assert row is not None
    return row[0]


def insert_lookup(
    conn: psycopg.Connection, prompt: str, outcome: str, entry_id: int | None, at: datetime, have: set[str]
) -> None:
    """A ledger row as the application recorded a lookup of ``outcome``."""
    values = {
        "id": uuid.uuid4(),
        "at": at,
        "namespace": NAMESPACE,
        "model": MODEL,
        "outcome": outcome,
        "entry_id": entry_id,
        "embedder": EMBEDDER,
        "similarity": 0.95 if outcome == "semantic" else None,
        "threshold": 0.9 if outcome == "semantic" else None,
        "latency_ms": 1.5,
        "prompt_tokens": 9,
        "completion_tokens": 3,
        "prompt": prompt,
    }
    insert(conn, "pgcache_lookups", values, have)


def find_exact(conn: psycopg.Connection, prompt: str) -> tuple | None:
    key = keys.request_key(prompt, model=MODEL, namespace=NAMESPACE)
    return conn.execute("SELECT id, response FROM pgcache_entries WHERE exact_key = %s", (key.exact_key,)).fetchone()


def find_nearest(conn: psycopg.Connection, vector: np.ndarray) -> tuple | None:
    key = keys.request_key("x", model=MODEL, namespace=NAMESPACE)
    return conn.execute(
        "SELECT id, response FROM pgcache_entries WHERE scope_key = %s AND embedder = %s "
        "ORDER BY embedding <=> %s LIMIT 1",
        (key.scope_key, EMBEDDER, vector_literal(vector)),
    ).fetchone()


def now() -> datetime:
    return datetime.now(UTC)
