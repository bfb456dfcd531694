"""The ledger loses nothing: rows recorded while the database is down wait in a spool (memory and a
file) and are written, each exactly once, when it is back; a clean exit leaves them for the next
process; a crash loses at most its last second; a full spool drops and counts."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from pgcache import Cache, db, embedded
from pgcache.embedders import OpenAIEmbedder
from pgcache.ledger import LookupRecord

from .conftest import PGCACHE_SCRIPT, TEST_API_KEY, query

OUTAGE_SECONDS = 30


def spool_files(directory) -> list:
    return sorted(directory.glob("*/ledger-*.jsonl"))  # one folder per database


def rows_with(url: str, ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple]:
    found = query(url, "SELECT id, outcome, error, llm_ms FROM pgcache_lookups WHERE id = ANY(%s)", (ids,))
    return {row[0]: row[1:] for row in found}


@pytest.fixture
def server(tmp_path):
    """An embedded server of this test's own, so that it can be stopped."""
    data_dir = tmp_path / "pg"
    url = embedded.start(data_dir)
    db.upgrade(url)
    yield data_dir, url
    embedded.stop(data_dir)


@pytest.mark.slow
def test_a_30_second_outage_under_load_is_in_the_ledger_exactly_once(server, tmp_path, llm, fake):
    data_dir, url = server
    spool = tmp_path / "spool"
    cache = Cache(url, embedder=OpenAIEmbedder(client=llm), llm=llm, ledger_spool_dir=spool)
    results: list[tuple[str, float, object]] = []
    errors: list[BaseException] = []
    phase = {"name": "before"}
    stop = threading.Event()

    def caller(worker: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            prompt = f"question {n % 25} from worker {worker}"  # repeats: exact hits when the cache is up
            started_in = phase["name"]  # the phase the call began in
            try:
                result = cache.query(prompt)
                results.append((started_in, time.time(), result))
            except BaseException as exc:  # any error reaching the application fails the test
                errors.append(exc)
            time.sleep(0.02)

    threads = [threading.Thread(target=caller, args=(w,)) for w in range(4)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(2)
        phase["name"] = "stopping"
        embedded.stop(data_dir)
        phase["name"] = "down"  # from here until the server is started again, nothing can hit
        time.sleep(OUTAGE_SECONDS)
        phase["name"] = "starting"
        embedded.start(data_dir)
        phase["name"] = "back"
        time.sleep(4)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    deadline = time.monotonic() + 45  # the breaker's next probe comes at most 30 s after the last
    while len(cache.ledger.spool) and time.monotonic() < deadline:
        cache.flush()
        time.sleep(0.2)
    cache.close()

    assert errors == []
    down = [result for name, _, result in results if name == "down"]
    assert len(down) > 100, "the outage saw traffic"
    assert {result.status for result in down} == {"miss"}
    ids = [result.lookup_id for _, _, result in results]
    assert len(ids) == len(set(ids))
    ledger = rows_with(url, ids)
    assert set(ledger) == set(ids), f"{len(set(ids) - set(ledger))} lookups missing from the ledger"
    assert query(url, "SELECT count(*) FROM pgcache_lookups") == [(len(ids),)], "each exactly once"
    # The outage as misses the LLM served, with why the cache could not answer.
    for result in down:
        outcome, error, llm_ms = ledger[result.lookup_id]
        assert outcome == "miss" and error.startswith("database") and llm_ms is not None, (outcome, error)
    assert cache.ledger.dropped == 0 and spool_files(spool) == []
    print(f"\n  outage: {len(ids)} lookups, {len(down)} while the database was down, all {len(ledger)} in the ledger")
    # `pgcache report`: the outage among the misses (and, with its reason, among the errors).
    with Cache(url, embedder=OpenAIEmbedder(client=llm), llm=llm) as reader:
        totals = reader.report()["totals"]
    misses = sum(1 for _, _, result in results if result.status == "miss")
    assert totals["misses"] == misses and totals["errors"] >= len(down)
    report = subprocess.run(
        [PGCACHE_SCRIPT, "report", "--database-url", url], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(rf"misses\s*\S*\s*{misses}\b", report), report


def test_each_database_has_its_own_spool_folder(tmp_path):
    def folder(url):
        return Cache(url, embedder=OpenAIEmbedder(client=None), ledger_spool_dir=tmp_path).ledger.spool.directory

    first = folder("postgresql://app:s3cret@db-one/cache")
    assert first.parent == tmp_path
    assert folder("postgresql://app:rotated@db-one/cache") == first, "a new password, the same database"
    assert folder("postgresql://app:s3cret@db-two/cache") != first
    assert folder("postgresql://app:s3cret@db-one/other") != first
    assert "s3cret" not in str(first)


def test_a_batch_written_twice_counts_once(database_url, llm, fake):
    with Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm) as cache:
        cache.query("What is SQL injection?")
        hit = cache.query("What is SQL injection?")
        cache.flush()
    record = LookupRecord.start("gpt-4o-mini", "default")
    record.outcome, record.entry_id = "exact", hit.entry_id
    with Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm) as cache:
        before = query(database_url, "SELECT hit_count FROM pgcache_entries WHERE id = %s", (hit.entry_id,))[0][0]
        cache.ledger._store([record])
        cache.ledger._store([record])  # its commit lost in an outage, then replayed
    assert query(database_url, "SELECT count(*) FROM pgcache_lookups WHERE id = %s", (record.id,)) == [(1,)]
    assert query(database_url, "SELECT hit_count FROM pgcache_entries WHERE id = %s", (hit.entry_id,)) == [
        (before + 1,)
    ]


def test_a_batch_the_database_refuses_is_dropped_and_counted_not_retried(database_url, llm, fake, caplog):
    refused = LookupRecord.start("gpt-4o-mini", "default")
    refused.outcome = "not an outcome"  # the table's check constraint refuses it
    with (
        caplog.at_level(logging.WARNING, logger="pgcache"),
        Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm) as cache,
    ):
        cache.ledger.record(refused)
        cache.flush()
        later = cache.query("What is SQL injection?")
        cache.flush()
        assert cache.ledger.dropped == 1 and len(cache.ledger.spool) == 0
    assert any("refused by the database" in r.getMessage() for r in caplog.records)
    assert set(rows_with(database_url, [refused.id, later.lookup_id])) == {later.lookup_id}


def test_a_clean_exit_leaves_the_spool_for_the_next_process(server, tmp_path, llm, fake):
    data_dir, url = server
    spool = tmp_path / "spool"
    embedded.stop(data_dir)
    with Cache(url, embedder=OpenAIEmbedder(client=llm), llm=llm, ledger_spool_dir=spool) as cache:
        answers = [cache.query(f"asked while down {i}") for i in range(10)]
    assert [a.status for a in answers] == ["miss"] * 10
    assert len(spool_files(spool)) == 1, "flushed to its file on close"
    embedded.start(data_dir)
    with Cache(url, embedder=OpenAIEmbedder(client=llm), llm=llm, ledger_spool_dir=spool) as cache:
        cache.lookup("anything")  # the ledger writer starts, adopts the file and writes it
        cache.flush()
    assert set(rows_with(url, [a.lookup_id for a in answers])) == {a.lookup_id for a in answers}
    assert spool_files(spool) == []


CRASHER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[3])
    import openai
    from tests.fake_openai import FakeOpenAI
    from pgcache import Cache
    from pgcache.embedders import OpenAIEmbedder

    fake = FakeOpenAI().start()
    llm = openai.OpenAI(base_url=fake.base_url, api_key=sys.argv[4], max_retries=0)
    cache = Cache(sys.argv[1], embedder=OpenAIEmbedder(client=llm), llm=llm, ledger_spool_dir=sys.argv[2])
    i = 0
    while True:
        result = cache.query(f"crash question {i}")
        print(result.lookup_id, time.time(), flush=True)
        i += 1
        time.sleep(0.01)
    """
)


@pytest.mark.slow
def test_a_crash_loses_at_most_the_last_second(server, tmp_path, llm, fake):
    data_dir, url = server
    spool = tmp_path / "spool"
    embedded.stop(data_dir)
    repo = str(os.path.dirname(os.path.dirname(__file__)))
    process = subprocess.Popen(
        [sys.executable, "-c", CRASHER, url, str(spool), repo, TEST_API_KEY], stdout=subprocess.PIPE, text=True
    )
    time.sleep(4)
    process.send_signal(signal.SIGKILL)
    killed_at = time.time()
    output = process.communicate()[0]
    seen = [(uuid.UUID(line.split()[0]), float(line.split()[1])) for line in output.splitlines() if line.strip()]
    assert len(seen) > 50
    embedded.start(data_dir)
    with Cache(url, embedder=OpenAIEmbedder(client=llm), llm=llm, ledger_spool_dir=spool) as cache:
        cache.lookup("anything")
        cache.flush()
    ledger = rows_with(url, [lookup_id for lookup_id, _ in seen])
    older = [lookup_id for lookup_id, at in seen if at <= killed_at - 1.0]
    assert older and set(older) <= set(ledger), f"{len(set(older) - set(ledger))} rows older than a second lost"
    print(f"\n  crash: {len(seen)} lookups, {len(ledger)} in the ledger, {len(seen) - len(ledger)} lost")


def test_a_full_spool_drops_and_counts(server, tmp_path, llm, fake, caplog):
    data_dir, url = server
    embedded.stop(data_dir)
    options = {"ledger_spool_dir": tmp_path / "spool", "ledger_spool_rows": 20}
    with (
        caplog.at_level(logging.WARNING, logger="pgcache"),
        Cache(url, embedder=OpenAIEmbedder(client=llm), llm=llm, **options) as cache,
    ):
        for i in range(60):
            cache.lookup(f"question {i}")
            if i % 10 == 9:
                cache.flush()
        assert len(cache.ledger.spool) <= 20
        assert cache.ledger.dropped == 60 - len(cache.ledger.spool)
        assert any("ledger spool full" in r.getMessage() for r in caplog.records)
        embedded.start(data_dir)
        deadline = time.monotonic() + 20
        while len(cache.ledger.spool) and time.monotonic() < deadline:
            cache.flush()
            time.sleep(0.2)
        kept = 60 - cache.ledger.dropped
    assert query(url, "SELECT count(*) FROM pgcache_lookups") == [(kept,)]
