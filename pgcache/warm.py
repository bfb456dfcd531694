"""Warming the cache from an FAQ file.

Formats (detected from the content, or named):

* ``text``  — one question per line; blank lines and ``#`` comments are skipped;
  the LLM answers each question.
* ``tsv``   — ``question<TAB>answer`` lines, stored as given.
* ``csv``   — a header with ``prompt`` and ``response`` columns, stored as given.
* ``jsonl`` — one object per line with ``prompt``, ``response`` and optional
  ``tags``, ``ttl`` and ``namespace``, stored as given.

Warming is idempotent: requests that already have a live entry are skipped
before any embedding or LLM call (unless ``replace``).
"""

from __future__ import annotations

import csv
import io
import json
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidRequestError, PgcacheError

FORMATS = ("text", "tsv", "csv", "jsonl")


@dataclass
class WarmItem:
    """One question (and perhaps its answer) from the file."""

    line: int
    prompt: str
    response: str | None = None
    tags: tuple[str, ...] = ()
    ttl: Any = None
    namespace: str | None = None


@dataclass
class WarmResult:
    added: int = 0
    present: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    """``FILE:LINE: reason`` for every line that was skipped or failed."""

    def merge(self, other: WarmResult) -> None:
        self.added += other.added
        self.present += other.present
        self.failed += other.failed
        self.errors.extend(other.errors)


def read_text(path: Path) -> str:
    """The file as text, or :class:`InvalidRequestError` saying why it cannot be read."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidRequestError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not data.strip():
        raise InvalidRequestError(f"{path}: the file is empty")
    if b"\x00" in data:
        raise InvalidRequestError(f"{path}: looks like a binary file (it contains NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InvalidRequestError(f"{path}:{line}: not valid UTF-8") from None


def detect_format(path: Path, text: str) -> str:
    if Path(path).suffix.lower() in (".jsonl", ".ndjson"):
        return "jsonl"
    first = next((line for line in text.splitlines() if line.strip() and not line.startswith("#")), "")
    if first.lstrip().startswith("{"):
        return "jsonl"
    if Path(path).suffix.lower() == ".csv" or first.strip().lower().replace(" ", "") in (
        "prompt,response",
        "response,prompt",
    ):
        return "csv"
    if "\t" in first:
        return "tsv"
    return "text"


def parse(path: Path, text: str, fmt: str) -> tuple[list[WarmItem], list[str]]:
    """Items and ``FILE:LINE: reason`` errors for the lines that could not be used."""
    if fmt not in FORMATS:
        raise InvalidRequestError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    items: list[WarmItem] = []
    errors: list[str] = []
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or not {"prompt", "response"} <= {f.strip() for f in reader.fieldnames}:
            raise InvalidRequestError(f"{path}:1: a CSV file needs a header with prompt and response columns")
        for row in reader:
            prompt, response = (row.get("prompt") or "").strip(), (row.get("response") or "").strip()
            if prompt and response:
                items.append(WarmItem(reader.line_num, prompt, response))
            else:
                errors.append(f"{path}:{reader.line_num}: prompt and response must both be non-empty")
        return items, errors
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or (fmt != "jsonl" and line.startswith("#")):
            continue
        try:
            items.append(_parse_line(fmt, number, line, raw))
        except ValueError as exc:
            errors.append(f"{path}:{number}: {exc}")
    return items, errors


def _parse_line(fmt: str, number: int, line: str, raw: str) -> WarmItem:
    if fmt == "text":
        return WarmItem(number, line)
    if fmt == "tsv":
        question, tab, answer = raw.partition("\t")
        if not tab or not question.strip() or not answer.strip():
            raise ValueError("expected question<TAB>answer")
        return WarmItem(number, question.strip(), answer.strip())
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    prompt, response = obj.get("prompt"), obj.get("response")
    if not isinstance(prompt, str) or not prompt.strip() or not isinstance(response, str) or not response.strip():
        raise ValueError("prompt and response must be non-empty strings")
    tags = obj.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise ValueError("tags must be a list of non-empty strings")
    namespace = obj.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise ValueError("namespace must be a non-empty string")
    return WarmItem(number, prompt.strip(), response.strip(), tuple(tags), obj.get("ttl"), namespace)


def warm_file(
    cache: Any,
    file: Path | str,
    *,
    file_format: str | None = None,
    strict: bool = False,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> WarmResult:
    """Read ``file``, parse it (format detected unless given) and :func:`warm` the cache from it.

    Lines that cannot be used are counted as failed, with ``FILE:LINE: reason``
    in the result's errors; with ``strict`` any such line stops the warm before
    anything is written. ``progress(done, total)`` is called as batches finish.
    """
    path = Path(file)
    text = read_text(path)
    items, errors = parse(path, text, file_format or detect_format(path, text))
    if errors and strict:
        raise InvalidRequestError(f"{len(errors)} bad lines in {path}; nothing was written (strict): {errors[0]}")
    result = WarmResult(failed=len(errors), errors=list(errors))
    advance = None if progress is None else (lambda done: progress(done, len(items)))
    result.merge(warm(cache, path, items, progress=advance, **options))
    return result


def warm(
    cache: Any,
    path: Path,
    items: list[WarmItem],
    *,
    model: str | None = None,
    ttl: Any = None,
    tags: tuple[str, ...] = (),
    batch_size: int = 100,
    concurrency: int = 4,
    replace: bool = False,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> WarmResult:
    """Store the items' answers (asking the LLM for questions without one), batch by batch."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidRequestError(f"batch size must be a positive integer, got {batch_size!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise InvalidRequestError(f"concurrency must be a positive integer, got {concurrency!r}")
    result = WarmResult()
    with (
        ThreadPoolExecutor(max_workers=concurrency) as pool,
        ThreadPoolExecutor(max_workers=BATCHES_IN_FLIGHT, thread_name_prefix="pgcache-warm") as batches,
    ):
        in_flight: deque[tuple[Future, int]] = deque()
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            in_flight.append(
                (batches.submit(_warm_one, cache, path, batch, model, ttl, tags, pool, replace, dry_run), len(batch))
            )
            while len(in_flight) >= BATCHES_IN_FLIGHT or (in_flight and start + batch_size >= len(items)):
                future, size = in_flight.popleft()
                result.merge(future.result())
                if progress:
                    progress(size)
    return result


# One batch embeds (waiting on the embedding service) while the one before it is written
# (waiting on PostgreSQL): two in flight keep both busy. Their keys never interleave badly:
# every batch upserts in exact-key order, so two batches cannot deadlock.
BATCHES_IN_FLIGHT = 2


def _warm_one(cache, path, batch, model, ttl, tags, pool, replace, dry_run) -> WarmResult:
    result = WarmResult()
    # Each line's key is derived once, for both the presence check and the store.
    keys = [cache.keys.key(item.prompt, model, item.namespace) for item in batch]
    present = [False] * len(batch) if replace else cache.entries.contains_keys(keys)
    todo = [(item, key) for item, key, here in zip(batch, keys, present, strict=True) if not here]
    result.present += len(batch) - len(todo)
    if not dry_run and todo:
        _warm_batch(cache, path, todo, model, ttl, tags, pool, result)
    elif dry_run:
        result.added += len(todo)
    return result


def _warm_batch(cache, path, todo, model, ttl, tags, pool, result) -> None:
    questions = [item for item, _ in todo if item.response is None]
    answers: dict[int, Any] = {id(item): item.response for item, _ in todo if item.response is not None}

    def ask(item: WarmItem):
        return cache.llm.chat.completions.create(
            model=model or cache.model, messages=[{"role": "user", "content": item.prompt}]
        )

    for item, outcome in zip(questions, pool.map(_capture(ask), questions), strict=True):
        if isinstance(outcome, Exception):
            result.failed += 1
            result.errors.append(f"{path}:{item.line}: LLM call failed: {type(outcome).__name__}")
        else:
            answers[id(item)] = outcome
    groups: dict[tuple, list[tuple[WarmItem, Any]]] = {}
    for item, key in todo:
        if id(item) in answers:
            groups.setdefault((item.ttl, item.tags), []).append((item, key))
    for (item_ttl, item_tags), group in groups.items():
        lifetime = ttl if item_ttl is None else item_ttl
        extra = {} if lifetime is None else {"ttl": lifetime}  # None: the cache's default TTL
        try:
            cache.store_keyed(
                [(key, answers[id(item)]) for item, key in group], tags=[*tags, *item_tags], source="warm", **extra
            )
            result.added += len(group)
        except PgcacheError as exc:
            result.failed += len(group)
            result.errors.extend(f"{path}:{item.line}: {exc}" for item, _ in group)


def _capture(function):
    def call(item):
        try:
            return function(item)
        except Exception as exc:  # noqa: BLE001 - whatever the LLM client raises is reported for its line
            return exc

    return call
