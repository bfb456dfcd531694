"""Concurrency soak: chat, warm, sweep, invalidate and reindex at once on one database.

Worker threads share one application cache (chat) and one operations cache
(warm, sweep, invalidate, reindex), as an application and its cron jobs would.
Answers and embeddings come from the test suite's fake OpenAI-compatible server
(tests/fake_openai.py) on 127.0.0.1, started here, through the real ``openai``
SDK. Its answers end with ``to: <the last message>``, as the warmed and
preloaded answers here do, so that every stored answer can be matched to its
prompt. The first namespace starts with ``--preload`` entries that never
expire, so that lookups outgrow exact search and reindex trains real ivfflat
lists. Without ``--database-url`` a private embedded PostgreSQL is started in a
temporary directory and removed afterwards; with one (a scratch database:
sweeps and reindexes act on the whole table), the run keeps its entries to
namespaces of its own and deletes them and their ledger rows at the end.

After the run the database is checked, and the exit status is 1 unless every
kind of operation ran and each of these is zero: errors, deadlocks, duplicate
exact keys, stored answers that cannot be read back, lookups missing from the
ledger, LLM calls other than one per miss, invalid indexes. Usage and
connection errors exit with status 2.

Example (from the repository root):

    .venv/bin/python scripts/soak.py --seconds 60 --workers 8
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import openai
import psycopg
import pydantic
from openai.types.chat import ChatCompletion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's pgcache and tests.fake_openai

from pgcache import Cache, PgcacheError, db, embedded
from pgcache.embedders import OpenAIEmbedder
from pgcache.warm import WarmItem, warm
from tests.fake_openai import FakeOpenAI

KINDS = ("chat", "warm", "sweep", "invalidate", "reindex")
WEIGHTS = (80, 6, 6, 5, 3)
FEATURES = 40
"""Distinct topics of chat prompts; paraphrases of one topic embed close together."""
TOPIC = re.compile(r"feature \d+")
"""What makes texts one topic for the fake server: "feature 1" and "feature 10" are two."""
NAMESPACES = 4
READBACK_SAMPLE = 300
DEADLOCK = "40P01"


# -- the workers ------------------------------------------------------------------


@dataclass
class Tally:
    """What the workers did, updated under ``lock``."""

    ops: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)
    seconds: Counter = field(default_factory=Counter)
    slowest: Counter = field(default_factory=Counter)
    detail: Counter = field(default_factory=Counter)
    deadlocks_raised: int = 0
    messages: list[str] = field(default_factory=list)
    """The first few errors of each kind."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def took(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.seconds[kind] += seconds
            self.slowest[kind] = max(self.slowest[kind], seconds)

    def done(self, kind: str, **detail: int) -> None:
        with self.lock:
            self.ops[kind] += 1
            for name, count in detail.items():
                self.detail[f"{kind} {name}"] += count

    def failed(self, kind: str, error: BaseException | str) -> None:
        with self.lock:
            self.errors[kind] += 1
            if not isinstance(error, str) and _sqlstate(error) == DEADLOCK:
                self.deadlocks_raised += 1
            if sum(m.startswith(f"{kind}:") for m in self.messages) < 3:
                text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
                self.messages.append(f"{kind}: {' '.join(text.split())[:300]}")


def _sqlstate(error: BaseException | None) -> str | None:
    """The SQLSTATE of the first PostgreSQL error in the chain of causes."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, psycopg.Error) and error.sqlstate:
            return error.sqlstate
        error = error.__cause__ or error.__context__
    return None


class Workers:
    """Threads drawing operations by weight; each one first runs every kind once, so all kinds run."""

    def __init__(self, app: Cache, ops: Cache, namespaces: list[str], count: int, seed: int) -> None:
        self.app, self.ops, self.namespaces = app, ops, namespaces
        self.tally = Tally()
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(n, random.Random(seed + n)), name=f"soak-{n}", daemon=True)
            for n in range(count)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float) -> list[str]:
        """Stop and join the workers; return the names of any still running after ``timeout``."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread.name for thread in self.threads if thread.is_alive()]

    def _run(self, worker: int, rng: random.Random) -> None:
        first = list(KINDS[worker % len(KINDS) :] + KINDS[: worker % len(KINDS)])
        operations = {
            "chat": self.chat,
            "warm": self.warm,
            "sweep": self.sweep,
            "invalidate": self.invalidate,
            "reindex": self.reindex,
        }
        number = 0
        while not self.stopping.is_set():
            kind = first.pop(0) if first else rng.choices(KINDS, WEIGHTS)[0]
            started = time.perf_counter()
            try:
                operations[kind](worker, number, rng)
            except Exception as exc:  # counted and shown in the summary; the soak goes on
                self.tally.failed(kind, exc)
            self.tally.took(kind, time.perf_counter() - started)
            number += 1

    def chat(self, worker: int, number: int, rng: random.Random) -> None:
        namespace = rng.choice(self.namespaces)
        feature = rng.randrange(FEATURES)
        roll = rng.random()
        if roll < 0.45:
            prompt = f"How do I configure feature {feature}?"
        elif roll < 0.7:
            prompt = f"Could you explain how feature {feature} gets configured? (worker {worker}, take {number})"
        else:
            prompt = f"Question {worker}-{number}: what happens to order {rng.randrange(10**6)} after a refund?"
        ttl = rng.choice((1, 2, 3)) if rng.random() < 0.2 else None
        extra = {} if ttl is None else {"ttl": ttl}
        result = self.app.chat(
            [{"role": "user", "content": prompt}],
            namespace=namespace,
            tags=[f"t{rng.randrange(3)}"],
            temperature=0,
            **extra,
        )
        if result.status in ("exact", "miss") and not result.content.endswith(f"to: {prompt}"):
            self.tally.failed("chat", f"{result.status} answer {result.content!r} is not for {prompt!r}")
            return
        self.tally.done("chat", **{result.status: 1})

    def warm(self, worker: int, number: int, rng: random.Random) -> None:
        namespace = rng.choice(self.namespaces)
        ttl = rng.choice((2, 4)) if rng.random() < 0.5 else None
        start = rng.randrange(0, 400, 20)
        prompts = [f"FAQ {k}: how do I switch on feature {k % FEATURES} for my team?" for k in range(start, start + 40)]
        if rng.random() < 0.5:
            items = [
                WarmItem(line=i + 1, prompt=p, response=f"warm answer to: {p}", namespace=namespace, ttl=ttl)
                for i, p in enumerate(prompts)
            ]
            result = warm(self.ops, Path(f"soak-{worker}.tsv"), items, tags=("faq",), batch_size=20, concurrency=1)
            if result.failed:
                raise RuntimeError(f"warm failed for {result.failed} items: {result.errors[:2]}")
            self.tally.done("warm", added=result.added, present=result.present)
        else:
            extra = {} if ttl is None else {"ttl": ttl}
            ids = self.ops.store_many(
                [(p, f"warm answer to: {p}") for p in prompts],
                namespace=namespace,
                tags=["faq", f"batch-{start}"],
                **extra,
            )
            self.tally.done("warm", added=len(ids))

    def sweep(self, worker: int, number: int, rng: random.Random) -> None:
        result = self.ops.sweep(batch_size=rng.choice((50, 200, 1000)))
        self.tally.done("sweep", skipped=int(result.skipped), deleted=result.expired)

    def invalidate(self, worker: int, number: int, rng: random.Random) -> None:
        namespace = rng.choice(self.namespaces)
        roll = rng.random()
        if roll < 0.5:
            deleted = self.ops.invalidate(namespace=namespace, tags=[f"t{rng.randrange(3)}"])
        elif roll < 0.8:
            deleted = self.ops.invalidate(namespace=namespace, tags=["faq", f"batch-{rng.randrange(0, 400, 20)}"])
        elif roll < 0.95:
            prompt = f"How do I configure feature {rng.randrange(FEATURES)}?"
            deleted = self.ops.invalidate(namespace=namespace, prompt=prompt)
        elif namespace != self.namespaces[0]:  # the first one keeps its preloaded entries
            deleted = self.ops.invalidate(namespace=namespace, all=True, yes=True)
        else:
            deleted = self.ops.invalidate(namespace=namespace, tags=["t0"])
        self.tally.done("invalidate", deleted=deleted)

    def reindex(self, worker: int, number: int, rng: random.Random) -> None:
        result = self.ops.reindex()
        with self.tally.lock:
            self.tally.detail["reindex lists"] = result.after.lists
        self.tally.done("reindex")


# -- checks ---------------------------------------------------------------------------


def sql(url: str, statement: str, params=()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def deadlocks(url: str) -> int:
    """Deadlocks PostgreSQL has detected in this database since its statistics were reset."""
    return sql(url, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")[0][0]


def wait_for_sessions_to_end(url: str, timeout: float = 10.0) -> None:
    """Wait (boundedly) until pgcache's sessions have exited, which is when they publish their statistics."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = sql(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'pgcache'",
        )[0][0]
        if left == 0:
            return
        time.sleep(0.1)


def unreadable_answers(
    url: str, check: Cache, namespaces: list[str], sample: int, rng: random.Random
) -> tuple[int, int, list[str]]:
    """Stored answers that do not parse, do not answer their prompt, or do not come back through the cache.

    Every live entry's response must parse as a ``ChatCompletion`` whose text
    answers its prompt; a random sample is also looked up through the cache by
    its stored request and must come back as an exact hit with the same text.
    Entries about to expire are left out. Returns (bad, rows checked, examples).
    """
    rows = sql(
        url,
        """
        SELECT id, namespace, prompt, request, response FROM pgcache_entries
        WHERE namespace = ANY(%s) AND (expires_at IS NULL OR expires_at > now() + interval '1 minute')""",
        (namespaces,),
    )
    bad: list[str] = []
    for entry_id, _, prompt, _, response in rows:
        try:
            content = ChatCompletion.model_validate(response).choices[0].message.content
        except (pydantic.ValidationError, IndexError) as exc:  # not a completion, or one without choices
            bad.append(f"#{entry_id}: response does not parse: {exc}")
            continue
        if not content or not content.endswith(f"to: {prompt}"):
            bad.append(f"#{entry_id}: {content!r} is not an answer to {prompt!r}")
    for entry_id, namespace, _, request, response in rng.sample(rows, min(sample, len(rows))):
        hit = check.lookup(request["messages"], request["model"], namespace=namespace, **request.get("params", {}))
        expected = response["choices"][0]["message"]["content"]
        if hit is None or hit.status != "exact" or hit.entry_id != entry_id or hit.content != expected:
            found = None if hit is None else (hit.status, hit.entry_id, hit.content)
            bad.append(f"#{entry_id}: looked up by its request, got {found!r}")
    return len(bad), len(rows), bad[:5]


# -- the run --------------------------------------------------------------------------


class WarningCount(logging.Handler):
    """Counts pgcache's warnings (the ledger writer reports failed writes only this way)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def preload(cache: Cache, namespace: str, count: int) -> None:
    """Entries that never expire, so that the table outgrows exact search and reindex trains real lists."""
    for start in range(0, count, 500):
        prompts = [
            f"Reference {k}: what is the policy for feature {k % FEATURES} in region {k // FEATURES}?"
            for k in range(start, min(count, start + 500))
        ]
        cache.store_many([(p, f"reference answer to: {p}") for p in prompts], namespace=namespace, tags=["reference"])


def soak(
    url: str, namespaces: list[str], seconds: float, workers: int, progress_every: float, seed: int, preloaded: int
) -> int:
    """Run the workers for ``seconds``, check the database, print the summary; return the exit status."""
    warnings_seen = WarningCount()
    logging.getLogger("pgcache").addHandler(warnings_seen)
    with FakeOpenAI(record=False) as llm_server:
        llm_server.topics = [TOPIC]
        llm = openai.OpenAI(base_url=llm_server.base_url, api_key="sk-soak-not-a-real-key", max_retries=0)
        embedder = OpenAIEmbedder(client=llm)
        # fail_open=False: a database error is an error of the operation here, not a quiet miss.
        app = Cache(url, embedder=embedder, llm=llm, fail_open=False, pool_size=workers + 2)
        ops = Cache(url, embedder=embedder, llm=llm, fail_open=False, pool_size=workers + 2)
        preload(ops, namespaces[0], preloaded)
        deadlocks_before = deadlocks(url)
        crew = Workers(app, ops, namespaces, workers, seed)
        started = time.monotonic()
        crew.start()
        try:
            while (left := started + seconds - time.monotonic()) > 0:
                time.sleep(min(progress_every, left))
                print(f"[{time.monotonic() - started:5.1f}s] {_line(crew.tally)}", flush=True)
        finally:
            stuck = crew.stop(timeout=120)
        elapsed = time.monotonic() - started
        for name in stuck:
            crew.tally.failed("run", f"{name} still running 120 s after the end")
        app.flush()
        ops.flush()
        tally = crew.tally
        ledger_rows = sql(url, "SELECT count(*) FROM pgcache_lookups WHERE namespace = ANY(%s)", (namespaces,))[0][0]
        app.close()
        ops.close()

        duplicates = sql(
            url,
            "SELECT count(*) FROM (SELECT exact_key FROM pgcache_entries GROUP BY exact_key HAVING count(*) > 1) AS d",
        )[0][0]
        invalid_indexes = sql(
            url,
            """
            SELECT count(*) FROM pg_index AS i JOIN pg_class AS t ON t.oid = i.indrelid
            WHERE t.relname = 'pgcache_entries' AND NOT (i.indisvalid AND i.indisready)""",
        )[0][0]
        with Cache(url, embedder=embedder, llm=llm, fail_open=False) as check:
            unreadable, checked, examples = unreadable_answers(
                url, check, namespaces, READBACK_SAMPLE, random.Random(seed)
            )
            check.flush()
        wait_for_sessions_to_end(url)
        deadlocks_seen = deadlocks(url) - deadlocks_before
    logging.getLogger("pgcache").removeHandler(warnings_seen)

    chats = tally.ops["chat"]
    llm_calls = llm_server.calls["chat"]
    required = {
        "errors": sum(tally.errors.values()),
        "deadlocks": max(deadlocks_seen, tally.deadlocks_raised),
        "duplicate exact keys": duplicates,
        "unreadable answers": unreadable,
        "lookups missing from the ledger": abs(chats - ledger_rows),
        "LLM calls other than misses": abs(llm_calls - tally.detail["chat miss"]),
        "invalid indexes": invalid_indexes,
    }
    idle = [kind for kind in KINDS if tally.ops[kind] == 0]
    print(
        f"\nsummary: {elapsed:.1f} s, {workers} workers, {len(namespaces)} namespaces "
        f"({preloaded} entries preloaded), database {db.redact(url)}"
    )
    details = {
        "chat": "exact {chat exact}, semantic {chat semantic}, miss {chat miss}",
        "warm": "{warm added} entries added, {warm present} already present",
        "sweep": "{sweep deleted} expired entries deleted, {sweep skipped} skipped (another sweep running)",
        "invalidate": "{invalidate deleted} entries deleted",
        "reindex": "last trained for {reindex lists} lists",
    }
    for kind in KINDS:
        text = details[kind].format_map(tally.detail)
        runs = tally.ops[kind] + tally.errors[kind]
        mean, slowest = (1000 * tally.seconds[kind] / runs, 1000 * tally.slowest[kind]) if runs else (0, 0)
        timing = f"{mean:6.0f} ms mean {slowest:6.0f} ms max"
        print(f"  {kind:<11} {tally.ops[kind]:>7} ops  {tally.errors[kind]:>3} errors  {timing}  {text}".rstrip())
    notes = {
        "deadlocks": f"(raised {tally.deadlocks_raised}, pg_stat_database.deadlocks +{deadlocks_seen})",
        "unreadable answers": f"({checked} live entries parsed, {min(READBACK_SAMPLE, checked)} looked up by request)",
        "lookups missing from the ledger": f"({ledger_rows} ledger rows for {chats} chat calls)",
        "LLM calls other than misses": f"({llm_calls} LLM calls for {tally.detail['chat miss']} misses)",
    }
    for name, value in required.items():
        print(f"  {name:<32} {value:>5}  {notes.get(name, '')}".rstrip())
    if warnings_seen.messages:
        print(f"  pgcache warnings logged: {len(warnings_seen.messages)}")
    for message in tally.messages + examples + warnings_seen.messages[:5]:
        print(f"    {message}")
    failures = [name for name, value in required.items() if value] + [f"no {kind} ran" for kind in idle]
    print("FAILED: " + ", ".join(failures) if failures else "OK")
    return 1 if failures else 0


def _line(tally: Tally) -> str:
    with tally.lock:
        ops = "  ".join(f"{kind} {tally.ops[kind]}" for kind in KINDS)
        return f"{ops}  errors {sum(tally.errors.values())}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the workers run (default 60)")
    parser.add_argument("--workers", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument(
        "--database-url",
        help="a migrated scratch database: its sweeps and reindexes act on the "
        "whole table (default: a private embedded server in a temporary "
        "directory)",
    )
    parser.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines (default 5)")
    parser.add_argument(
        "--preload", type=int, default=3000, help="entries stored before the workers start (default 3000)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the workers' random choices (default 1)")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.workers < 1 or args.progress_every <= 0 or args.preload < 0:
        parser.error("--seconds and --progress-every must be positive, --workers at least 1, --preload at least 0")
    try:
        return _main(args)
    except PgcacheError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    run = uuid.uuid4().hex[:8]
    namespaces = [f"soak-{run}-{n}" for n in range(NAMESPACES)]
    options = (args.seconds, args.workers, args.progress_every, args.seed, args.preload)
    if args.database_url:
        url = db.normalize_url(args.database_url)
        db.check_schema(url)
        try:
            return soak(url, namespaces, *options)
        finally:
            # Leave an existing database as it was found: the run's entries and ledger rows go.
            sql(url, "DELETE FROM pgcache_entries WHERE namespace = ANY(%s)", (namespaces,))
            sql(url, "DELETE FROM pgcache_lookups WHERE namespace = ANY(%s)", (namespaces,))
    home = Path(tempfile.mkdtemp(prefix="pgcache-soak-"))
    try:
        url = embedded.start(home / "data")
        db.upgrade(url)
        print(f"embedded PostgreSQL in {home}", flush=True)
        return soak(url, namespaces, *options)
    finally:
        embedded.stop(home / "data")
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
