"""Sweep, invalidate and reindex, through the library and the CLI."""

from __future__ import annotations

import psycopg
import pytest
from typer.testing import CliRunner

from pgcache import Cache, InvalidRequestError, PgcacheError
from pgcache.cli import app
from pgcache.maintenance import recommended_lists
from pgcache.queries import EXACT_SEARCH_ROWS, SWEEP_LOCK_ID

from .conftest import query

runner = CliRunner()


def count(url, where="true"):
    return query(url, f"SELECT count(*) FROM pgcache_entries WHERE {where}")[0][0]


def expire(url, where):
    query(url, f"UPDATE pgcache_entries SET expires_at = now() - interval '1 minute' WHERE {where}")


def test_sweep_deletes_expired_entries_and_old_ledger_rows_in_batches(cache, database_url):
    cache.store_many([(f"q{i}", f"a{i}") for i in range(7)])
    expire(database_url, "prompt IN ('q0', 'q1', 'q2', 'q3', 'q4')")
    cache.lookup("q5")
    cache.flush()
    query(
        database_url,
        "INSERT INTO pgcache_lookups (id, at, namespace, model, outcome, latency_ms) "
        "VALUES (gen_random_uuid(), now() - interval '100 days', 'default', 'm', 'miss', 1)",
    )
    dry = cache.sweep(dry_run=True)
    assert (dry.expired, dry.lookups) == (5, 1) and count(database_url) == 7
    result = cache.sweep(batch_size=2)
    assert (result.expired, result.lookups, result.skipped, result.complete) == (5, 1, False, True)
    assert sorted(r[0] for r in query(database_url, "SELECT prompt FROM pgcache_entries")) == ["q5", "q6"]
    assert query(database_url, "SELECT count(*) FROM pgcache_lookups")[0][0] == 1


def test_a_second_sweep_exits_at_once(cache, database_url):
    cache.store("q", "a", ttl=60)
    expire(database_url, "true")
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (SWEEP_LOCK_ID,))
        assert cache.sweep().skipped is True
        printed = runner.invoke(app, ["sweep", "--database-url", database_url])
        assert printed.exit_code == 0 and "another sweep is running" in printed.output
        assert count(database_url) == 1
        holder.execute("SELECT pg_advisory_unlock(%s)", (SWEEP_LOCK_ID,))
    assert cache.sweep().expired == 1


def test_capacity_evicts_least_recently_hit_and_warm_entries_last(cache, database_url):
    cache.store_many([("warm 1", "w"), ("warm 2", "w")], source="warm")
    cache.store("old manual", "m")
    cache.store("hit manual", "m")
    cache.lookup("hit manual")
    cache.flush()
    result = cache.sweep(max_entries=2)
    assert result.evicted == 2
    assert sorted(r[0] for r in query(database_url, "SELECT prompt FROM pgcache_entries")) == ["warm 1", "warm 2"]


def test_sql_sweep_function_for_pg_cron(cache, database_url):
    cache.store_many([(f"q{i}", "a") for i in range(3)])
    expire(database_url, "true")
    assert query(database_url, "SELECT * FROM pgcache_sweep(2)") == [(2, 0)]
    assert query(database_url, "SELECT * FROM pgcache_sweep()") == [(1, 0)]
    with pytest.raises(psycopg.errors.RaiseException, match="batch_size must be a positive integer"):
        query(database_url, "SELECT * FROM pgcache_sweep(0)")


def test_invalidate_filters_combine(cache, database_url):
    cache.store("What is SQL injection?", "a", tags=["security", "web"])
    cache.store("How does SQL injection work?", "b", tags=["security"], model="gpt-4o")
    cache.store("What is a buffer overflow vulnerability?", "c", tags=["security"])
    cache.store_many([("What are your opening hours?", "d")], tags=["faq"])
    assert cache.invalidate(prompt="What is SQL injection?", tags=["faq"]) == 0
    assert cache.preview_invalidation(tags=["security"], model="gpt-4o")[0] == 1
    assert cache.invalidate(tags=["security"], model="gpt-4o") == 1
    assert cache.invalidate(source="warm") == 1
    assert cache.invalidate(similar_to="Explain SQL injection attacks") == 1
    assert [r[0] for r in query(database_url, "SELECT prompt FROM pgcache_entries")] == [
        "What is a buffer overflow vulnerability?"
    ]


def test_invalidate_by_key_age_and_namespace_confirmation(cache, database_url):
    cache.store("keep", "a")
    entry = cache.store("drop", "b")
    key = query(database_url, "SELECT encode(exact_key, 'hex') FROM pgcache_entries WHERE id = %s", (entry,))[0][0]
    assert cache.invalidate(older_than="1h") == 0
    assert cache.invalidate(key=key) == 1
    with pytest.raises(InvalidRequestError, match="all 1 entries of the namespace"):
        cache.invalidate(all=True)
    assert count(database_url) == 1, "a refused invalidation deletes nothing"
    assert cache.invalidate(all=True, yes=True) == 1
    with pytest.raises(InvalidRequestError, match="at least one filter"):
        cache.invalidate()
    with pytest.raises(InvalidRequestError, match="64 hexadecimal"):
        cache.invalidate(key="abc")
    with pytest.raises(PgcacheError, match="older_than"):
        cache.invalidate(older_than="7x")


def test_invalidate_cli_dry_run_and_namespace(cache, database_url):
    cache.store("What is SQL injection?", "a", namespace="tenant-a")
    cache.store("What is SQL injection?", "a")
    dry = runner.invoke(
        app,
        [
            "invalidate",
            "--database-url",
            database_url,
            "--namespace",
            "tenant-a",
            "--prompt",
            "What is SQL injection?",
            "--dry-run",
        ],
    )
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("would delete 1 entries\n  #") and "'What is SQL injection?'" in dry.output
    assert count(database_url) == 2
    refused = runner.invoke(app, ["invalidate", "--database-url", database_url, "-n", "tenant-a", "--all"])
    assert refused.exit_code != 0 and count(database_url) == 2
    done = runner.invoke(app, ["invalidate", "--database-url", database_url, "-n", "tenant-a", "--all", "--yes"])
    assert done.exit_code == 0 and done.output == "deleted 1 entries\n"
    assert query(database_url, "SELECT namespace FROM pgcache_entries") == [("default",)]


def test_reindex_retrains_lists_and_lookups_still_hit(cache, database_url):
    cache.store_many([(f"question number {i}", f"answer {i}") for i in range(40)])
    result = cache.reindex(lists=4)
    assert (result.before.lists, result.after.lists, result.after.rows) == (1, 4, 40)
    assert cache.lookup("question number 7").content == "answer 7"
    printed = runner.invoke(app, ["reindex", "--database-url", database_url])
    assert printed.exit_code == 0
    assert printed.output.startswith("before: 40 rows, 4 lists\nafter:  40 rows, 1 lists")


def test_recommended_lists_exact_while_small_then_twice_the_square_root():
    assert EXACT_SEARCH_ROWS == 500
    assert [recommended_lists(n) for n in (0, 499, 500, 10_000, 100_000, 4_000_000)] == [1, 1, 45, 200, 632, 4000]


def test_sweep_cli_rejects_bad_options(database_url):
    for args, message in ((["--batch-size", "-5"], "batch_size"), (["--ledger-retention", "7x"], "ledger-retention")):
        done = runner.invoke(app, ["sweep", "--database-url", database_url, *args])
        assert done.exit_code != 0
        assert message in str(done.exception) or message in done.output


def test_two_sweep_processes_at_once(cache, database_url):
    import re
    import subprocess

    from .conftest import PGCACHE_SCRIPT

    query(
        database_url,
        """
        INSERT INTO pgcache_entries (namespace, exact_key, scope_key, model, request, response, expires_at)
        SELECT 'default', sha256(i::text::bytea), sha256('s'::bytea), 'm', '{}', '{}', now() - interval '1 hour'
        FROM generate_series(1, 3000) AS i""",
    )
    runs = [
        subprocess.Popen(
            [PGCACHE_SCRIPT, "sweep", "--batch-size", "100", "--database-url", database_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    deleted = 0
    for stdout, _ in outputs:
        match = re.match(r"deleted (\d+) expired entries", stdout)
        assert match or stdout.strip() == "another sweep is running; nothing done", stdout
        deleted += int(match.group(1)) if match else 0
    assert deleted == 3000
    assert count(database_url) == 0


def test_unreachable_database_is_one_line_and_exit_1():
    import subprocess

    from .conftest import PGCACHE_SCRIPT

    done = subprocess.run(
        [PGCACHE_SCRIPT, "sweep", "--database-url", "postgresql://u:pw@127.0.0.1:1/x"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: cannot read the schema version")
    assert "pw" not in done.stderr.replace("postgresql://u:***@", "")


def test_reindex_advice_policy():
    from pgcache.maintenance import IndexStatus

    assert IndexStatus(rows=20_000, lists=1, recommended_lists=283).needs_reindex
    assert not IndexStatus(rows=20_000, lists=200, recommended_lists=283).needs_reindex
    assert IndexStatus(rows=20_000, lists=600, recommended_lists=283).needs_reindex
    assert not IndexStatus(rows=499, lists=1, recommended_lists=1).needs_reindex, "small tables keep exact scans"
    assert IndexStatus(rows=400, lists=45, recommended_lists=1).needs_reindex, "shrunk below 500: exact again"


def test_the_index_build_is_given_the_memory_pgvector_asks_for():
    from pgcache.maintenance import build_memory, recommended_lists

    # pgvector refused the build of 1.1M entries (2,098 lists) with "memory required is 1024 MB,
    # maintenance_work_mem is 512 MB": what reindex sets now must cover that, and small builds keep 512MB.
    assert recommended_lists(1_100_000) == 2_098
    assert int(build_memory(2_098).removesuffix("MB")) >= 1024
    assert build_memory(632) == build_memory(1) == "512MB"
    assert int(build_memory(4_000).removesuffix("MB")) > 3 * 1024, "it grows with the square of lists"


class CheapEmbedder:
    """Distinct unit vectors without an embedding service: enough rows to cross the exact-search size."""

    name = "cheap"
    dimensions = 16

    def embed(self, texts):
        import numpy as np

        rng = np.random.default_rng(len(texts))
        return rng.standard_normal((len(texts), self.dimensions)).astype(np.float32)


def test_sweep_retrains_the_index_once_the_table_outgrows_it(database_url):
    with Cache(database_url, embedder=CheapEmbedder()) as cache:
        cache.store_many([(f"question {i}", f"answer {i}") for i in range(2_100)])
        assert cache.index_status().lists == 1
        reported = runner.invoke(app, ["report", "--database-url", database_url])
        assert reported.exit_code == 0, reported.output
        assert "2100 vectors want 92: run `pgcache reindex`" in reported.output.replace("\n", " ")
        assert cache.report()["index"] == {"rows": 2100, "lists": 1, "recommended_lists": 92, "needs_reindex": True}
        advised = runner.invoke(app, ["sweep", "--database-url", database_url, "--no-retrain"])
        assert advised.exit_code == 0, advised.output
        assert "run `pgcache reindex`" in advised.output
        assert cache.index_status().lists == 1
        done = runner.invoke(app, ["sweep", "--database-url", database_url])
        assert done.exit_code == 0, done.output
        assert "retraining the index for 2100 rows: 1 -> 92 lists" in done.output
        assert cache.index_status().lists == 92
        assert cache.lookup("question 7").content == "answer 7"


def test_a_second_reindex_while_one_runs_does_nothing(cache, database_url):
    from pgcache.queries import REINDEX_LOCK_ID

    cache.store("What is a buffer overflow?", "An out-of-bounds write.")
    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (REINDEX_LOCK_ID,))
        assert cache.reindex(lists=3).skipped
        done = runner.invoke(app, ["reindex", "--database-url", database_url])
        assert done.exit_code == 0, done.output
        assert "another reindex is running; nothing done" in done.output
        assert cache.index_status().lists == 1
    result = cache.reindex(lists=3)
    assert not result.skipped and result.after.lists == 3
