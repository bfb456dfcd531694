"""The settings of ``pgcache serve``, declared like the cache's own (:mod:`pgcache.config`).

The cache behind the server is configured by the usual ``PGCACHE_*``
variables; these add what only a server needs. Secrets (the admin token and
the tenant secret) are never shown: ``repr`` hides them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from ..config import FLAG, POSITIVE_COUNT, SECONDS, Kind, choices, resolve_declared, setting
from ..errors import ConfigurationError
from ..validation import short_repr

OPENAI_URL = "https://api.openai.com/v1"


def _http_url(value: Any, label: str) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(f"{label} must be an http:// or https:// URL, got {short_repr(value)}")
    return value.rstrip("/")


def _secret(value: Any, label: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value.strip()) < 16:
        raise ConfigurationError(f"{label} must be a string of at least 16 characters")
    return value.strip()


HTTP_URL = Kind(_http_url, _http_url)
SECRET = Kind(_secret, _secret)


@dataclass(frozen=True)
class ServerSettings:
    """How ``pgcache serve`` reaches the LLM and guards its own endpoints."""

    upstream_url: str | None = setting(
        None,
        HTTP_URL,
        "the OpenAI-compatible API that answers misses and passed-through requests",
        "`OPENAI_BASE_URL`, else `https://api.openai.com/v1`",
    )
    upstream_key: str = setting(
        "caller",
        choices("caller", "server"),
        "`caller`: each request's `Authorization` header goes upstream; `server`: the server's `OPENAI_API_KEY` "
        "is used instead",
    )
    upstream_timeout: float = setting(600.0, SECONDS, "seconds an upstream request may take")
    admin_token: str | None = setting(
        None,
        SECRET,
        "bearer token of the admin endpoints (`POST /pgcache/feedback`); at least 16 characters",
        "unset: admin endpoints refuse every request",
    )
    tenant_secret: str | None = setting(
        None,
        SECRET,
        "when set, each caller's entries are kept apart: the namespace gets a keyed hash (HMAC-SHA256 with this "
        "secret) of the caller's API key; at least 16 characters",
        "unset: callers share entries",
    )
    max_body_bytes: int = setting(8 * 1024 * 1024, POSITIVE_COUNT, "largest request body accepted, in bytes")
    access_log: bool = setting(False, FLAG, "log one line per request (method, path, status; never headers)")

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("admin_token", "tenant_secret"):
            if shown[name]:
                shown[name] = "***"
        return f"ServerSettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @classmethod
    def resolve(cls, arguments: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> ServerSettings:
        """Settings from explicit ``arguments``, else ``PGCACHE_*`` variables, else defaults."""
        return resolve_declared(cls, arguments, environ)

    def upstream(self, environ: Mapping[str, str] | None = None) -> str:
        """The upstream base URL in force."""
        env = os.environ if environ is None else environ
        return self.upstream_url or _http_url(env.get("OPENAI_BASE_URL") or OPENAI_URL, "OPENAI_BASE_URL") or OPENAI_URL
