"""``pgcache verifier``: train, list, show and delete learned verifiers (the library's ``*_verifier`` calls)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from . import quality, report_render
from .cli_options import DatabaseUrl, DataDir, Namespace, open_cache
from .errors import PgcacheError

app = typer.Typer(help="Train and manage learned verifiers of semantic hits.", no_args_is_help=True)


@app.command("train")
def train(
    pairs: Annotated[
        list[Path] | None, typer.Argument(help="CSV, TSV or JSONL files of a, b, label (1: one answer serves both).")
    ] = None,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    namespace: Namespace = None,
    with_feedback: Annotated[
        bool, typer.Option("--with-feedback", help="Add the hits judged with `pgcache feedback`.")
    ] = False,
    from_judge: Annotated[bool, typer.Option("--from-judge", help="Add the LLM judge's recorded verdicts.")] = False,
    target_precision: Annotated[float, typer.Option(help="Held-out precision to reach at the 95% lower bound.")] = 0.98,
    epochs: Annotated[int, typer.Option(help="Most passes over the training pairs (stops early).")] = 3,
    kind: Annotated[
        str, typer.Option(help="full (every weight, ~45 MB stored), lora (adapters, ~3 MB) or top (top layers).")
    ] = "full",
    learning_rate: Annotated[
        float | None, typer.Option(help="Peak learning rate (default: 5e-5 for full and top, 1e-3 for lora).")
    ] = None,
    rank: Annotated[int, typer.Option(help="LoRA rank with --kind lora: larger learns more and stores more.")] = 16,
    held_out: Annotated[float, typer.Option(help="Share of pairs kept out to stop early and calibrate on.")] = 0.2,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Train and evaluate; store nothing.")] = False,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Fine-tune a cross-encoder on labelled pairs, calibrate its threshold and store it in the database.

    Every process using the database picks the new verifier up within a minute.

    Example: pgcache verifier train pairs.csv --with-feedback --from-judge --target-precision 0.98
    """
    from .crossencoder import TrainingOptions

    if output not in ("table", "json"):
        raise PgcacheError(f"--format must be table or json, got {output!r}")
    labelled = [pair for path in pairs or () for pair in quality.read_pairs(path)]
    if not labelled and not (with_feedback or from_judge):
        raise PgcacheError("give a pairs file, --with-feedback or --from-judge")
    if kind not in ("full", "lora", "top"):
        raise PgcacheError(f"--kind must be full, lora or top, got {kind!r}")
    rate = learning_rate if learning_rate is not None else (1e-3 if kind == "lora" else 5e-5)
    options = TrainingOptions(epochs=epochs, kind=kind, rank=rank, learning_rate=rate, held_out=held_out)
    with open_cache(database_url, data_dir, namespace) as cache:
        result = _run(cache, labelled, options, with_feedback, from_judge, target_precision, dry_run)
    if output == "json":
        figures = {**result.__dict__, "stored": result.stored.describe() if result.stored else None}
        typer.echo(json.dumps(figures, indent=2, default=str))
    else:
        _print(result, target_precision, dry_run)
    if result.chosen is None:
        raise typer.Exit(1)


def _run(
    cache: Any, labelled: list, options: Any, with_feedback: bool, from_judge: bool, target: float, dry_run: bool
) -> Any:
    arguments = {
        "with_feedback": with_feedback,
        "from_judge": from_judge,
        "target_precision": target,
        "options": options,
        "save": not dry_run,
    }
    if not sys.stdout.isatty():
        return cache.train_verifier(labelled, **arguments)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("training", total=None)

        def progress(step: Any) -> None:
            loss = f", held-out loss {step.held_out_loss:.3f}" if step.held_out_loss is not None else ""
            bar.update(
                task,
                total=step.batches,
                completed=step.batch,
                description=f"epoch {step.epoch}/{step.epochs}, loss {step.loss:.3f}{loss}",
            )

        return cache.train_verifier(labelled, progress=progress, **arguments)


def _print(result: Any, target: float, dry_run: bool) -> None:
    from rich.console import Console

    console = Console()
    sources = ", ".join(f"{count} from {name}" for name, count in result.sources.items() if count)
    console.print(
        f"{result.pairs} labelled pairs ({sources}); {result.held_out} held out; trained in {result.seconds:.0f}s"
    )
    console.print(report_render.grid_table(result.grid, "probability"))
    chosen = result.chosen
    if chosen is None:
        console.print(
            f"no probability threshold reaches precision {target} (95% lower bound) on the held-out "
            "pairs; nothing stored. More labelled pairs, or a lower target, may help."
        )
        return
    figures = (
        f"threshold {chosen['threshold']:.3f}: precision {report_render.ratio(chosen['precision'])} "
        f"(95% lower bound {report_render.ratio(chosen['precision_lower'])}), "
        f"recall {report_render.ratio(chosen['recall'])} on the held-out pairs"
    )
    if dry_run or result.stored is None:
        console.print(f"would store: {figures}")
    else:
        stored = result.stored
        console.print(
            f"stored verifier version {stored.version} for namespace {stored.namespace!r} "
            f"({stored.embedder}, {stored.size / 1000:,.0f} kB): {figures}"
        )


@app.command("list")
def listing(
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="Only this namespace.")] = None,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """List the stored verifiers, newest version first; the newest of a namespace and embedder is in force.

    Example: pgcache verifier list --namespace support
    """
    with open_cache(database_url, data_dir, None) as cache:
        found = cache.list_verifiers(namespace)
    if output == "json":
        typer.echo(json.dumps([v.describe() for v in found], indent=2))
        return
    if not found:
        typer.echo("no stored verifiers")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for column in ("namespace", "embedder", "version", "created", "threshold", "precision", "pairs", "size"):
        table.add_column(column)
    for v in found:
        at = v.metrics.get("at_threshold") or {}
        table.add_row(
            v.namespace,
            v.embedder,
            str(v.version),
            f"{v.created_at:%Y-%m-%d %H:%M}",
            f"{v.threshold:.3f}",
            report_render.ratio(at.get("precision")),
            str(v.metrics.get("pairs", "")),
            f"{v.size / 1000:,.0f} kB",
        )
    Console().print(table)


@app.command("show")
def show(
    version: Annotated[int | None, typer.Argument(help="Version (default: the one in force).")] = None,
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    namespace: Namespace = None,
) -> None:
    """Print a stored verifier's settings and held-out metrics as JSON.

    Example: pgcache verifier show --namespace support
    """
    with open_cache(database_url, data_dir, namespace) as cache:
        stored = cache.show_verifier(version)
    typer.echo(json.dumps(stored.describe(), indent=2))


@app.command("delete")
def delete(
    version: Annotated[int, typer.Argument(help="The version to delete.")],
    database_url: DatabaseUrl = None,
    data_dir: DataDir = None,
    namespace: Namespace = None,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm.")] = False,
) -> None:
    """Delete a stored verifier; the namespace's previous version, if any, comes into force.

    Example: pgcache verifier delete 3 --namespace support --yes
    """
    if not yes:
        raise PgcacheError("deleting a verifier changes which hits are served; add --yes to confirm")
    with open_cache(database_url, data_dir, namespace) as cache:
        cache.delete_verifier(version)
    typer.echo(f"deleted verifier version {version}")
