"""``pgcache hooks``: add, list and remove invalidation hooks on application tables (:mod:`pgcache.hooks`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from .cli_options import DatabaseUrl, DataDir, open_cache
from .errors import PgcacheError

app = typer.Typer(
    help="Invalidation hooks: a change to an application table retires the cache entries tagged with its rows.",
    no_args_is_help=True,
)


@app.command("add")
def add(
    table: Annotated[str, typer.Argument(help='The table, as SQL writes it: articles, app."Price list".')],
    tag_template: Annotated[
        list[str] | None,
        typer.Option("--tag-template", "-t", help="A tag per changed row, with {column} from the row; repeatable."),
    ] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="A fixed tag retired on any change; repeatable.")
    ] = None,
    on: Annotated[str, typer.Option("--on", help="The events, comma-separated.")] = "insert,update,delete",
    mode: Annotated[str, typer.Option(help="delete the entries, or expire them (kept until `pgcache sweep`).")] = (
        "delete"
    ),
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Only entries of this namespace (default: every one).")
    ] = None,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Install a trigger on TABLE that retires the entries tagged with its changed rows, in the same transaction.

    Example: pgcache hooks add articles --tag-template 'article:{id}' --on update,delete
    """
    events = [event for event in on.split(",") if event.strip()]
    with open_cache(database_url, data_dir) as cache:
        hook = cache.add_hook(
            table, tag_templates=tag_template or [], tags=tag, events=events, mode=mode, namespace=namespace
        )
    typer.echo(f"hook {hook.id} on {hook.table}: {_describe(hook)}")


@app.command("list")
def listing(
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """List the installed hooks.

    Example: pgcache hooks list --format json
    """
    if output not in ("table", "json"):
        raise PgcacheError(f"--format must be table or json, got {output!r}")
    with open_cache(database_url, data_dir) as cache:
        found = cache.list_hooks()
    if output == "json":
        typer.echo(json.dumps([asdict(hook) for hook in found], indent=2, default=str))
        return
    if not found:
        typer.echo("no hooks")
    for hook in found:
        gone = "" if hook.table_exists else " (table dropped: remove the hook)"
        typer.echo(f"{hook.id}  {hook.table}{gone}  {_describe(hook)}")


@app.command("remove")
def remove(
    hook_id: Annotated[int, typer.Argument(help="The hook's id (`pgcache hooks list`).")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Drop a hook's triggers and forget it.

    Example: pgcache hooks remove 3
    """
    with open_cache(database_url, data_dir) as cache:
        removed = cache.remove_hook(hook_id)
    if not removed:
        raise PgcacheError(f"no hook {hook_id}; `pgcache hooks list` shows them")
    typer.echo(f"hook {hook_id} removed")


def _describe(hook) -> str:
    tags = [*hook.templates, *hook.tags]
    scope = f" in namespace {hook.namespace}" if hook.namespace else ""
    return f"on {', '.join(hook.events)} {hook.mode}s entries tagged {', '.join(tags)}{scope}"
