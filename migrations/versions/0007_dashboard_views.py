"""Reporting views for the dashboard of ``pgcache serve``: hourly figures with latency percentiles,
and the feedback log.

* ``pgcache_hourly_stats``: ``pgcache_daily_stats`` by UTC hour, with the 50th, 95th and 99th
  percentiles of the time spent in the cache and the median LLM time of misses.
* ``pgcache_feedback_log``: every wrong/right verdict on a semantic hit, with both prompts.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

HIT = "outcome IN ('exact', 'semantic')"

VIEWS = {
    "pgcache_hourly_stats": f"""
        SELECT date_trunc('hour', at, 'UTC') AS hour,
               namespace,
               model,
               count(*) AS lookups,
               count(*) FILTER (WHERE outcome = 'exact') AS exact_hits,
               count(*) FILTER (WHERE outcome = 'semantic') AS semantic_hits,
               count(*) FILTER (WHERE outcome = 'miss') AS misses,
               count(*) FILTER (WHERE outcome = 'bypass') AS bypasses,
               count(*) FILTER (WHERE outcome = 'error' OR error IS NOT NULL) AS errors,
               (count(*) FILTER (WHERE {HIT}))::double precision / count(*) AS hit_rate,
               coalesce(sum(prompt_tokens) FILTER (WHERE {HIT}), 0) AS prompt_tokens_saved,
               coalesce(sum(completion_tokens) FILTER (WHERE {HIT}), 0) AS completion_tokens_saved,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS latency_p50_ms,
               percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS latency_p95_ms,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS latency_p99_ms,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY llm_ms) FILTER (WHERE outcome = 'miss') AS llm_p50_ms
        FROM pgcache_lookups
        GROUP BY 1, 2, 3
    """,
    "pgcache_feedback_log": """
        SELECT f.created_at AS at,
               f.verdict,
               f.namespace,
               f.lookup_id,
               f.entry_id,
               f.similarity,
               f.prompt,
               f.entry_prompt
        FROM pgcache_feedback AS f
    """,
}


def upgrade() -> None:
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW {name}")
