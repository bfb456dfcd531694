"""Shared machinery of the benchmarks: a private PostgreSQL, timers, percentiles, fast loading."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.types.json import Jsonb

from pgcache import db, embedded, keys

# Server settings of the benchmark's private PostgreSQL (the embedded default otherwise):
# enough shared buffers to hold a 100k-entry table and its index, as any production server
# holding such a cache would be configured.
SERVER_SETTINGS = {"shared_buffers": "2GB", "max_wal_size": "4GB", "checkpoint_timeout": "30min"}


@dataclass
class Timing:
    """Latency samples in microseconds."""

    samples: list[float]

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples, q)) if self.samples else float("nan")

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p90(self) -> float:
        return self.percentile(90)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def max(self) -> float:
        return max(self.samples) if self.samples else float("nan")

    def summary(self) -> dict[str, float]:
        return {"n": len(self.samples), "p50_us": self.p50, "p90_us": self.p90, "p99_us": self.p99, "max_us": self.max}


def latency_row(
    label: str, timing: Timing, recall: float | None = None, *, column: str = "queries", **extra: Any
) -> dict[str, Any]:
    """A table row of ``timing`` in ms (p50, p90, p99, max), labelled in ``column``, with recall@1 if given."""
    row: dict[str, Any] = {
        column: label,
        "n": len(timing.samples),
        "p50 ms": timing.p50 / 1000,
        "p90 ms": timing.p90 / 1000,
        "p99 ms": timing.p99 / 1000,
        "max ms": timing.max / 1000,
    }
    if recall is not None:
        row["recall@1"] = recall
    row.update(extra)
    return row


def measure(operation: Callable[[int], Any], count: int, warmup: int = 0) -> Timing:
    """Time ``operation(i)`` for i in range(count) after ``warmup`` untimed calls."""
    for i in range(warmup):
        operation(i)
    samples = []
    clock = time.perf_counter_ns
    for i in range(count):
        started = clock()
        operation(i)
        samples.append((clock() - started) / 1000)
    return Timing(samples)


@dataclass
class Section:
    """One scenario's results: tables of rows plus prose, rendered into docs/benchmarks.md."""

    key: str
    title: str
    workload: str
    tables: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def table(self, caption: str, rows: list[dict[str, Any]]) -> None:
        self.tables.append((caption, rows))

    def target(self, goal: str, met: bool, measured: str) -> None:
        self.verdicts.append(f"{'met' if met else 'MISSED'}: {goal} (measured {measured})")

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "workload": self.workload,
            "tables": [{"caption": c, "rows": r} for c, r in self.tables],
            "verdicts": self.verdicts,
            "notes": self.notes,
            "seconds": self.seconds,
        }


class Server:
    """A PostgreSQL for the benchmarks: a private embedded one in a temporary directory, or ``admin_url``."""

    def __init__(self, admin_url: str | None = None, tune: bool = True) -> None:
        self._data_dir: Path | None = None
        if admin_url:
            self.admin_url = db.normalize_url(admin_url)
        else:
            self._data_dir = Path(tempfile.mkdtemp(prefix="pgcache-bench-")) / "data"
            url = embedded.start(self._data_dir)
            if tune:
                with psycopg.connect(url, autocommit=True) as conn:
                    for name, value in SERVER_SETTINGS.items():
                        conn.execute(
                            sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
                        )
                embedded.stop(self._data_dir)
                url = embedded.start(self._data_dir)
            self.admin_url = url
        self._template: str | None = None

    @property
    def data_dir(self) -> Path | None:
        return self._data_dir

    def settings(self) -> dict[str, str]:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
            vector = conn.execute(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
            ).fetchone()[0]
            shown = {
                name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0]
                for name in ("shared_buffers", "work_mem", "maintenance_work_mem", "synchronous_commit")
            }
        return {"PostgreSQL": version.split()[0], "pgvector extension": vector, **shown}

    def new_database(self) -> str:
        """A fresh database migrated to head (cloned from a template migrated once)."""
        if self._template is None:
            self._template = f"pgcache_bench_template_{uuid.uuid4().hex[:8]}"
            db.upgrade(self._create(self._template))
        return self._create(f"pgcache_bench_{uuid.uuid4().hex[:10]}", self._template)

    def _create(self, name: str, template: str | None = None) -> str:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                statement = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            conn.execute(statement)
        return _url_with_database(self.admin_url, name)

    def drop(self, url: str) -> None:
        name = psycopg.conninfo.conninfo_to_dict(db.normalize_url(url))["dbname"]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    @contextmanager
    def database(self) -> Iterator[str]:
        url = self.new_database()
        try:
            yield url
        finally:
            self.drop(url)

    def close(self) -> None:
        if self._template:
            self.drop(_url_with_database(self.admin_url, self._template))
        if self._data_dir is not None:
            embedded.stop(self._data_dir)
            shutil.rmtree(self._data_dir.parent, ignore_errors=True)


def _url_with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def connect(url: str) -> psycopg.Connection:
    conn = psycopg.connect(url, autocommit=True)
    register_vector(conn)
    return conn


@dataclass
class Scope:
    """One lookup scope: the part of the key that semantic candidates must share."""

    namespace: str
    model: str = "gpt-4o-mini"
    system: str | None = None

    def messages(self, prompt: str) -> list[dict[str, str]]:
        turns = [{"role": "system", "content": self.system}] if self.system else []
        return [*turns, {"role": "user", "content": prompt}]

    def key(self, prompt: str) -> keys.RequestKey:
        return keys.request_key(self.messages(prompt), model=self.model, namespace=self.namespace, params={})


def copy_entries(
    url: str,
    rows: Iterable[tuple[keys.RequestKey, str, str, np.ndarray | None, str | None]],
    *,
    embedder: str,
    expired: Sequence[bool] | None = None,
) -> int:
    """Load entries with binary COPY: ``(key, namespace, answer, vector, model)`` tuples.

    This is the benchmarks' own fast loader for large tables; pgcache's write path is measured
    separately (the warm scenario).
    """
    count = 0
    with (
        connect(url) as conn,
        conn.cursor() as cur,
        cur.copy(
            "COPY pgcache_entries (namespace, exact_key, scope_key, model, embedder, prompt, request, response,"
            " embedding, source, expires_at) FROM STDIN WITH (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(
            ["text", "bytea", "bytea", "text", "text", "text", "jsonb", "jsonb", "halfvec", "text", "timestamptz"]
        )
        past = datetime.now(UTC) - timedelta(hours=1)
        for i, (key, namespace, answer, vector, model) in enumerate(rows):
            response = {
                "id": f"chatcmpl-bench-{i}",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            }
            copy.write_row(
                (
                    namespace,
                    key.exact_key,
                    key.scope_key,
                    model,
                    embedder if vector is not None else None,
                    key.prompt,
                    Jsonb(key.request),
                    Jsonb(response),
                    None if vector is None else HalfVector(vector),
                    "warm",
                    past if expired is not None and expired[i] else None,
                )
            )
            count += 1
    return count


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for package in ("pgcache", "psycopg", "pgvector", "numpy", "openai", "redis", "gptcache", "faiss-cpu"):
        try:
            versions[f"{package} (Python)" if package == "pgvector" else package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[f"{package} (Python)" if package == "pgvector" else package] = "not installed"
    redis = shutil.which("redis-server")
    redis_version = ""
    if redis:
        out = subprocess.run([redis, "--version"], capture_output=True, text=True).stdout
        redis_version = next((part[2:] for part in out.split() if part.startswith("v=")), out.strip())
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis-server": redis_version or "not installed",
        **{f"{name}": version for name, version in versions.items()},
    }
