"""Settings read from ``PGCACHE_*`` environment variables.

This is the only module that reads the environment; the library itself takes
explicit arguments. ``Cache.from_env()`` and the CLI build on it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .db import redact
from .durations import parse_ttl
from .errors import ConfigurationError
from .prices import parse_prices

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_NAMESPACE = "default"
DEFAULT_EMBEDDING_MODEL = "text-embedding-3-small"
EMBEDDERS = ("openai", "local")


@dataclass(frozen=True)
class Settings:
    """pgcache configuration; every field maps to one ``PGCACHE_*`` variable."""

    database_url: str | None = None
    data_dir: Path | None = None
    embedder: str = "openai"
    embedding_model: str | None = None
    model: str = DEFAULT_MODEL
    namespace: str = DEFAULT_NAMESPACE
    ttl: float | None = None
    threshold: float | None = None
    max_entries: int | None = None
    prices: dict[str, tuple[float, float]] | None = None
    """Token prices for reports (``PGCACHE_PRICES``); ``None``: the built-in table."""
    connect_timeout: float = 2.0
    statement_timeout: float = 2.0
    single_flight_wait: float = 30.0
    bypass_nonzero_temperature: bool = False
    guard: bool = True
    sure: float = 1.0
    judge_model: str | None = None
    read_database_url: str | None = None
    """Where lookups read (``PGCACHE_READ_DATABASE_URL``), e.g. a streaming replica; writes stay on ``database_url``."""
    store_prompts: bool = True
    """``False`` (``PGCACHE_STORE_PROMPTS=0``): keep prompt text out of entries and the ledger."""

    def __repr__(self) -> str:
        # Settings end up in logs and tracebacks; database passwords must not.
        shown = {f: getattr(self, f) for f in self.__dataclass_fields__}
        for name in ("database_url", "read_database_url"):
            if shown[name]:
                shown[name] = redact(shown[name])
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``environ`` (default: ``os.environ``); empty values count as unset."""
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(f"PGCACHE_{name}", "").strip()
            return value or None

        embedder = (get("EMBEDDER") or "openai").lower()
        if embedder not in EMBEDDERS:
            raise ConfigurationError(f"PGCACHE_EMBEDDER must be one of {', '.join(EMBEDDERS)}, got {embedder!r}")
        data_dir = get("DATA_DIR")
        return cls(
            database_url=get("DATABASE_URL"),
            data_dir=Path(data_dir).expanduser() if data_dir else None,
            embedder=embedder,
            embedding_model=get("EMBEDDING_MODEL"),
            model=get("MODEL") or DEFAULT_MODEL,
            namespace=get("NAMESPACE") or DEFAULT_NAMESPACE,
            ttl=parse_ttl(get("TTL"), name="PGCACHE_TTL"),
            threshold=_threshold(get("THRESHOLD")),
            max_entries=_count(get("MAX_ENTRIES"), "PGCACHE_MAX_ENTRIES"),
            prices=parse_prices(get("PRICES")) if get("PRICES") else None,
            connect_timeout=_seconds(get("CONNECT_TIMEOUT"), "PGCACHE_CONNECT_TIMEOUT", 2.0),
            statement_timeout=_seconds(get("STATEMENT_TIMEOUT"), "PGCACHE_STATEMENT_TIMEOUT", 2.0),
            single_flight_wait=_seconds(get("SINGLE_FLIGHT_WAIT"), "PGCACHE_SINGLE_FLIGHT_WAIT", 30.0),
            bypass_nonzero_temperature=_flag(get("BYPASS_NONZERO_TEMPERATURE"), "PGCACHE_BYPASS_NONZERO_TEMPERATURE"),
            guard=_flag(get("GUARD"), "PGCACHE_GUARD", default=True),
            sure=_threshold(get("SURE_THRESHOLD"), "PGCACHE_SURE_THRESHOLD") or 1.0,
            judge_model=get("JUDGE_MODEL"),
            read_database_url=get("READ_DATABASE_URL"),
            store_prompts=_flag(get("STORE_PROMPTS"), "PGCACHE_STORE_PROMPTS", default=True),
        )

    def make_embedder(self, client=None):
        """Build the configured embedder (``client`` is shared with OpenAI embeddings)."""
        from .embedders import LocalEmbedder, OpenAIEmbedder

        if self.embedder == "local":
            return LocalEmbedder(self.embedding_model) if self.embedding_model else LocalEmbedder()
        return OpenAIEmbedder(client=client, model=self.embedding_model or DEFAULT_EMBEDDING_MODEL)


def _threshold(value: str | None, name: str = "PGCACHE_THRESHOLD") -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0.0 < number <= 1.0:
        raise ConfigurationError(f"{name} must be a cosine similarity in (0, 1], got {value!r}")
    return number


def _count(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise ConfigurationError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _seconds(value: str | None, name: str, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return number


def _flag(value: str | None, name: str, default: bool = False) -> bool:
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be true or false, got {value!r}")
