"""Schema upgrades under traffic: every migration of the chain applied with `pgcache db upgrade` while
8 workers look entries up (exact and semantic) and store new ones and their ledger rows.

The workers run the SQL every version of pgcache ran (tests/old_schema.py), with pgcache's 2 s
statement timeout, as an application of the previous version would while its schema is upgraded.
No request may fail, every stored row must be there afterwards, and the longest lookup while the
migration ran is measured: migrations wait at most ``db.LOCK_TIMEOUT_MS`` for a lock, so no
lookup waits longer than that behind one.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psycopg
import pytest

from pgcache import db

from . import old_schema
from .conftest import query

pytestmark = pytest.mark.slow

WORKERS = 8
ENTRIES = 300
rng = np.random.default_rng(17)
VECTORS = rng.standard_normal((ENTRIES, 1536)).astype(np.float32)
VECTORS /= np.linalg.norm(VECTORS, axis=1, keepdims=True)
STATEMENT_TIMEOUT = "-c statement_timeout=2000"  # pgcache's default


@dataclass
class Load:
    """What the workers did: each lookup's (start, seconds), the rows they stored, their errors."""

    lookups: list[tuple[float, float]] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    ledger_rows: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def longest_lookup(self, start: float, end: float) -> float:
        """The longest lookup that ran at any time between ``start`` and ``end``."""
        return max((seconds for began, seconds in self.lookups if began <= end and began + seconds >= start), default=0)


def work(url: str, worker: int, stop: threading.Event, load: Load) -> None:
    pick = np.random.default_rng(worker)
    with psycopg.connect(url, autocommit=True, options=STATEMENT_TIMEOUT) as conn:
        entry_columns = old_schema.columns(conn, "pgcache_entries")
        ledger_columns = old_schema.columns(conn, "pgcache_lookups")
        n = 0
        while not stop.is_set():
            n += 1
            i = int(pick.integers(ENTRIES))
            try:
                began = time.perf_counter()
                if n % 2:
                    found = old_schema.find_exact(conn, f"question {i}")
                else:
                    found = old_schema.find_nearest(conn, VECTORS[i])
                seconds = time.perf_counter() - began
                assert found is not None, "every looked-up entry is stored"
                with load.lock:
                    load.lookups.append((began, seconds))
                if n % 5 == 0:
                    prompt = f"new question {worker}-{n}"
                    vector = VECTORS[i]
                    entry_id = old_schema.insert_entry(conn, prompt, f"answer {worker}-{n}", vector, entry_columns)
                    old_schema.insert_lookup(conn, prompt, "miss", None, old_schema.now(), ledger_columns)
                    with load.lock:
                        load.stored.append(prompt)
                        load.ledger_rows += 1
                    assert entry_id > 0
            except Exception as exc:  # any failure of a request is what the test counts
                with load.lock:
                    load.errors.append(f"{type(exc).__name__}: {exc}")


def populate(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        have = old_schema.columns(conn, "pgcache_entries")
        for i in range(ENTRIES):
            old_schema.insert_entry(conn, f"question {i}", f"answer {i}", VECTORS[i], have)


def upgrade_under_load(url: str, target: str) -> tuple[Load, float, float]:
    """``target`` applied while the workers run; the load, and when the upgrade started and ended."""
    load, stop = Load(), threading.Event()
    threads = [threading.Thread(target=work, args=(url, n, stop, load)) for n in range(WORKERS)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    started = time.perf_counter()
    db.upgrade(url, target)
    ended = time.perf_counter()
    time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join()
    return load, started, ended


@pytest.mark.parametrize("target", old_schema.chain()[1:])
def test_each_migration_under_load_fails_nothing_and_loses_nothing(target, empty_database_url, capsys):
    url = empty_database_url
    chain = old_schema.chain()
    db.upgrade(url, chain[chain.index(target) - 1])
    populate(url)
    load, started, ended = upgrade_under_load(url, target)
    assert db.current_revision(url) == target
    assert load.errors == []
    during = [seconds for began, seconds in load.lookups if started <= began <= ended]
    longest = load.longest_lookup(started, ended)
    with capsys.disabled():
        print(
            f"\n  migration {target}: {ended - started:.2f} s under load, {len(during)} lookups began meanwhile, "
            f"the longest lookup overlapping it took {longest * 1000:.0f} ms"
        )
    assert during, "lookups went on while the migration ran"
    assert longest < db.LOCK_TIMEOUT_MS / 1000 + 0.5
    new = "SELECT prompt FROM pgcache_entries WHERE starts_with(prompt, 'new question ')"
    stored = {row[0] for row in query(url, new)}
    assert stored == set(load.stored) and len(stored) > 0
    assert query(url, "SELECT count(*) FROM pgcache_lookups") == [(load.ledger_rows,)]


def test_a_migration_that_cannot_take_its_lock_steps_back_and_tries_again(database_url, caplog):
    """A transaction holds pgcache_entries for 2.5 s: the migration that needs it gives up after
    LOCK_TIMEOUT_MS each time, lookups are not queued behind it, and it succeeds once the lock is free."""
    url = database_url
    db.downgrade(url, "0009")  # 0010 rewrites pgcache_entries: it needs the table to itself
    populate(url)
    holder = psycopg.connect(url)
    holder.execute("SELECT count(*) FROM pgcache_entries")  # ACCESS SHARE until the transaction ends
    release = threading.Timer(2.5, holder.rollback)
    release.start()
    waits: list[float] = []

    def look_up() -> None:
        with psycopg.connect(url, autocommit=True, options=STATEMENT_TIMEOUT) as conn:
            deadline = time.monotonic() + 2.5
            while time.monotonic() < deadline:
                began = time.perf_counter()
                assert old_schema.find_exact(conn, "question 7") is not None
                waits.append(time.perf_counter() - began)
                time.sleep(0.01)

    reader = threading.Thread(target=look_up)
    try:
        with caplog.at_level(logging.WARNING, logger="pgcache"):
            reader.start()
            db.upgrade(url)
    finally:
        reader.join()
        release.join()
        holder.close()
    assert db.current_revision(url) == db.head_revision()
    retries = [r for r in caplog.records if "waited 1000 ms for a lock" in r.getMessage()]
    assert retries, "the first attempt gave up and was retried"
    assert max(waits) < db.LOCK_TIMEOUT_MS / 1000 + 0.5, max(waits)


def test_two_processes_upgrading_at_once_both_succeed(empty_database_url):
    command = [str(Path(sys.executable).with_name("pgcache")), "db", "upgrade", "--database-url", empty_database_url]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert db.current_revision(empty_database_url) == db.head_revision()
