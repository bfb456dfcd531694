"""New entries: built from a request and its answer, embedded in batches, written in key order.

A batch is all or nothing: every entry's JSON is checked before any embedding
is paid for, and the batch is written in one transaction. Batches of
:data:`~pgcache.queries.COPY_FROM` entries or more go through binary COPY into
a staging table, then upserts of at most :data:`~pgcache.queries.UPSERT_ROWS`
rows each, so that no statement of a large batch runs into the statement
timeout; an entry whose exact key is already stored replaces it (the newer
answer wins). Vectors travel and are stored in half precision.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import psycopg
from pgvector import HalfVector

from . import queries
from .backend import Backend, Unavailable
from .embedders import embed_texts
from .errors import InvalidRequestError
from .keys import RequestKey, RequestKeys
from .privacy import redact_request
from .responses import answer_text, check_text, completion_dict, lacks_usage, storable_json, usage_of
from .tokens import estimate_usage

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class NewEntry:
    """An entry to insert; ``request`` and ``response`` are JSON text. Field names are the SQL parameters."""

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
    token_estimator: str | None = None
    """Which estimator counted the tokens of an answer that came without usage (None: the API's counts)."""

    def params(self) -> dict[str, Any]:
        """The SQL parameters, by name."""
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        values["embedder"] = self.embedder if self.embedding is not None else None
        # Sent in half precision, as the column stores it: half the bytes on the wire and in COPY.
        values["embedding"] = None if self.embedding is None else HalfVector(self.embedding)
        values["tags"] = list(self.tags)
        return values


def insert_entries(conn: psycopg.Connection, entries: Sequence[NewEntry]) -> list[int]:
    """Insert or refresh entries (same exact key: the newer answer wins); return their ids."""
    if len(entries) >= queries.COPY_FROM:
        return _copy_entries(conn, entries)
    ids: list[int] = []
    with conn.transaction(), conn.cursor() as cur:
        if len(entries) == 1:
            cur.execute(queries.INSERT_ENTRY, entries[0].params())
            ids.append(_one(cur.fetchone()))
        else:
            cur.executemany(queries.INSERT_ENTRY, [entry.params() for entry in entries], returning=True)
            while True:
                ids.append(_one(cur.fetchone()))
                if not cur.nextset():
                    break
    return ids


def _one(row: tuple | None) -> int:
    assert row is not None, "INSERT ... RETURNING returns a row"
    return row[0]


def _copy_entries(conn: psycopg.Connection, entries: Sequence[NewEntry]) -> list[int]:
    # One upsert cannot touch a row twice: of repeated keys in a batch, the last one wins. Staged in key
    # order, so that every slice, like every writer, locks rows in key order.
    last = {entry.exact_key: entry for entry in entries}
    staged = sorted(last.values(), key=lambda entry: entry.exact_key)
    ids: dict[bytes, int] = {}
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(queries.CREATE_STAGING)
        with cur.copy(queries.COPY_STAGING) as copy:
            copy.set_types(queries.STAGING_TYPES)
            for entry in staged:
                params = entry.params()
                copy.write_row([params[column.source] for column in queries.ENTRY_COLUMNS])
        for start in range(0, len(staged), queries.UPSERT_ROWS):
            rows = cur.execute(queries.UPSERT_STAGED, (start, start + queries.UPSERT_ROWS)).fetchall()
            ids.update((bytes(key), entry_id) for key, entry_id in rows)
    return [ids[entry.exact_key] for entry in entries]


def live_keys(conn: psycopg.Connection, exact_keys: Sequence[bytes]) -> set[bytes]:
    """Which of ``exact_keys`` have a live entry."""
    return {bytes(row[0]) for row in conn.execute(queries.LIVE_KEYS, (list(exact_keys),)).fetchall()}


class Entries:
    """Builds new entries and writes them through the backend."""

    def __init__(self, backend: Backend, embedder: Any, keys: RequestKeys, *, store_prompts: bool = True) -> None:
        self.backend = backend
        self.embedder = embedder
        self.keys = keys
        self.store_prompts = store_prompts

    def build(
        self, key: RequestKey, response: Mapping[str, Any], tags: Sequence[str], source: str, ttl: float | None
    ) -> NewEntry:
        """A row to insert, its JSON checked before any embedding is paid for."""
        if key.prompt is not None:
            check_text(key.prompt, "prompt")
        prompt_tokens, completion_tokens, total_tokens = usage_of(response)
        estimator = None
        if lacks_usage(response):
            # A warmed or hand-stored answer: estimate what asking the LLM would have cost, so hits on it count.
            estimate = estimate_usage(key.model, key.request.get("messages") or [], answer_text(response))
            prompt_tokens, completion_tokens = estimate.prompt_tokens, estimate.completion_tokens
            total_tokens, estimator = estimate.total_tokens, estimate.estimator
        request = key.request if self.store_prompts else redact_request(key.request)
        return NewEntry(
            namespace=key.namespace,
            exact_key=key.exact_key,
            scope_key=key.scope_key,
            model=key.model,
            prompt=key.prompt if self.store_prompts else None,
            request=storable_json(request, "request"),
            response=storable_json(response, "response"),
            tags=tags,
            source=source,
            ttl=ttl,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=total_tokens,
            token_estimator=estimator,
        )

    def store_answer(
        self,
        key: RequestKey,
        response: Mapping[str, Any],
        tags: Sequence[str],
        ttl: float | None,
        vector: np.ndarray | None,
    ) -> int:
        """Store the LLM's answer to a missed request, with the vector the lookup already computed."""
        entry = self.build(key, response, tags, "llm", ttl)
        if vector is not None:
            entry.embedder, entry.embedding = self.embedder.name, vector
        return self.backend.write(insert_entries, [entry])[0]

    def keep_answer(
        self,
        key: RequestKey,
        response: Mapping[str, Any],
        tags: Sequence[str],
        ttl: float | None,
        vector: np.ndarray | None,
    ) -> int | None:
        """:meth:`store_answer` for an answer the caller already has: its entry id, or None if not stored.

        With fail-open an unavailable database skips it (the breaker logs the
        outage once); an answer PostgreSQL cannot store is logged, not raised.
        """
        try:
            return self.backend.attempt(self.store_answer, key, response, tags, ttl, vector)
        except Unavailable:
            return None
        except InvalidRequestError as exc:
            # The answer is paid for and correct; failing to cache it must not lose it.
            _log.warning("pgcache: answer not stored: %s", exc)
            return None

    def store_many(
        self,
        items: Any,
        model: str | None,
        ttl: float | None,
        tags: Sequence[str],
        *,
        namespace: str | None,
        source: str,
        params: Mapping[str, Any],
    ) -> list[int]:
        """Store ``(prompt_or_messages, response)`` pairs with one embedding batch; ids in the items' order."""
        keyed = [(self.keys.key(request, model, namespace, params), response) for request, response in pairs(items)]
        return self.store_keyed(keyed, ttl, tags, source=source)

    def store_keyed(
        self, keyed: Sequence[tuple[RequestKey, Any]], ttl: float | None, tags: Sequence[str], *, source: str
    ) -> list[int]:
        """:meth:`store_many` for ``(key, response)`` pairs whose keys the caller already derived."""
        entries: list[NewEntry] = []
        prompts: list[str | None] = []  # the keys' prompts: entries hold none with store_prompts=False
        for key, response in keyed:
            entries.append(self.build(key, completion_dict(response, key.model), tags, source, ttl))
            prompts.append(key.prompt)
        if not entries:
            return []
        embeddable = [i for i, prompt in enumerate(prompts) if prompt is not None and prompt.strip()]
        if embeddable:
            matrix = embed_texts(self.embedder, [prompts[i] or "" for i in embeddable])
            for i, vector in zip(embeddable, matrix, strict=True):
                entries[i].embedder, entries[i].embedding = self.embedder.name, vector
        # Same lock order in every writer, so concurrent batches cannot deadlock.
        order = sorted(range(len(entries)), key=lambda i: entries[i].exact_key)
        ids = self.backend.write(insert_entries, [entries[i] for i in order])
        by_position = dict(zip(order, ids, strict=True))
        return [by_position[i] for i in range(len(entries))]

    def contains_many(
        self, requests: Iterable[tuple[Any, str | None]], model: str | None, params: Mapping[str, Any]
    ) -> list[bool]:
        """For ``(prompt_or_messages, namespace)`` pairs: whether each has a live entry (exact key)."""
        return self.contains_keys([self.keys.key(request, model, namespace, params) for request, namespace in requests])

    def contains_keys(self, keys: Sequence[RequestKey]) -> list[bool]:
        """Whether each key has a live entry."""
        if not keys:
            return []
        live = self.backend.write(live_keys, [key.exact_key for key in keys])
        return [key.exact_key in live for key in keys]


def pairs(items: Any) -> list[tuple[Any, Any]]:
    """``items`` as a list of ``(prompt_or_messages, response)`` pairs, or a clear error."""
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise InvalidRequestError(
            f"items must be an iterable of (prompt_or_messages, response) pairs, got {type(items).__name__}"
        )
    checked = []
    for position, item in enumerate(items):
        if isinstance(item, (str, bytes)) or not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InvalidRequestError(
                f"items[{position}] must be a (prompt_or_messages, response) pair, got {type(item).__name__}"
            )
        checked.append((item[0], item[1]))
    return checked
