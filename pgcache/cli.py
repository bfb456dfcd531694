"""The ``pgcache`` command line: thin commands over the library, errors rendered once here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import db, embedded
from .errors import PgcacheError
from .settings import Settings

app = typer.Typer(
    name="pgcache",
    help="A persistent LLM response cache on PostgreSQL + pgvector.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Create, migrate and locate the cache database.", no_args_is_help=True)
app.add_typer(db_app, name="db")

DatabaseUrl = Annotated[
    Optional[str],
    typer.Option("--database-url", help="postgresql:// URL (default: PGCACHE_DATABASE_URL, else the embedded database)."),
]
DataDir = Annotated[
    Optional[Path],
    typer.Option("--data-dir", help="Data directory of the embedded database (default: PGCACHE_DATA_DIR or per user)."),
]


def _settings(database_url: str | None, data_dir: Path | None) -> tuple[str | None, Path | None]:
    settings = Settings.from_env()
    return database_url or settings.database_url, data_dir or settings.data_dir


def _url(database_url: str | None, data_dir: Path | None) -> str:
    url, data = _settings(database_url, data_dir)
    return db.resolve_url(url, data)[0]


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None, data_dir: DataDir = None,
               revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Create or migrate the pgcache schema.

    Example: pgcache db upgrade --database-url postgresql://app@db.internal/app
    """
    url = _url(database_url, data_dir)
    db.upgrade(url, revision)
    typer.echo(f"schema at {db.current_revision(url)} in {db.redact(url)}")


@db_app.command("downgrade")
def db_downgrade(revision: Annotated[str, typer.Argument(help="Target revision; 'base' drops every pgcache table.")],
                 database_url: DatabaseUrl = None, data_dir: DataDir = None,
                 yes: Annotated[bool, typer.Option("--yes", help="Confirm dropping data.")] = False) -> None:
    """Migrate the schema down (deletes what newer revisions added).

    Example: pgcache db downgrade base --yes
    """
    if not yes:
        raise PgcacheError("downgrading can drop cached data; add --yes to confirm")
    url = _url(database_url, data_dir)
    db.downgrade(url, revision)
    typer.echo(f"schema at {db.current_revision(url) or 'base (no pgcache tables)'} in {db.redact(url)}")


@db_app.command("current")
def db_current(database_url: DatabaseUrl = None, data_dir: DataDir = None) -> None:
    """Show the schema revision of the database and the one this pgcache needs.

    Example: pgcache db current
    """
    url = _url(database_url, data_dir)
    current, head = db.current_revision(url), db.head_revision()
    state = "up to date" if current == head else "run `pgcache db upgrade`"
    typer.echo(f"database: {current or 'none'}\npgcache:  {head}\n{state}")


@db_app.command("url")
def db_url(database_url: DatabaseUrl = None, data_dir: DataDir = None,
           show_password: Annotated[bool, typer.Option("--show-password", help="Print the password too.")] = False) -> None:
    """Print the database URL (starting the embedded server if needed), for psql and other tools.

    Example: psql "$(pgcache db url)" -c 'SELECT count(*) FROM pgcache_entries'
    """
    url = _url(database_url, data_dir)
    typer.echo(url if show_password else db.redact(url))


@db_app.command("stop")
def db_stop(data_dir: DataDir = None) -> None:
    """Stop the embedded PostgreSQL server (it starts again on next use).

    Example: pgcache db stop
    """
    data = _settings(None, data_dir)[1]
    stopped = embedded.stop(data)
    typer.echo("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")


def main() -> None:
    """Console entry point: pgcache errors become one line on stderr and exit status 1."""
    try:
        app()
    except PgcacheError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
