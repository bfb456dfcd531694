"""Invalidation hooks: a change to an application table retires the tagged entries in the same transaction."""

from __future__ import annotations

import json
import zlib

import numpy as np
import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from pgcache import Cache, InvalidRequestError
from pgcache.cli import app
from pgcache.hooks import parse_template, template_text

from .conftest import query


class Scattered:
    """Texts on unrelated random directions, so that nothing here is a semantic hit: these tests are about tags."""

    name, dimensions = "test/scattered", 64

    def embed(self, texts):
        return [np.random.default_rng(zlib.crc32(text.encode())).standard_normal(64) for text in texts]


@pytest.fixture
def cache(database_url, llm):
    with Cache(database_url, embedder=Scattered(), llm=llm) as cache:
        yield cache


@pytest.fixture
def articles(database_url):
    query(database_url, "CREATE TABLE articles (id integer PRIMARY KEY, title text, category text)")
    query(database_url, "INSERT INTO articles VALUES (1, 'Refunds', 'billing'), (2, 'Passwords', NULL)")
    return database_url


def prompts(url: str) -> list[str]:
    return [row[0] for row in query(url, "SELECT prompt FROM pgcache_entries ORDER BY prompt")]


def store_answers(cache: Cache, tags_by_prompt: dict[str, list[str]]) -> None:
    for prompt, tags in tags_by_prompt.items():
        cache.store(prompt, f"answer to {prompt}", tags=tags)


def test_a_rolled_back_change_leaves_the_entries_and_a_committed_one_retires_them(cache, articles):
    store_answers(cache, {"refund policy?": ["article:1"], "reset password?": ["article:2"], "hours?": []})
    hook = cache.add_hook("articles", tag_templates=["article:{id}"])
    assert (hook.table, hook.templates, hook.events, hook.mode) == (
        "public.articles",
        ["article:{id}"],
        ["delete", "insert", "update"],
        "delete",
    )
    with psycopg.connect(articles) as conn:
        conn.execute("UPDATE articles SET title = 'Refunds (new)' WHERE id = 1")
        inside = conn.execute("SELECT count(*) FROM pgcache_entries WHERE 'article:1' = ANY(tags)").fetchone()[0]
        assert inside == 0, "invalidated inside the application's transaction"
        assert prompts(articles) == ["hours?", "refund policy?", "reset password?"], "not yet for anyone else"
        conn.rollback()
    assert prompts(articles) == ["hours?", "refund policy?", "reset password?"], "a rollback leaves the entries"
    query(articles, "UPDATE articles SET title = 'Refunds (new)' WHERE id = 1")
    assert prompts(articles) == ["hours?", "reset password?"]
    assert cache.lookup("refund policy?") is None, "gone for every process at once"


def test_updates_retire_old_and_new_values_inserts_and_deletes_too(cache, articles):
    store_answers(cache, {q: [f"article:{n}"] for n, q in [(2, "two"), (20, "twenty"), (3, "three"), (1, "one")]})
    cache.add_hook("articles", tag_templates=["article:{id}"])
    query(articles, "UPDATE articles SET id = 20 WHERE id = 2")
    assert prompts(articles) == ["one", "three"], "the row's old and new ids"
    query(articles, "INSERT INTO articles VALUES (3, 'New', 'x')")
    assert prompts(articles) == ["one"]
    query(articles, "DELETE FROM articles WHERE id = 1")
    assert prompts(articles) == []


def test_events_modes_fixed_tags_namespaces_and_null_columns(cache, articles):
    store_answers(cache, {"billing faq": ["category:billing"], "docs faq": ["docs"], "null faq": ["category:"]})
    cache.store("other namespace", "answer", tags=["docs"], namespace="other")
    hook = cache.add_hook(
        "articles",
        tag_templates=["category:{category}"],
        tags=["docs"],
        events=["update"],
        mode="expire",
        namespace=cache.namespace,
    )
    query(articles, "DELETE FROM articles WHERE id = 99")
    query(articles, "INSERT INTO articles VALUES (5, 'Inserted', 'billing')")
    live = "SELECT prompt FROM pgcache_entries WHERE expires_at IS NULL ORDER BY prompt"
    assert [r[0] for r in query(articles, live)] == ["billing faq", "docs faq", "null faq", "other namespace"], (
        "inserts do not fire an update hook"
    )
    query(articles, "UPDATE articles SET title = 'No row' WHERE id = 99")
    assert len(query(articles, live)) == 4, "a statement that changed no row retires nothing, fixed tags included"
    query(articles, "UPDATE articles SET title = title || '!' WHERE id IN (1, 2)")  # row 2's category is NULL
    assert [r[0] for r in query(articles, live)] == ["null faq", "other namespace"]
    assert cache.lookup("billing faq") is None, "expired entries no longer serve"
    cache.sweep()
    assert prompts(articles) == ["null faq", "other namespace"], "the sweep deletes the expired ones"
    assert cache.remove_hook(hook.id) and cache.list_hooks() == []
    query(articles, "UPDATE articles SET title = 'after removal'")
    assert len(query(articles, live)) == 2


def test_the_same_hook_twice_is_one_hook(cache, articles):
    first = cache.add_hook("articles", tag_templates=["article:{id}"], events=["update", "delete"])
    again = cache.add_hook("articles", tag_templates=["article:{id}"], events=["delete", "update"])
    assert first.id == again.id and len(cache.list_hooks()) == 1
    triggers = query(articles, "SELECT tgname FROM pg_trigger WHERE tgrelid = 'articles'::regclass ORDER BY 1")
    assert triggers == [(f"pgcache_hook_{first.id}_delete",), (f"pgcache_hook_{first.id}_update",)]


HOSTILE_SCHEMA = 'App "Data"; DROP TABLE pgcache_entries; --'
HOSTILE_TABLE = "price list'); DELETE FROM pgcache_entries; --"
HOSTILE_COLUMN = 'sku"}; --{'


def test_hostile_table_and_column_names_are_quoted(cache, database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        table = sql.Identifier(HOSTILE_SCHEMA, HOSTILE_TABLE)
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(HOSTILE_SCHEMA)))
        conn.execute(sql.SQL("CREATE TABLE {} ({} text)").format(table, sql.Identifier(HOSTILE_COLUMN)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES ('A-1')").format(table))
        written = table.as_string(conn)
    store_answers(cache, {"price of A-1?": ["sku:A-1"], "price of B-2?": ["sku:B-2"]})
    template = "sku:{" + HOSTILE_COLUMN.replace("{", "{{").replace("}", "}}") + "}"
    assert parse_template(template) == ["sku:", HOSTILE_COLUMN, ""] and template_text(parse_template(template)) == (
        template
    )
    hook = cache.add_hook(written, tag_templates=[template])
    assert hook.table == written
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("UPDATE {} SET {} = 'B-2'").format(table, sql.Identifier(HOSTILE_COLUMN)))
    assert prompts(database_url) == [], "old value A-1 and new value B-2"
    assert query(database_url, "SELECT to_regclass('pgcache_entries') IS NOT NULL") == [(True,)]
    assert cache.remove_hook(hook.id)


@pytest.mark.parametrize(
    "table, options, message",
    [
        ("missing_table", {"tag_templates": ["a:{id}"]}, "no table named missing_table"),
        ("articles", {"tag_templates": ["a:{nope}"]}, "table public.articles has no column nope"),
        ("articles", {"tag_templates": ["a:{id"]}, "has an unclosed {"),
        ("articles", {"tag_templates": ["a:{}"]}, "has an empty {}"),
        ("articles", {"tag_templates": ["a}"]}, "has a } without a {"),
        ("articles", {}, "needs a tag template"),
        ("articles", {"tags": ["x"], "events": ["truncate"]}, "hook events are insert, update, delete"),
        ("articles", {"tags": ["x"], "mode": "archive"}, "mode must be delete or expire"),
        ('"unterminated', {"tags": ["x"]}, 'no table named "unterminated'),
        ("a.b.c.d", {"tags": ["x"]}, "is not a table name"),
    ],
)
def test_bad_hooks_are_refused_with_what_was_wrong(cache, articles, table, options, message):
    with pytest.raises(InvalidRequestError, match=message.replace("{", r"\{").replace("}", r"\}")):
        cache.add_hook(table, **options)
    assert cache.list_hooks() == []


def test_a_view_is_refused(cache, articles):
    query(articles, "CREATE VIEW article_titles AS SELECT id, title FROM articles")
    with pytest.raises(InvalidRequestError, match=r"pgcache hooks attach to tables; public\.article_titles is not one"):
        cache.add_hook("article_titles", tag_templates=["article:{id}"])


def test_a_bulk_update_of_10000_rows_invalidates_in_one_statement(cache, database_url):
    # Its time is measured by `python -m benchmarks --only invalidation` (docs/benchmarks-invalidation.md).
    query(database_url, "CREATE TABLE prices (sku integer PRIMARY KEY, cents integer)")
    query(database_url, "INSERT INTO prices SELECT n, 100 FROM generate_series(1, 10000) AS n")
    cache.store_many([(f"price of {n}?", f"{n} costs $1") for n in range(1, 10001)], tags=None)
    query(database_url, "UPDATE pgcache_entries SET tags = ARRAY['price:' || rtrim(split_part(prompt, ' ', 3), '?')]")
    query(database_url, "UPDATE prices SET cents = cents + 1")
    assert query(database_url, "SELECT count(*) FROM pgcache_entries") == [(10000,)], "no hook yet"
    cache.add_hook("prices", tag_templates=["price:{sku}"], events=["update"])
    query(database_url, "UPDATE prices SET cents = cents + 1")
    assert query(database_url, "SELECT count(*) FROM pgcache_entries") == [(0,)]


def test_the_cli_adds_lists_and_removes_hooks_and_they_survive_db_upgrade(cache, articles):
    runner = CliRunner()
    base = ["--database-url", articles]
    added = runner.invoke(app, ["hooks", "add", "articles", "--tag-template", "article:{id}", "--on", "update", *base])
    assert added.exit_code == 0, added.output
    assert "on update deletes entries tagged article:{id}" in added.output
    upgraded = runner.invoke(app, ["db", "upgrade", *base])
    assert upgraded.exit_code == 0, upgraded.output
    listed = runner.invoke(app, ["hooks", "list", "--format", "json", *base])
    (hook,) = json.loads(listed.output)
    assert (hook["table"], hook["templates"], hook["events"]) == ("public.articles", ["article:{id}"], ["update"])
    store_answers(cache, {"refund policy?": ["article:1"]})
    query(articles, "UPDATE articles SET title = 'changed' WHERE id = 1")
    assert prompts(articles) == [], "the hook still fires after the upgrade"
    refused = runner.invoke(app, ["hooks", "add", "nope", "--tag", "x", *base])
    assert refused.exit_code == 1 and "no table named nope" in str(refused.exception)
    removed = runner.invoke(app, ["hooks", "remove", str(hook["id"]), *base])
    assert removed.exit_code == 0 and f"hook {hook['id']} removed" in removed.output
    again = runner.invoke(app, ["hooks", "remove", str(hook["id"]), *base])
    assert again.exit_code == 1 and f"no hook {hook['id']}" in str(again.exception)


def test_invalidating_by_tag_from_outside_the_database(cache, database_url):
    store_answers(cache, {"a": ["doc:1"], "b": ["doc:2"], "c": ["doc:1", "doc:3"]})
    cache.store("d", "answer", tags=["doc:1"], namespace="other")
    assert cache.invalidate_tags(["doc:1"], namespace=cache.namespace) == 2
    assert prompts(database_url) == ["b", "d"]
    assert cache.invalidate_tags(["doc:1", "doc:2"], mode="expire") == 2, "every namespace when none is named"
    assert query(database_url, "SELECT count(*) FROM pgcache_entries WHERE expires_at <= now()") == [(2,)]
    with pytest.raises(InvalidRequestError, match="name at least one tag"):
        cache.invalidate_tags([])
