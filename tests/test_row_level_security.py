"""docs/row-level-security.md, applied as written: one tenant can neither read nor change another's rows.

The SQL comes from the document's ```sql blocks (in order: roles, policies,
tenant roles, namespace mapping), so the document and this test cannot drift.
Only the role names and passwords are replaced, with unique ones, so that runs
against a shared server never meet each other's roles.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from pgcache import Cache, DatabaseError, db
from pgcache.embedders import OpenAIEmbedder
from pgcache.keys import request_key
from pgcache.quality import Pair

from .conftest import create_database, drop_database, query

DOC = Path(__file__).resolve().parents[1] / "docs" / "row-level-security.md"
ROLES = ("pgcache_owner", "pgcache_maintainer", "pgcache_tenant", "tenant_a", "tenant_b")
QUESTION = "What is a buffer overflow vulnerability?"
PARAPHRASE = "Explain buffer overflow attacks"
TABLES = ("pgcache_entries", "pgcache_lookups", "pgcache_feedback", "pgcache_thresholds", "pgcache_inflight")


def doc_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def as_role(url: str, role: str, password: str) -> str:
    """``url`` with another user and password."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(role)}:{quote(password)}@{host}"))


def run(url: str, statements: str) -> None:
    # No parameters: psycopg sends the block as one simple query, several statements allowed.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statements)


@dataclass
class Tenancy:
    admin: str
    names: dict[str, str]
    password: str
    policies: str

    def url(self, role: str) -> str:
        return as_role(self.admin, self.names[role], self.password)


@pytest.fixture(scope="module")
def tenancy(server_url):
    blocks = doc_blocks()
    assert len(blocks) == 4, "roles, policies, tenant roles, namespaces"
    suffix = uuid.uuid4().hex[:8]
    names = {role: f"{role}_{suffix}" for role in ROLES}
    password = f"pw-{uuid.uuid4().hex}"

    def localise(block: str) -> str:
        block = re.sub(r"PASSWORD '[^']*'", f"PASSWORD '{password}'", block)
        # Namespaces ('tenant-a') and other identifiers (pgcache_tenants) stay as they are.
        return re.sub(r"\b(" + "|".join(ROLES) + r")\b(?!-)", lambda m: names[m.group(1)], block)

    roles, policies, tenant_roles, namespaces = map(localise, blocks)
    database = f"pgcache_rls_{suffix}"
    admin = create_database(server_url, database)
    state = Tenancy(admin, names, password, policies)
    try:
        run(admin, roles)
        db.upgrade(state.url("pgcache_owner"))  # `pgcache db upgrade` as the owner
        run(state.url("pgcache_owner"), policies)
        run(admin, tenant_roles)
        run(state.url("pgcache_owner"), namespaces)
        yield state
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            existing = [
                r[0]
                for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(names.values()),))
            ]
            if existing:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.SQL(", ").join(map(sql.Identifier, existing))))
        drop_database(server_url, database)
        with psycopg.connect(server_url, autocommit=True) as conn:
            for name in names.values():
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def clean(tenancy):
    """Empty tables for each test (as the superuser, whom no policy restrains)."""
    query(tenancy.admin, f"TRUNCATE {', '.join(TABLES)}")
    return tenancy


@pytest.fixture
def caches(clean, llm, fake):
    opened = []

    def open_cache(role: str, namespace: str) -> Cache:
        cache = Cache(clean.url(role), embedder=OpenAIEmbedder(client=llm), llm=llm, namespace=namespace)
        opened.append(cache)
        return cache

    yield open_cache
    for cache in opened:
        cache.close()


def test_policies_are_in_force_and_the_recipe_can_be_rerun(clean):
    run(clean.url("pgcache_owner"), clean.policies)
    flags = query(
        clean.admin,
        "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = ANY(%s) ORDER BY relname",
        (list(TABLES[:4]),),
    )
    assert flags == [(name, True, True) for name in sorted(TABLES[:4])]
    query(
        clean.admin,
        "INSERT INTO pgcache_lookups (id, at, namespace, model, outcome, latency_ms) "
        "VALUES (gen_random_uuid(), now(), 'tenant-b', 'm', 'miss', 1)",
    )
    assert query(clean.url("pgcache_owner"), "SELECT count(*) FROM pgcache_lookups") == [(0,)], (
        "FORCE: the owner sees no rows"
    )
    assert query(clean.url("pgcache_maintainer"), "SELECT count(*) FROM pgcache_lookups") == [(1,)]


def test_a_tenant_reads_nothing_of_another_tenant(caches, clean, fake):
    b = caches("tenant_b", "tenant-b")
    assert b.query(QUESTION).status == "miss"
    assert b.query(PARAPHRASE).status == "semantic"
    b.flush()
    key = request_key(QUESTION, model="gpt-4o-mini", namespace="tenant-b").exact_key
    assert query(clean.admin, "SELECT count(*) FROM pgcache_entries WHERE exact_key = %s", (key,)) == [(1,)], (
        "tenant A's request below has the very key of B's entry: only the policies stop it"
    )

    a = caches("tenant_a", "tenant-a")
    assert a.lookup(QUESTION) is None
    assert a.lookup(QUESTION, namespace="tenant-b") is None
    assert a.lookup(PARAPHRASE, namespace="tenant-b") is None
    assert a.query(PARAPHRASE, namespace="tenant-b").status == "miss", "asked the LLM, found nothing to serve"
    assert a.breaker.failures == 1, "its answer could not be stored in tenant-b (the only failure)"

    a_url = clean.url("tenant_a")
    for relation in (
        *TABLES[:4],
        "pgcache_top_entries",
        "pgcache_near_misses",
        "pgcache_namespace_stats",
        "pgcache_daily_stats",
        "pgcache_hourly_stats",
        "pgcache_feedback_log",
    ):
        assert query(a_url, f"SELECT count(*) FROM {relation}") == [(0,)], relation
    scope, vector = query(clean.admin, "SELECT scope_key, embedding FROM pgcache_entries")[0]
    assert query(
        a_url, "SELECT count(*) FROM pgcache_nearest(%s::vector, %s, 'openai/text-embedding-3-small')", (vector, scope)
    ) == [(0,)]
    assert query(a_url, "SELECT namespace FROM pgcache_tenants") == [("tenant-a",)]
    assert a.report()["totals"]["lookups"] == 0
    assert b.report()["totals"]["lookups"] == 2


def test_a_tenant_can_neither_invalidate_nor_overwrite_another_tenants_entries(caches, clean, fake):
    b = caches("tenant_b", "tenant-b")
    entry = b.store(QUESTION, "B's answer")
    b.store("an answer that expired", "old")
    query(
        clean.admin,
        "UPDATE pgcache_entries SET expires_at = now() - interval '1 hour' WHERE response->"
        "'choices'->0->'message'->>'content' = 'old'",
    )

    a = caches("tenant_a", "tenant-a")
    assert a.invalidate(namespace="tenant-b", all=True, yes=True) == 0
    assert a.invalidate(namespace="tenant-b", prompt=QUESTION) == 0
    with pytest.raises(DatabaseError, match="row-level security"):
        a.store(QUESTION, "A's answer", namespace="tenant-b")
    with pytest.raises(DatabaseError, match="row-level security"):  # a batch: the COPY and upsert path
        a.store_many([(f"batch question {i}", f"A's answer {i}") for i in range(25)], namespace="tenant-b")
    assert a.sweep().expired == 0, "a tenant's sweep does not reach another tenant's expired rows"

    a_url = clean.url("tenant_a")
    assert _rowcount(a_url, "UPDATE pgcache_entries SET response = '{}'::jsonb") == 0
    assert _rowcount(a_url, "DELETE FROM pgcache_entries") == 0
    assert _rowcount(a_url, "UPDATE pgcache_entries SET namespace = 'tenant-a'") == 0
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
        query(
            a_url,
            "INSERT INTO pgcache_entries (namespace, exact_key, scope_key, model, request, response) "
            "VALUES ('tenant-b', '\\x00', '\\x00', 'm', '{}', '{}')",
        )
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
        query(a_url, "INSERT INTO pgcache_tenants VALUES ('tenant-c', current_user)")

    hit = b.lookup(QUESTION)
    assert (hit.status, hit.content, hit.entry_id) == ("exact", "B's answer", entry)
    assert query(clean.admin, "SELECT count(*) FROM pgcache_entries WHERE namespace = 'tenant-b'") == [(2,)]


def _rowcount(url: str, statement: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(statement).rowcount


def test_every_feature_works_for_a_tenant_under_the_policies(caches, clean, fake):
    a = caches("tenant_a", "tenant-a")
    assert a.query(QUESTION).status == "miss"
    assert a.query(QUESTION).status == "exact"
    semantic = a.query(PARAPHRASE)
    assert semantic.status == "semantic"
    assert a.feedback("wrong", semantic.lookup_id) > semantic.similarity
    pairs = [Pair(f"buffer overflow question {i}", f"buffer overflow paraphrase {i}", 1) for i in range(30)]
    pairs += [Pair(f"unrelated question {i}", f"another matter {i}", 0) for i in range(30)]
    assert a.calibrate(pairs, target_precision=0.9) is not None
    a.store("an answer that expired", "old")
    query(
        clean.admin,
        "UPDATE pgcache_entries SET expires_at = now() - interval '1 hour' WHERE response->"
        "'choices'->0->'message'->>'content' = 'old'",
    )
    assert a.sweep().expired == 1
    assert len(set(a.store_many([(f"batch question {i}", f"answer {i}") for i in range(25)]))) == 25
    assert a.report()["totals"]["lookups"] == 3
    assert a.breaker.failures == 0, "no privilege was missing anywhere"
    assert query(clean.admin, "SELECT namespace, count(*) FROM pgcache_lookups GROUP BY 1") == [("tenant-a", 3)]
    assert query(clean.admin, "SELECT namespace FROM pgcache_thresholds") == [("tenant-a",)]
    assert query(clean.admin, "SELECT namespace, verdict FROM pgcache_feedback") == [("tenant-a", "wrong")]
    assert query(clean.url("tenant_b"), "SELECT count(*) FROM pgcache_thresholds") == [(0,)]
    assert query(clean.url("tenant_b"), "SELECT count(*) FROM pgcache_feedback") == [(0,)]


def test_the_maintainer_sweeps_and_reports_across_tenants(caches, clean, fake):
    for role, namespace in (("tenant_a", "tenant-a"), ("tenant_b", "tenant-b")):
        tenant = caches(role, namespace)
        tenant.query(QUESTION)
        tenant.store("an answer that expired", "old")
        tenant.flush()
    query(
        clean.admin,
        "UPDATE pgcache_entries SET expires_at = now() - interval '1 hour' WHERE response->"
        "'choices'->0->'message'->>'content' = 'old'",
    )
    maintainer = caches("pgcache_maintainer", "default")
    assert maintainer.sweep().expired == 2
    namespaces = {row["namespace"] for row in maintainer.report()["top_entries"]} | {
        row[0] for row in query(clean.url("pgcache_maintainer"), "SELECT namespace FROM pgcache_namespace_stats")
    }
    assert namespaces == {"tenant-a", "tenant-b"}
    assert maintainer.breaker.failures == 0, "no privilege was missing"
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        query(clean.url("pgcache_maintainer"), "UPDATE pgcache_entries SET response = '{}'::jsonb")
