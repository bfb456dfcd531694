"""SQL of the cache's hot paths, straight on psycopg (no ORM on lookups).

Every statement filters out expired rows itself, so nothing expired is ever
served whether or not a sweep has run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

_LIVE = "(expires_at IS NULL OR expires_at > now())"

FIND_EXACT = f"""
SELECT id, response, prompt_tokens, completion_tokens
FROM pgcache_entries
WHERE exact_key = %s AND {_LIVE}
"""

# pgcache_nearest() (migration 0005) picks exact search or the ivfflat index and its probes.
FIND_NEAREST = "SELECT * FROM pgcache_nearest(%(q)s, %(scope)s, %(embedder)s, %(k)s)"

# Same exact key: the newer answer replaces the stored one.
_REFRESH = """ON CONFLICT (exact_key) DO UPDATE SET
    response = EXCLUDED.response, request = EXCLUDED.request, prompt = EXCLUDED.prompt,
    embedder = EXCLUDED.embedder, embedding = EXCLUDED.embedding, tags = EXCLUDED.tags,
    source = EXCLUDED.source, created_at = now(), expires_at = EXCLUDED.expires_at,
    prompt_tokens = EXCLUDED.prompt_tokens, completion_tokens = EXCLUDED.completion_tokens,
    total_tokens = EXCLUDED.total_tokens
"""

INSERT_ENTRY = f"""
INSERT INTO pgcache_entries AS e (
    namespace, exact_key, scope_key, model, embedder, prompt, request, response, embedding,
    tags, source, expires_at, prompt_tokens, completion_tokens, total_tokens
) VALUES (
    %(namespace)s, %(exact_key)s, %(scope_key)s, %(model)s, %(embedder)s, %(prompt)s,
    %(request)s::jsonb, %(response)s::jsonb, %(embedding)s, %(tags)s, %(source)s,
    now() + %(ttl)s * interval '1 second', %(prompt_tokens)s, %(completion_tokens)s, %(total_tokens)s
)
{_REFRESH}RETURNING id
"""


# Take the lease on a key, or take over one that lapsed; returns a row only to the new holder.
ACQUIRE_LEASE = """
INSERT INTO pgcache_inflight AS f (exact_key, expires_at)
VALUES (%(key)s, now() + %(seconds)s * interval '1 second')
ON CONFLICT (exact_key) DO UPDATE SET expires_at = EXCLUDED.expires_at WHERE f.expires_at <= now()
RETURNING true
"""

# What a waiting process needs in one round trip: the answer if stored, and whether a lease is live.
POLL_LEASE = f"""
SELECT e.id, e.response, e.prompt_tokens, e.completion_tokens,
       EXISTS (SELECT 1 FROM pgcache_inflight WHERE exact_key = %(key)s AND expires_at > now())
FROM (SELECT 1) AS one
LEFT JOIN pgcache_entries AS e ON e.exact_key = %(key)s AND {_LIVE}
"""


@dataclass(frozen=True, slots=True)
class Row:
    """An entry as a lookup returns it."""

    id: int
    response: dict[str, Any]
    prompt_tokens: int | None
    completion_tokens: int | None
    similarity: float | None = None
    prompt: str | None = None
    min_similarity: float | None = None


@dataclass(slots=True)
class NewEntry:
    """An entry to insert; ``request`` and ``response`` are JSON text."""

    namespace: str
    exact_key: bytes
    scope_key: bytes
    model: str
    prompt: str | None
    request: str
    response: str
    embedder: str | None = None
    embedding: np.ndarray | None = None
    tags: Sequence[str] = ()
    source: str = "llm"
    ttl: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


def find_exact(conn: psycopg.Connection, exact_key: bytes) -> Row | None:
    row = conn.execute(FIND_EXACT, (exact_key,)).fetchone()
    return Row(*row) if row else None


def acquire_lease(conn: psycopg.Connection, exact_key: bytes, seconds: float) -> bool:
    return conn.execute(ACQUIRE_LEASE, {"key": exact_key, "seconds": seconds}).fetchone() is not None


def poll_lease(conn: psycopg.Connection, exact_key: bytes) -> tuple[Row | None, bool]:
    """The stored entry for the key (or None) and whether another process still holds its lease."""
    *entry, leased = conn.execute(POLL_LEASE, {"key": exact_key}).fetchone()
    return (Row(*entry) if entry[0] is not None else None), leased


def release_lease(conn: psycopg.Connection, exact_key: bytes) -> None:
    conn.execute("DELETE FROM pgcache_inflight WHERE exact_key = %s", (exact_key,))


def calibrated_threshold(conn: psycopg.Connection, namespace: str, embedder: str) -> tuple | None:
    """``(threshold, source, calibrated_at)`` stored by calibration, or None."""
    return conn.execute(
        "SELECT threshold, source, calibrated_at FROM pgcache_thresholds WHERE namespace = %s AND embedder = %s",
        (namespace, embedder)).fetchone()


def save_threshold(conn: psycopg.Connection, namespace: str, embedder: str, threshold: float,
                   target_precision: float, precision_lower: float, pairs: int, source: str) -> None:
    conn.execute("""
        INSERT INTO pgcache_thresholds AS t
            (namespace, embedder, threshold, target_precision, precision_lower, pairs, source)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (namespace, embedder) DO UPDATE SET
            threshold = EXCLUDED.threshold, target_precision = EXCLUDED.target_precision,
            precision_lower = EXCLUDED.precision_lower, pairs = EXCLUDED.pairs, source = EXCLUDED.source,
            calibrated_at = now()
        """, (namespace, embedder, threshold, target_precision, precision_lower, pairs, source))


# A wrong hit raises the entry's own threshold just above the similarity that served it.
FEEDBACK_MARGIN = 1e-5


def record_feedback(conn: psycopg.Connection, lookup_id, verdict: str) -> tuple[str, float | None]:
    """Keep a verdict on a lookup; on ``wrong``, tighten the entry. Returns the lookup's outcome and the new entry threshold."""
    with conn.transaction():
        found = conn.execute("""
            SELECT l.outcome, l.entry_id, l.similarity, l.namespace, l.embedder, l.prompt, e.prompt
            FROM pgcache_lookups AS l LEFT JOIN pgcache_entries AS e ON e.id = l.entry_id
            WHERE l.id = %s""", (lookup_id,)).fetchone()
        if found is None:
            return "unknown", None
        outcome, entry_id, similarity, namespace, embedder, prompt, entry_prompt = found
        if outcome != "semantic":
            return outcome, None
        conn.execute("""
            INSERT INTO pgcache_feedback (lookup_id, verdict, namespace, embedder, entry_id, prompt, entry_prompt, similarity)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (lookup_id) DO UPDATE SET verdict = EXCLUDED.verdict, created_at = now()""",
                     (lookup_id, verdict, namespace, embedder, entry_id, prompt, entry_prompt, similarity))
        if verdict != "wrong":
            return outcome, None
        row = conn.execute("""
            UPDATE pgcache_entries SET min_similarity = greatest(coalesce(min_similarity, 0), %s)
            WHERE id = %s RETURNING min_similarity""", (similarity + FEEDBACK_MARGIN, entry_id)).fetchone()
        return outcome, row[0] if row else None


def feedback_pairs(conn: psycopg.Connection, namespace: str, embedder: str) -> list[tuple[str, str, int]]:
    rows = conn.execute("""
        SELECT prompt, entry_prompt, (verdict = 'right')::int FROM pgcache_feedback
        WHERE namespace = %s AND embedder = %s AND prompt IS NOT NULL AND entry_prompt IS NOT NULL""",
                        (namespace, embedder)).fetchall()
    return [tuple(row) for row in rows]


def live_keys(conn: psycopg.Connection, exact_keys: Sequence[bytes]) -> set[bytes]:
    """Which of ``exact_keys`` have a live entry."""
    rows = conn.execute(f"SELECT exact_key FROM pgcache_entries WHERE exact_key = ANY(%s) AND {_LIVE}",
                        (list(exact_keys),)).fetchall()
    return {bytes(row[0]) for row in rows}


def find_nearest(
    conn: psycopg.Connection, scope_key: bytes, embedder: str, vector: np.ndarray, k: int = 4
) -> Row | None:
    """The most similar live entry in the scope, whatever its similarity."""
    row = conn.execute(
        FIND_NEAREST, {"q": vector, "scope": scope_key, "embedder": embedder, "k": k}, binary=True
    ).fetchone()
    return Row(*row) if row else None


def insert_entries(conn: psycopg.Connection, entries: Sequence[NewEntry]) -> list[int]:
    """Insert or refresh entries (same exact key: the newer answer wins); return their ids."""
    if len(entries) >= COPY_FROM:
        return _copy_entries(conn, entries)
    params = [_params(entry) for entry in entries]
    ids: list[int] = []
    with conn.transaction(), conn.cursor() as cur:
        if len(params) == 1:
            cur.execute(INSERT_ENTRY, params[0])
            ids.append(cur.fetchone()[0])
        else:
            cur.executemany(INSERT_ENTRY, params, returning=True)
            while True:
                ids.append(cur.fetchone()[0])
                if not cur.nextset():
                    break
    return ids


# From this many entries a batch goes through binary COPY into a staging table, then one upsert.
COPY_FROM = 20

STAGING_COLUMNS = [
    ("namespace", "text"), ("exact_key", "bytea"), ("scope_key", "bytea"), ("model", "text"), ("embedder", "text"),
    ("prompt", "text"), ("request", "text"), ("response", "text"), ("embedding", "vector"), ("tags", "text[]"),
    ("source", "text"), ("ttl", "float8"), ("prompt_tokens", "int4"), ("completion_tokens", "int4"),
    ("total_tokens", "int4"),
]
_NAMES = ", ".join(name for name, _ in STAGING_COLUMNS)
# ON COMMIT DROP: nothing outlives the transaction, so pooled (and PgBouncer) connections stay clean.
CREATE_STAGING = ("CREATE TEMP TABLE pgcache_staging ("
                  + ", ".join(f"{name} {kind}" for name, kind in STAGING_COLUMNS) + ") ON COMMIT DROP")
UPSERT_STAGED = f"""
INSERT INTO pgcache_entries AS e (
    namespace, exact_key, scope_key, model, embedder, prompt, request, response, embedding,
    tags, source, expires_at, prompt_tokens, completion_tokens, total_tokens
)
SELECT namespace, exact_key, scope_key, model, embedder, prompt, request::jsonb, response::jsonb, embedding,
       tags, source, now() + ttl * interval '1 second', prompt_tokens, completion_tokens, total_tokens
FROM pgcache_staging ORDER BY exact_key
{_REFRESH}RETURNING exact_key, id
"""


def _copy_entries(conn: psycopg.Connection, entries: Sequence[NewEntry]) -> list[int]:
    # One upsert cannot touch a row twice: of repeated keys in a batch, the last one wins.
    last = {entry.exact_key: entry for entry in entries}
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(CREATE_STAGING)
        with cur.copy(f"COPY pgcache_staging ({_NAMES}) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types([kind for _, kind in STAGING_COLUMNS])
            for entry in last.values():
                params = _params(entry)
                copy.write_row([params[name] for name, _ in STAGING_COLUMNS])
        ids = {bytes(key): entry_id for key, entry_id in cur.execute(UPSERT_STAGED).fetchall()}
    return [ids[entry.exact_key] for entry in entries]


def _params(entry: NewEntry) -> dict[str, Any]:
    return {
        "namespace": entry.namespace,
        "exact_key": entry.exact_key,
        "scope_key": entry.scope_key,
        "model": entry.model,
        "embedder": entry.embedder if entry.embedding is not None else None,
        "prompt": entry.prompt,
        "request": entry.request,
        "response": entry.response,
        "embedding": entry.embedding,
        "tags": list(entry.tags),
        "source": entry.source,
        "ttl": entry.ttl,
        "prompt_tokens": entry.prompt_tokens,
        "completion_tokens": entry.completion_tokens,
        "total_tokens": entry.total_tokens,
    }
