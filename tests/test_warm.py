"""pgcache warm: formats, idempotence, bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pgcache.cli import app

from .conftest import PGCACHE_SCRIPT, TEST_API_KEY, query

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture
def env(fake, database_url):
    return {
        "PGCACHE_DATABASE_URL": database_url,
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": TEST_API_KEY,
        "PGCACHE_EMBEDDER": "openai",
        "PGCACHE_NAMESPACE": "default",
    }


def warm(env, *args):
    return runner.invoke(app, ["warm", *map(str, args)], env=env)


def entries(url):
    return query(
        url,
        "SELECT namespace, prompt, response->'choices'->0->'message'->>'content', tags, source "
        "FROM pgcache_entries ORDER BY id",
    )


def test_warm_pairs_twice_adds_nothing_the_second_time(env, fake, database_url):
    first = warm(env, ROOT / "examples" / "faqs.tsv", "--tag", "faq")
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == "added 12, already present 0, failed 0"
    assert fake.calls == {"chat": 0, "embeddings": 1}
    second = warm(env, ROOT / "examples" / "faqs.tsv", "--tag", "faq")
    assert second.stdout.strip() == "added 0, already present 12, failed 0"
    assert fake.calls == {"chat": 0, "embeddings": 1}, "no LLM or embedding call for entries already present"
    rows = entries(database_url)
    assert len(rows) == 12 and "How do I reset my password?" in {row[1] for row in rows}
    assert all(row[3:] == (["faq"], "warm") for row in rows)


def test_warm_questions_asks_the_llm_once_per_question(env, fake, database_url):
    result = warm(env, ROOT / "examples" / "faqs.txt", "--concurrency", "2", "--ttl", "7d")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "added 4, already present 0, failed 0"
    assert fake.calls["chat"] == 4
    assert warm(env, ROOT / "examples" / "faqs.txt").stdout.strip() == "added 0, already present 4, failed 0"
    assert fake.calls["chat"] == 4
    assert (
        query(database_url, "SELECT count(*) FROM pgcache_entries WHERE expires_at > now() + interval '6 days'")[0][0]
        == 4
    )


def test_csv_and_jsonl(env, tmp_path, database_url):
    csv_file = tmp_path / "faq.csv"
    csv_file.write_text('prompt,response\n"What is 2FA?","A second factor, such as a code."\n')
    jsonl = tmp_path / "faq.jsonl"
    jsonl.write_text(
        json.dumps({"prompt": "q1", "response": "a1", "tags": ["x"], "namespace": "other"})
        + "\n"
        + json.dumps({"prompt": "q2", "response": "a2", "ttl": "1h"})
        + "\n"
    )
    assert warm(env, csv_file).stdout.strip() == "added 1, already present 0, failed 0"
    assert warm(env, jsonl, "--tag", "t").stdout.strip() == "added 2, already present 0, failed 0"
    rows = entries(database_url)
    assert rows[0] == ("default", "What is 2FA?", "A second factor, such as a code.", [], "warm")
    assert rows[1] == ("other", "q1", "a1", ["t", "x"], "warm")
    assert query(database_url, "SELECT expires_at IS NOT NULL FROM pgcache_entries WHERE prompt = 'q2'") == [(True,)]


def test_bad_lines_are_reported_and_skipped(env, tmp_path, database_url):
    path = tmp_path / "faq.jsonl"
    path.write_text('{"prompt": "good", "response": "yes"}\n{broken\n{"prompt": "no answer"}\n')
    result = warm(env, path)
    assert result.exit_code == 1
    assert f"{path}:2: invalid JSON" in result.stderr
    assert f"{path}:3: prompt and response must be non-empty strings" in result.stderr
    assert result.stdout.strip() == "added 1, already present 0, failed 2"
    assert [r[1] for r in entries(database_url)] == ["good"]
    strict = warm(env, path, "--strict", "--replace")
    assert strict.exit_code == 1 and "nothing was written" in str(strict.exception or strict.stderr)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty"),
        (b"\x00\x01binary", "binary file"),
        (b"caf\xe9 question\n", ":1: not valid UTF-8"),
        (b"question,answer\nq,a\n", "needs a header with prompt and response"),
    ],
)
def test_unreadable_files_get_one_line_errors_and_write_nothing(env, tmp_path, database_url, content, message):
    path = tmp_path / "faq.csv"
    path.write_bytes(content)
    done = subprocess.run(
        [PGCACHE_SCRIPT, "warm", str(path)], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and message in done.stderr
    assert query(database_url, "SELECT count(*) FROM pgcache_entries")[0][0] == 0


def test_dry_run_writes_nothing_and_bad_options_are_refused(env, database_url, fake):
    result = warm(env, ROOT / "examples" / "faqs.tsv", "--dry-run")
    assert result.stdout.strip() == "would add 12, already present 0, failed 0"
    assert fake.calls["embeddings"] == 0
    assert query(database_url, "SELECT count(*) FROM pgcache_entries")[0][0] == 0
    for args in (["--ttl", "7x"], ["--batch-size", "-1"]):
        bad = warm(env, ROOT / "examples" / "faqs.tsv", *args)
        assert bad.exit_code != 0
    assert query(database_url, "SELECT count(*) FROM pgcache_entries")[0][0] == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["/nonexistent/faqs.txt"], "error: /nonexistent/faqs.txt: cannot read: No such file or directory"),
        ([str(ROOT / "examples" / "faqs.tsv"), "--ttl", "7x"], "error: --ttl must look like"),
        ([str(ROOT / "examples" / "faqs.tsv"), "--batch-size", "-1"], "error: batch size must be a positive integer"),
    ],
)
def test_bad_arguments_are_one_line_errors(env, database_url, args, message):
    done = subprocess.run(
        [PGCACHE_SCRIPT, "warm", *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1
    assert query(database_url, "SELECT count(*) FROM pgcache_entries")[0][0] == 0
