"""The README's quick start runs as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pgcache import embedded

from .conftest import PGCACHE_SCRIPT

ROOT = Path(__file__).resolve().parents[1]


def quick_start() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_quick_start_runs_verbatim(tmp_path, local_embedder):
    # The default data directory lives under XDG_DATA_HOME; keep this run's server private.
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("PGCACHE_DATABASE_URL", None)
    try:
        done = subprocess.run(
            [sys.executable, "-c", quick_start()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
    finally:
        embedded.stop(tmp_path / "pgcache" / "postgres")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "exact"
    assert re.fullmatch(r"semantic 0\.9\d Click 'Forgot password' on the sign-in page\.", lines[1])
    assert lines[2] == "None"


@pytest.mark.slow
def test_make_demo_steps_show_exact_and_semantic_hits_without_an_api_key(tmp_path, local_embedder):
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    for name in ("PGCACHE_DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(name, None)
    env["PGCACHE_EMBEDDER"] = "local"
    try:
        warmed = subprocess.run(
            [PGCACHE_SCRIPT, "warm", str(ROOT / "examples" / "faqs.tsv"), "--namespace", "demo", "--tag", "demo"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "demo.py")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        # The Makefile's last step, as data: `pgcache report --namespace demo`.
        reported = subprocess.run(
            [PGCACHE_SCRIPT, "report", "--namespace", "demo", "--format", "json"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        embedded.stop(tmp_path / "pgcache" / "postgres")
    assert warmed.returncode == 0, warmed.stderr
    assert warmed.stdout.strip() == "added 12, already present 0, failed 0"
    assert done.returncode == 0, done.stderr
    assert "warmed FAQ entries in namespace 'demo': 12" in done.stdout
    summary = done.stdout.strip().splitlines()[-1]
    assert summary == "summary: 10 questions, 2 exact hits, 3 semantic hits, 5 misses; no API key used"
    assert reported.returncode == 0, reported.stderr
    net = json.loads(reported.stdout)["savings"]
    # Warmed answers carry no usage: all five hits save estimated tokens, and embedding the 8 exact misses costs.
    assert net["hits"] == 5 and net["tokens_saved"] == net["tokens_saved_estimated"] > 0
    assert net["gross_savings"] == net["gross_savings_estimated"] > 0
    assert net["embedded_lookups"] == 8 and net["embedding_cost"] > 0 and net["embedding_seconds"] > 0
    assert net["net_savings"] == pytest.approx(net["gross_savings"] - net["embedding_cost"])
    assert "pgcache report --namespace demo" in (ROOT / "Makefile").read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_demo_uses_a_stored_verifier_and_says_what_it_refused(tmp_path, local_embedder):
    import psycopg

    from pgcache import verifiers
    from pgcache.crossencoder import TrainingOptions, train

    # A verifier that learned one thing: questions about the same task are the same question.
    tasks = ["reset my password", "cancel my subscription", "get a refund", "change my email address", "pay"]
    pairs, labels = [], []
    for i, task in enumerate(tasks):
        other = tasks[(i + 1) % len(tasks)]
        for a, b in (("How do I {}?", "I need to {}"), ("Can I {}?", "How do I {}?"), ("I want to {}", "Can I {}?")):
            pairs += [(a.format(task), b.format(task)), (a.format(task), a.format(other))]
            labels += [1, 0]
    encoder, _ = train(pairs, labels, TrainingOptions(kind="lora", epochs=6, learning_rate=1e-3, seed=0))
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PGCACHE_EMBEDDER": "local"}
    for name in ("PGCACHE_DATABASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(name, None)
    try:
        warm = [PGCACHE_SCRIPT, "warm", str(ROOT / "examples" / "faqs.tsv"), "--namespace", "demo", "--tag", "demo"]
        subprocess.run(warm, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=True)
        url = embedded.start(tmp_path / "pgcache" / "postgres")
        with psycopg.connect(url, autocommit=True) as conn:
            verifiers.save(conn, "demo", local_embedder.name, encoder.to_bytes(), 0.5, None, {})
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "demo.py")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        with psycopg.connect(url, autocommit=True) as conn:
            refused = conn.execute(
                "SELECT count(*) FROM pgcache_lookups WHERE namespace = 'demo' AND rejected_by LIKE 'verifier%%'"
            ).fetchone()[0]
    finally:
        embedded.stop(tmp_path / "pgcache" / "postgres")
    assert done.returncode == 0, done.stderr
    assert "learned verifier version 1 (serves from probability 0.500" in done.stdout
    semantic = int(re.search(r"(\d+) semantic hits", done.stdout).group(1))
    assert semantic > 3, "the plain paraphrases the cosine threshold misses are served"
    assert done.stdout.count("the learned verifier refused the nearest entry for") == refused


def test_drop_in_example_runs(database_url, fake):
    from .conftest import TEST_API_KEY

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", readme.split("## Drop-in", 1)[1], re.S).group(1)
    script = block + (
        "\nfor _ in range(2):\n"
        "    done = client.chat.completions.create(model='gpt-4o-mini', messages=[{'role': 'user', 'content': 'hi'}])\n"
        "    print(done.pgcache.status, done.choices[0].message.content)\n"
    )
    env = {
        **os.environ,
        "PGCACHE_DATABASE_URL": database_url,
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": TEST_API_KEY,
    }
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["miss answer #1 to: hi", "exact answer #1 to: hi"]
