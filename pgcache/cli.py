"""The ``pgcache`` command line: thin commands over the library, errors rendered once here."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from . import config, db, embedded, quality, report_render
from .cache import Cache
from .cli_hooks import app as hooks_app
from .cli_options import DatabaseUrl, DataDir, Namespace, given, open_cache, settings_for, url_for
from .cli_serve import serve
from .cli_verifier import app as verifier_app
from .durations import parse_ttl
from .errors import PgcacheError
from .validation import check_threshold
from .warm import WarmResult

app = typer.Typer(
    name="pgcache",
    help="A persistent LLM response cache on PostgreSQL + pgvector.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Create, migrate and locate the cache database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(verifier_app, name="verifier")
app.add_typer(hooks_app, name="hooks")
app.command()(serve)

Retrain = Annotated[
    bool,
    typer.Option(
        "--retrain/--no-retrain",
        help="Retrain the ivfflat index when the table has doubled or halved since it was trained.",
    ),
]


@db_app.command("upgrade")
def db_upgrade(
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Create or migrate the pgcache schema.

    Example: pgcache db upgrade --database-url postgresql://app@db.internal/app
    """
    url = url_for(database_url, data_dir)
    db.upgrade(url, revision)
    typer.echo(f"schema at {db.current_revision(url)} in {db.redact(url)}")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision; 'base' drops every pgcache table.")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm dropping data.")] = False,
) -> None:
    """Migrate the schema down (deletes what newer revisions added).

    Example: pgcache db downgrade base --yes
    """
    if not yes:
        raise PgcacheError("downgrading can drop cached data; add --yes to confirm")
    url = url_for(database_url, data_dir)
    db.downgrade(url, revision)
    typer.echo(f"schema at {db.current_revision(url) or 'base (no pgcache tables)'} in {db.redact(url)}")


@db_app.command("current")
def db_current(database_url: DatabaseUrl = None, data_dir: DataDir = None) -> None:
    """Show the schema revision of the database and the one this pgcache needs.

    Example: pgcache db current
    """
    url = url_for(database_url, data_dir)
    current, head = db.current_revision(url), db.head_revision()
    state = "up to date" if current == head else "run `pgcache db upgrade`"
    typer.echo(f"database: {current or 'none'}\npgcache:  {head}\n{state}")


@db_app.command("url")
def db_url(
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    show_password: Annotated[bool, typer.Option("--show-password", help="Print the password too.")] = False,
) -> None:
    """Print the database URL (starting the embedded server if needed), for psql and other tools.

    Example: psql "$(pgcache db url)" -c 'SELECT count(*) FROM pgcache_entries'
    """
    url = url_for(database_url, data_dir)
    typer.echo(url if show_password else db.redact(url))


@db_app.command("stop")
def db_stop(data_dir: DataDir = None) -> None:
    """Stop the embedded PostgreSQL server (it starts again on next use).

    Example: pgcache db stop
    """
    stopped = embedded.stop(settings_for(None, data_dir).data_dir)
    typer.echo("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")


@app.command()
def warm(
    file: Annotated[Path, typer.Argument(help="FAQ file: questions, question<TAB>answer, CSV or JSONL.")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    namespace: Namespace = None,
    file_format: Annotated[
        Optional[str], typer.Option("--format", help="text, tsv, csv or jsonl (default: detected).")
    ] = None,
    model: Annotated[Optional[str], typer.Option(help=config.doc("model"))] = None,
    ttl: Annotated[Optional[str], typer.Option(help=config.doc("ttl"))] = None,
    tag: Annotated[Optional[list[str]], typer.Option(help="Tag for every entry (repeatable).")] = None,
    batch_size: Annotated[int, typer.Option(help="Entries per embedding batch and transaction.")] = 100,
    concurrency: Annotated[int, typer.Option(help="Parallel LLM calls for question-only files.")] = 4,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Parse and count; write nothing.")] = False,
    replace: Annotated[bool, typer.Option("--replace", help="Refresh entries that already exist.")] = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Stop at the first bad line, before writing anything.")
    ] = False,
    retrain: Retrain = True,
) -> None:
    """Fill the cache from an FAQ file; running it again adds nothing.

    Example: pgcache warm examples/faqs.tsv --tag faq --ttl 30d
    """
    if ttl is not None:
        parse_ttl(ttl, name="--ttl")
    with open_cache(database_url, data_dir, namespace) as cache:
        result = _run_warm(
            cache,
            file,
            file_format=file_format,
            model=model,
            ttl=ttl,
            tags=tuple(tag or ()),
            batch_size=batch_size,
            concurrency=concurrency,
            replace=replace,
            dry_run=dry_run,
            strict=strict,
        )
        for error in result.errors:
            typer.echo(error, err=True)
        verb = "would add" if dry_run else "added"
        typer.echo(f"{verb} {result.added}, already present {result.present}, failed {result.failed}")
        if not dry_run:
            _keep_index_trained(cache, retrain)
    if result.failed:
        raise typer.Exit(1)


def _keep_index_trained(cache: Cache, retrain: bool) -> None:
    """Retrain the ivfflat index once the table has doubled or halved since it was trained (or advise it)."""
    status = cache.index_status()
    if not status.needs_reindex:
        return
    if not retrain:
        typer.echo(
            f"the index was trained for {status.lists} lists; {status.rows} rows want "
            f"{status.recommended_lists}: run `pgcache reindex`"
        )
        return
    typer.echo(f"retraining the index for {status.rows} rows: {status.lists} -> {status.recommended_lists} lists")
    result = cache.reindex()
    if result.skipped:
        typer.echo("another reindex is running; nothing done")
    else:
        typer.echo(f"index retrained in {result.seconds:.1f}s")


def _run_warm(cache: Cache, file: Path, **options: object) -> WarmResult:
    if not sys.stdout.isatty():
        return cache.warm(file, **options)
    from rich.progress import Progress

    with Progress(transient=True) as progress:
        task = progress.add_task(f"warming {file.name}", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, total=total, advance=done)

        return cache.warm(file, progress=advance, **options)


@app.command()
def sweep(
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    batch_size: Annotated[int, typer.Option(help="Rows deleted per transaction.")] = 10_000,
    max_seconds: Annotated[Optional[float], typer.Option(help="Stop after this long; the next run goes on.")] = None,
    ledger_retention: Annotated[str, typer.Option(help="Delete ledger rows older than this (e.g. 90d).")] = "90d",
    max_entries: Annotated[Optional[int], typer.Option(help=config.doc("max_entries"))] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would be deleted.")] = False,
    retrain: Retrain = True,
) -> None:
    """Delete expired entries and old ledger rows, in batches, without blocking lookups.

    Safe from cron every minute: a sweep that finds another one running exits at once.

    Example: pgcache sweep --max-seconds 50
    """
    retention = parse_ttl(ledger_retention, name="--ledger-retention")
    if retention is None:
        raise PgcacheError("--ledger-retention must be a duration such as 90d")
    with open_cache(database_url, data_dir) as cache:
        result = cache.sweep(
            batch_size=batch_size,
            max_seconds=max_seconds,
            ledger_retention_days=retention / 86400,
            dry_run=dry_run,
            **given(max_entries=max_entries),
        )
        if result.skipped:
            typer.echo("another sweep is running; nothing done")
            return
        verb = "would delete" if dry_run else "deleted"
        typer.echo(
            f"{verb} {result.expired} expired entries, {result.evicted} entries over capacity, "
            f"{result.lookups} old ledger rows in {result.seconds:.2f}s"
            + ("" if result.complete else " (time limit reached; run again to finish)")
        )
        if not dry_run:
            _keep_index_trained(cache, retrain)


@app.command()
def invalidate(
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    namespace: Namespace = None,
    prompt: Annotated[Optional[str], typer.Option(help="Entries whose final user message is exactly this.")] = None,
    similar_to: Annotated[Optional[str], typer.Option(help="Entries that would hit for this text.")] = None,
    min_similarity: Annotated[
        Optional[float], typer.Option(help="Cosine similarity for --similar-to (default: the semantic threshold).")
    ] = None,
    tag: Annotated[
        Optional[list[str]], typer.Option(help="Entries carrying this tag (repeatable: all of them).")
    ] = None,
    model: Annotated[Optional[str], typer.Option(help="Entries of this chat model.")] = None,
    older_than: Annotated[Optional[str], typer.Option(help="Entries stored longer ago than this (e.g. 7d).")] = None,
    source: Annotated[Optional[str], typer.Option(help="warm, llm or manual.")] = None,
    key: Annotated[Optional[str], typer.Option(help="The entry with this exact key (hex).")] = None,
    all_entries: Annotated[bool, typer.Option("--all", help="Every entry of the namespace.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the count and a sample; delete nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm deleting every entry of the namespace.")] = False,
) -> None:
    """Delete cached entries; filters combine with AND.

    Example: pgcache invalidate --tag pricing --older-than 7d --dry-run
    """
    filters: dict[str, Any] = {
        "namespace": namespace,
        "prompt": prompt,
        "similar_to": similar_to,
        "min_similarity": min_similarity,
        "tags": tag,
        "model": model,
        "older_than": older_than,
        "source": source,
        "key": key,
        "all": all_entries,
    }
    with open_cache(database_url, data_dir, namespace) as cache:
        if dry_run:
            count, sample = cache.preview_invalidation(**filters)
            typer.echo(f"would delete {count} entries")
            for row in sample:
                typer.echo(f"  #{row['id']} [{row['source']}, {row['model']}] {row['prompt']!r}")
            return
        count = cache.invalidate(yes=yes, **filters)
    typer.echo(f"deleted {count} entries")


@app.command()
def reindex(
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    lists: Annotated[
        Optional[int], typer.Option(help="ivfflat lists (default: 1 below 500 rows, else 2*sqrt(rows)).")
    ] = None,
    maintenance_work_mem: Annotated[
        Optional[str], typer.Option(help="Memory for the index build (default: what the build needs, >= 512MB).")
    ] = None,
) -> None:
    """Retrain the ivfflat index for the current number of entries, concurrently.

    Example: pgcache reindex
    """
    with open_cache(database_url, data_dir) as cache:
        result = cache.reindex(lists=lists, maintenance_work_mem=maintenance_work_mem)
    if result.skipped:
        typer.echo("another reindex is running; nothing done")
        return
    typer.echo(
        f"before: {result.before.rows} rows, {result.before.lists} lists\n"
        f"after:  {result.after.rows} rows, {result.after.lists} lists ({result.seconds:.2f}s)"
    )


@app.command()
def report(
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    namespace: Annotated[
        Optional[str], typer.Option("--namespace", "-n", help="Only this namespace (default: all).")
    ] = None,
    model: Annotated[Optional[str], typer.Option(help="Only this chat model (default: all).")] = None,
    since: Annotated[
        Optional[str], typer.Option(help="Only lookups this recent, e.g. 24h or 30d (whole UTC days).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Rows of top entries and near misses.")] = 10,
    output: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    what_if_threshold: Annotated[
        Optional[str],
        typer.Option(
            metavar="SIMILARITY",
            help="Also replay the ledger at this semantic threshold: hits gained and lost (table and json).",
        ),
    ] = None,
) -> None:
    """Hit rates, tokens and LLM time saved, savings net of the cache's costs, top entries, near misses, a chart.

    Example: pgcache report --since 7d --what-if-threshold 0.85 --format json
    """
    if output not in ("table", "json", "csv"):
        raise PgcacheError(f"--format must be table, json or csv, got {output!r}")
    proposed = _similarity(what_if_threshold, "--what-if-threshold")
    with open_cache(database_url, data_dir) as cache:
        figures = cache.report(since=since, namespace=namespace, model=model, limit=limit, what_if_threshold=proposed)
    if output == "json":
        typer.echo(json.dumps(figures, indent=2))
    elif output == "csv":
        typer.echo(report_render.to_csv(figures), nl=False)
    else:
        from rich.console import Console

        report_render.render(figures, Console())


def _similarity(value: str | None, option: str) -> float | None:
    """A cosine similarity given on the command line; "high" or 1.5 get the library's message."""
    if value is None:
        return None
    number: Any = value
    with contextlib.suppress(ValueError):
        number = float(value)
    return check_threshold(number, option)


PairsFile = Annotated[Path, typer.Argument(help="CSV or TSV with a, b, label columns (1: one answer serves both).")]


@app.command()
def evaluate(
    pairs: PairsFile,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    namespace: Namespace = None,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Precision, recall and F1 of the semantic decision across thresholds, for the configured embedder.

    Example: PGCACHE_EMBEDDER=local pgcache evaluate pairs.csv --format json
    """
    if output not in ("table", "json"):
        raise PgcacheError(f"--format must be table or json, got {output!r}")
    labelled = quality.read_pairs(pairs)
    with open_cache(database_url, data_dir, namespace) as cache:
        figures = cache.evaluate(labelled)
    if output == "json":
        typer.echo(json.dumps(figures, indent=2))
        return
    from rich.console import Console

    console = Console()
    console.print(f"{figures['pairs']} pairs ({figures['positives']} same-answer), embedder {figures['embedder']}")
    console.print(report_render.grid_table(figures["grid"]))
    at = figures["at_threshold"]
    console.print(
        f"in force: {figures['threshold']:.4f} ({figures['threshold_source']}): precision "
        f"{report_render.ratio(at['precision'])}, recall {report_render.ratio(at['recall'])}, "
        f"wrong hits {at['wrong_hit_rate']:.1%}"
    )


@app.command()
def calibrate(
    pairs: PairsFile,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    namespace: Namespace = None,
    target_precision: Annotated[float, typer.Option(help="Precision to reach at the 95% lower bound.")] = 0.98,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the threshold; store nothing.")] = False,
    with_feedback: Annotated[
        bool, typer.Option("--with-feedback", help="Add the pairs judged with `pgcache feedback`.")
    ] = False,
) -> None:
    """Choose and store the lowest threshold whose precision (95% lower bound) meets the target.

    Stored per namespace and embedder, so every process uses it.

    Example: PGCACHE_EMBEDDER=local pgcache calibrate pairs.csv --target-precision 0.98
    """
    labelled = quality.read_pairs(pairs)
    with open_cache(database_url, data_dir, namespace) as cache:
        chosen = cache.calibrate(
            labelled,
            target_precision=target_precision,
            source=pairs.name,
            save=not dry_run,
            with_feedback=with_feedback,
        )
        embedder = cache.embedder.name
    if chosen is None:
        raise PgcacheError(
            f"no threshold reaches precision {target_precision} (95% lower bound) on these "
            f"{len(labelled)} pairs; nothing stored"
        )
    verb = "would store" if dry_run else "stored"
    typer.echo(
        f"{verb} threshold {chosen.threshold:.4f} for {embedder}: precision {chosen.precision:.3f} "
        f"(95% lower bound {chosen.precision_lower:.3f}), recall {report_render.ratio(chosen.recall)} "
        f"on {len(labelled)} pairs"
    )


@app.command()
def feedback(
    verdict: Annotated[str, typer.Argument(help="wrong or right.")],
    lookup_id: Annotated[str, typer.Argument(help="The lookup's id (CacheResult.lookup_id, pgcache_lookups.id).")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
) -> None:
    """Judge a semantic hit. "wrong" raises that entry's own threshold so the same phrasing misses it.

    Both verdicts keep the pair for `pgcache calibrate --with-feedback`.

    Example: pgcache feedback wrong 0b7e9c1e-5d7c-4c39-9a53-7f0f5f3c2a11
    """
    with open_cache(database_url, data_dir) as cache:
        threshold = cache.feedback(verdict, lookup_id)
    if verdict == "right":
        typer.echo("kept as a right hit")
    else:
        typer.echo(f"kept as a wrong hit; the entry now needs similarity >= {threshold:.5f}")


def main() -> None:
    """Console entry point: pgcache errors become one line on stderr and exit status 1."""
    try:
        app()
    except PgcacheError as exc:
        # One line, whatever the driver's message looked like, so cron mail and logs stay readable.
        typer.echo("error: " + " ".join(str(exc).split()), err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
