"""Validation of arguments shared by the cache's methods."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .errors import ConfigurationError, InvalidRequestError
from .models import EMBEDDING_DIMENSIONS
from .responses import check_text

SOURCES = ("llm", "warm", "manual")


def check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{what} must be a non-empty string, got {value!r}")
    check_text(value, what)
    return value


def check_threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value <= 1:
        raise ConfigurationError(f"threshold must be a cosine similarity in (0, 1], got {value!r}")
    return float(value)


def check_embedder(embedder: Any) -> None:
    missing = [name for name in ("name", "dimensions", "embed") if not hasattr(embedder, name)]
    if missing:
        raise ConfigurationError(f"embedder {embedder!r} lacks {', '.join(missing)}")
    if not isinstance(embedder.name, str) or not embedder.name:
        raise ConfigurationError("embedder.name must be a non-empty string")
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
    result = []
    for tag in tags:
        if not isinstance(tag, str) or not tag:
            raise InvalidRequestError(f"every tag must be a non-empty string, got {tag!r}")
        check_text(tag, "tag")
        result.append(tag)
    return result
