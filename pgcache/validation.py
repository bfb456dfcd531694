"""Validation of arguments shared by the cache's methods."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ConfigurationError, InvalidRequestError
from .queries import EMBEDDING_DIMENSIONS
from .responses import check_text

SOURCES = ("llm", "warm", "manual")
MAX_NAME_LENGTH = 255
"""Longest namespace, model or tag, in characters."""
MAX_EMBEDDER_NAME_LENGTH = 400
"""Longest embedder name (a local model's may hold its path). Namespace and embedder name share B-tree
index entries, which must stay under PostgreSQL's limit of about 2,700 bytes at four bytes a character."""


def check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{what} must be a non-empty string, got {short_repr(value)}")
    _check_length(value, what, ConfigurationError)
    _check_storable(value, what)
    return value


def check_threshold(value: Any, name: str = "threshold") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1:
        raise ConfigurationError(f"{name} must be a cosine similarity in (0, 1], got {short_repr(value)}")
    return float(value)


def check_embedder(embedder: Any) -> None:
    missing = [name for name in ("name", "dimensions", "embed") if not hasattr(embedder, name)]
    if missing:
        raise ConfigurationError(f"embedder {embedder!r} lacks {', '.join(missing)}")
    if not isinstance(embedder.name, str) or not embedder.name:
        raise ConfigurationError("embedder.name must be a non-empty string")
    _check_length(embedder.name, "embedder name", ConfigurationError, MAX_EMBEDDER_NAME_LENGTH)
    _check_storable(embedder.name, "embedder name")
    dims = embedder.dimensions
    if isinstance(dims, bool) or not isinstance(dims, int) or not 0 < dims <= EMBEDDING_DIMENSIONS:
        raise ConfigurationError(f"embedder.dimensions must be an integer in 1..{EMBEDDING_DIMENSIONS}, got {dims!r}")


def check_source(source: Any) -> str:
    if source not in SOURCES:
        raise InvalidRequestError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    return source


def check_tags(tags: Iterable[str] | None) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str):
        raise InvalidRequestError("tags must be a list of strings, not a single string")
    if isinstance(tags, (bytes, bytearray, Mapping)) or not isinstance(tags, Iterable):
        raise InvalidRequestError(f"tags must be a list of strings, got {type(tags).__name__}")
    result = []
    for tag in tags:
        if not isinstance(tag, str) or not tag:
            raise InvalidRequestError(f"every tag must be a non-empty string, got {short_repr(tag)}")
        _check_length(tag, "tag", InvalidRequestError)
        check_text(tag, "tag")
        result.append(tag)
    return result


def _check_storable(value: str, what: str) -> None:
    try:
        check_text(value, what)
    except InvalidRequestError as exc:
        raise ConfigurationError(str(exc)) from None


def _check_length(value: str, what: str, error: type[Exception], limit: int = MAX_NAME_LENGTH) -> None:
    if len(value) > limit:
        raise error(f"{what} must be at most {limit} characters, got {len(value)}")


def short_repr(value: Any) -> str:
    """``repr`` of a refused value, cut short so that a huge one does not flood the message."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return type(value).__name__
    return text if len(text) <= 80 else text[:77] + "..."
