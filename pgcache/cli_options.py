"""What every ``pgcache`` command shares: the database and namespace options, and the cache they open.

An option given on the command line wins; the others come from ``PGCACHE_*``
variables or their defaults, as everywhere (:mod:`pgcache.config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from . import config, db
from .cache import Cache
from .config import Settings

# Their help comes from the settings' declarations.
DatabaseUrl = Annotated[str | None, typer.Option("--database-url", help=config.doc("database_url"))]
DataDir = Annotated[Path | None, typer.Option("--data-dir", help=config.doc("data_dir"))]
Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help=config.doc("namespace"))]


def given(**options: Any) -> dict[str, Any]:
    """The options given on the command line (not None)."""
    return {name: value for name, value in options.items() if value is not None}


def open_cache(database_url: str | None, data_dir: Path | None = None, namespace: str | None = None) -> Cache:
    return Cache(**given(database_url=database_url, data_dir=data_dir, namespace=namespace))


def settings_for(database_url: str | None, data_dir: Path | None) -> Settings:
    return Settings.resolve(given(database_url=database_url, data_dir=data_dir))


def url_for(database_url: str | None, data_dir: Path | None) -> str:
    """The database URL the options name, starting the embedded server when they name none."""
    settings = settings_for(database_url, data_dir)
    return db.resolve_url(settings.database_url, settings.data_dir)[0]
