"""Single-flight: concurrent identical misses make one upstream call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from pgcache import Cache
from pgcache.embedders import OpenAIEmbedder

from .conftest import TEST_API_KEY, query

WORKER = Path(__file__).with_name("single_flight_worker.py")


def test_fifty_threads_one_upstream_call(database_url, llm, fake):
    fake.chat_delay = 0.5
    cache = Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm)
    barrier = threading.Barrier(50)
    results, errors = [], []

    def ask():
        try:
            barrier.wait()
            results.append(cache.query("What is SQL injection?"))
        except Exception as exc:  # a thread's exception would not fail the test: collected, asserted absent below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cache.close()
    assert errors == []
    assert fake.calls["chat"] == 1
    assert len({r.content for r in results}) == 1 and len(results) == 50
    assert sorted(r.status for r in results).count("miss") == 1
    assert query(database_url, "SELECT count(*) FROM pgcache_inflight")[0][0] == 0, "the lease is released"


@pytest.mark.slow
def test_fifty_processes_one_upstream_call(database_url, fake, tmp_path):
    fake.chat_delay = 1.0
    go = tmp_path / "go"
    env = {
        **os.environ,
        "PGCACHE_DATABASE_URL": database_url,
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": TEST_API_KEY,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    # Fifty processes forked from one that imported pgcache (tests/single_flight_worker.py).
    launcher = subprocess.Popen(
        [sys.executable, str(WORKER), str(go), "50"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    ready = 0
    deadline = time.monotonic() + 240
    while ready < 50 and time.monotonic() < deadline and launcher.poll() is None:
        ready = len(list(tmp_path.glob("ready-*")))
        time.sleep(0.1)
    go.touch()
    _, errors = launcher.communicate(timeout=240)
    assert launcher.returncode == 0, errors[-2000:]
    answers = [json.loads(path.read_text()) for path in tmp_path.glob("answer-*.json")]
    assert len(answers) == 50
    assert fake.calls["chat"] == 1
    assert len({a["content"] for a in answers}) == 1
    assert [a["status"] for a in answers].count("miss") == 1


def test_a_failed_leader_lets_a_waiter_take_over(database_url, llm, fake):
    cache = Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm)
    fake.fail_chat = 500
    with pytest.raises(openai.InternalServerError):
        cache.query("What is SQL injection?")
    fake.fail_chat = None
    assert query(database_url, "SELECT count(*) FROM pgcache_inflight")[0][0] == 0
    assert cache.query("What is SQL injection?").status == "miss"
    cache.close()


def test_waiters_give_up_after_the_bound(database_url, llm, fake):
    """A lease held by a vanished process: the waiter asks the LLM itself after single_flight_wait."""
    cache = Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm, single_flight_wait=0.3)
    from pgcache.keys import request_key

    key = request_key("What is SQL injection?", model=cache.model, namespace=cache.namespace).exact_key
    query(database_url, "INSERT INTO pgcache_inflight VALUES (%s, now() + interval '1 hour')", (key,))
    result = cache.query("What is SQL injection?")
    assert result.status == "miss" and fake.calls["chat"] == 1
    cache.close()
