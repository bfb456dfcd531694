"""Fixtures: a real PostgreSQL (embedded unless PGCACHE_TEST_DATABASE_URL is set),
a fresh migrated database per test cloned from a template, and the fake OpenAI server."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import openai
import psycopg
import pytest
from psycopg import sql

from pgcache import Cache, db, embedded
from pgcache.embedders import OpenAIEmbedder

from .fake_openai import FakeOpenAI

TEMPLATE = "pgcache_test_template"
# The installed console script, beside the interpreter running the tests (no PATH needed).
PGCACHE_SCRIPT = str(Path(sys.executable).with_name("pgcache"))
TEST_API_KEY = "sk-test-a1b2c3d4e5f6g7h8i9j0-never-store-me"


@pytest.fixture(scope="session", autouse=True)
def _ledger_spool_dir(tmp_path_factory):
    """Ledger rows spooled during the tests' outages go to a directory of this run, not the user's."""
    previous = os.environ.get("PGCACHE_LEDGER_SPOOL_DIR")
    os.environ["PGCACHE_LEDGER_SPOOL_DIR"] = str(tmp_path_factory.mktemp("ledger-spool"))
    yield
    if previous is None:
        os.environ.pop("PGCACHE_LEDGER_SPOOL_DIR", None)
    else:
        os.environ["PGCACHE_LEDGER_SPOOL_DIR"] = previous


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` on the same server."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def server_url(tmp_path_factory):
    """Admin URL of the test server: PGCACHE_TEST_DATABASE_URL or a private embedded server."""
    external = os.environ.get("PGCACHE_TEST_DATABASE_URL")
    if external:
        yield db.normalize_url(external)
        return
    data_dir = tmp_path_factory.mktemp("pg") / "data"
    url = embedded.start(data_dir)
    yield url
    embedded.stop(data_dir)


def _admin(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def create_database(server_url: str, name: str, template: str | None = None) -> str:
    with _admin(server_url) as conn:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        conn.execute(query)
    return with_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    with _admin(server_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def template_url(server_url):
    """A database migrated to head, cloned for every test."""
    drop_database(server_url, TEMPLATE)
    url = create_database(server_url, TEMPLATE)
    db.upgrade(url)
    yield url
    drop_database(server_url, TEMPLATE)


@contextmanager
def migrated_database(server_url: str, prefix: str = "pgcache_test") -> Iterator[str]:
    """A fresh database cloned from the migrated template, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name, TEMPLATE)
    try:
        yield url
    finally:
        drop_database(server_url, name)


@pytest.fixture
def database_url(server_url, template_url):
    """A fresh, migrated database for one test."""
    with migrated_database(server_url) as url:
        yield url


@pytest.fixture
def empty_database_url(server_url):
    """A fresh database without the pgcache schema."""
    name = f"pgcache_empty_{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name)
    yield url
    drop_database(server_url, name)


@pytest.fixture(scope="session")
def fake_server():
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def fake(fake_server):
    """The fake OpenAI server with its counters reset."""
    fake_server.reset()
    fake_server.topics = ["buffer overflow", "sql injection"]
    return fake_server


@pytest.fixture
def llm(fake):
    return openai.OpenAI(base_url=fake.base_url, api_key=TEST_API_KEY, max_retries=0)


@pytest.fixture
def cache(database_url, llm):
    """A cache on a fresh database, with chat and embeddings from the fake server."""
    with Cache(database_url, embedder=OpenAIEmbedder(client=llm), llm=llm) as cache:
        yield cache


@pytest.fixture(scope="session")
def local_embedder():
    """The bundled all-MiniLM-L6-v2, loaded once."""
    from pgcache.embedders import LocalEmbedder

    embedder = LocalEmbedder()
    embedder.embed(["warm up"])
    return embedder


def query(url: str, statement: str, params=()) -> list[tuple]:
    """Run one SQL statement against ``url`` and return its rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []
