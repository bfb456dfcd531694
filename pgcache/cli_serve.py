"""``pgcache serve``: the OpenAI-compatible caching proxy (:mod:`pgcache.server`)."""

from __future__ import annotations

import ipaddress
import os
import tempfile
from typing import Annotated

import typer

from . import config, db
from .cli_options import DatabaseUrl, DataDir, Namespace, given, settings_for
from .errors import PgcacheError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback exposes the cache.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    upstream: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible API that answers misses "
            "(default: PGCACHE_UPSTREAM_URL, else OPENAI_BASE_URL, else https://api.openai.com/v1)."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    namespace: Namespace = None,
    log_level: Annotated[str, typer.Option(help=f"One of {', '.join(LOG_LEVELS)}.")] = "info",
) -> None:
    """Run an OpenAI-compatible API with the cache in front: point any OpenAI SDK's base URL at it.

    Example: pgcache serve --port 8080   (then base_url="http://127.0.0.1:8080/v1")
    """
    try:
        import uvicorn

        from .server.settings import ServerSettings
    except ImportError as exc:
        raise PgcacheError(f"pgcache serve needs the server extra: pip install 'pgcache[server]' ({exc})") from None

    if log_level not in LOG_LEVELS:
        raise typer.BadParameter(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    server_settings = ServerSettings.resolve(given(upstream_url=upstream))
    settings = settings_for(database_url, data_dir)
    url, embedded = db.resolve_url(settings.database_url, settings.data_dir)
    db.check_schema(url, auto_upgrade=embedded)  # once here, not in every worker
    # The workers read their configuration from the environment, as `Cache.from_env()` does.
    os.environ[config.variable("database_url")] = url
    for name, value in given(namespace=namespace, upstream_url=server_settings.upstream_url).items():
        os.environ[config.variable(name)] = str(value)
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="pgcache-metrics-")
    typer.echo(
        f"pgcache serve: http://{host}:{port}/v1 in front of {server_settings.upstream()}, "
        f"database {db.redact(url)}, {workers} worker{'s' if workers > 1 else ''}"
    )
    if not _loopback(host) and server_settings.tenant_secret is None:
        typer.echo(
            f"warning: listening on {host} without PGCACHE_TENANT_SECRET: every client that reaches it can read "
            "cached answers",
            err=True,
        )
    uvicorn.run(
        "pgcache.server.app:from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=server_settings.access_log,
        timeout_graceful_shutdown=10,
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
