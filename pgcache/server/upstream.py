"""The OpenAI-compatible API behind the server: one pooled HTTP client, credentials, pass-through.

Requests go upstream as the caller sent them, less the hop-by-hop headers and
the server's own (``X-Pgcache-*``, ``Cache-Control``); responses come back the
same way, streamed, so large or slow bodies never sit in memory. The
``Authorization`` header is forwarded (or replaced by the server's key) and
never stored or logged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import httpx2 as httpx

from ..errors import ConfigurationError
from .settings import ServerSettings

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding",
     "upgrade", "host", "content-length"}
)  # fmt: skip
"""Headers that describe one connection, not the message (RFC 9110, 7.6.1), and those the client recomputes."""
RESPONSE_DROPPED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"})
"""Dropped from upstream responses: the server re-frames and the client library decompresses bodies."""


class Upstream:
    """A pooled async HTTP client for the upstream API."""

    def __init__(self, settings: ServerSettings, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.base_url = settings.upstream(env)
        self.server_key = env.get("OPENAI_API_KEY") if settings.upstream_key == "server" else None
        if settings.upstream_key == "server" and not self.server_key:
            raise ConfigurationError("PGCACHE_UPSTREAM_KEY=server needs OPENAI_API_KEY in the server's environment")
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.upstream_timeout, connect=10.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )

    def url(self, path: str) -> str:
        """The upstream URL of a ``/v1/...`` path (the base URL already ends in ``/v1``)."""
        return self.base_url + path.removeprefix("/v1")

    def headers(self, incoming: Mapping[str, str]) -> dict[str, str]:
        """The caller's headers as they go upstream."""
        out = {
            name: value
            for name, value in incoming.items()
            if name.lower() not in HOP_BY_HOP
            and not name.lower().startswith("x-pgcache-")
            and name.lower() not in ("cache-control", "accept-encoding")
        }
        if self.server_key:
            out = {k: v for k, v in out.items() if k.lower() != "authorization"}
            out["Authorization"] = f"Bearer {self.server_key}"
        return out

    async def send(
        self, method: str, path: str, headers: Mapping[str, str], content: bytes, query: str = ""
    ) -> httpx.Response:
        """Send a request upstream; the response's body is read by the caller (stream or ``aread``)."""
        url = self.url(path) + (f"?{query}" if query else "")
        request = self.client.build_request(method, url, headers=self.headers(headers), content=content)
        return await self.client.send(request, stream=True)

    async def reachable(self) -> str | None:
        """None when the upstream answers HTTP at all (any status), else why not."""
        try:
            response = await self.client.get(self.url("/v1/models"), headers=self.headers({}), timeout=3.0)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}"
        await response.aclose()
        return None

    async def close(self) -> None:
        await self.client.aclose()


def response_headers(upstream: Any) -> dict[str, str]:
    """An upstream response's headers as they go back to the caller."""
    return {k: v for k, v in upstream.headers.items() if k.lower() not in RESPONSE_DROPPED}
