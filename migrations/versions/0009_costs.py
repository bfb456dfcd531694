"""The cache's own costs beside its savings, estimated token counts, and prices in the database.

* ``pgcache_entries.token_estimator``: which estimator counted the tokens of an answer that
  came without the API's usage (a warmed FAQ answer); null when the counts are the API's own.
* ``pgcache_lookups``: ``tokens_estimated`` (the hit's saved tokens are an estimate),
  ``embedding_tokens`` and ``embedding_ms`` (what embedding the request cost),
  ``judge_model`` and ``judge_completion_tokens`` (to price ``judge_tokens``), ``verifier_ms``
  (CPU time of the learned verifier).
* ``pgcache_prices``: dollars per million tokens of chat and embedding models, and per CPU hour
  (``cpu``), seeded with list prices; edit it with SQL.
* ``pgcache_savings``: per UTC day and namespace, the gross savings, the cache's costs, the net
  savings and the semantic tier's break-even.
* ``pgcache_daily_stats`` and ``pgcache_top_entries`` gain a column marking estimated figures;
  ``pgcache_near_misses`` reads the prompt the ledger now keeps for misses.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

HIT = "outcome IN ('exact', 'semantic')"

# List prices in US dollars when this revision was written: per 1M tokens (input, output), per CPU hour.
SEED_PRICES = [
    ("gpt-4o-mini", "1M tokens", 0.15, 0.60),
    ("gpt-4o", "1M tokens", 2.50, 10.00),
    ("gpt-4.1", "1M tokens", 2.00, 8.00),
    ("gpt-4.1-mini", "1M tokens", 0.40, 1.60),
    ("gpt-4.1-nano", "1M tokens", 0.10, 0.40),
    ("o3-mini", "1M tokens", 1.10, 4.40),
    ("gpt-3.5-turbo", "1M tokens", 0.50, 1.50),
    ("text-embedding-3-small", "1M tokens", 0.02, 0.0),
    ("text-embedding-3-large", "1M tokens", 0.13, 0.0),
    ("text-embedding-ada-002", "1M tokens", 0.10, 0.0),
    ("cpu", "CPU hour", 0.05, 0.0),
]

DAILY_STATS = f"""
    SELECT (at AT TIME ZONE 'UTC')::date AS day,
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
           avg(latency_ms) AS avg_latency_ms,
           avg(llm_ms) FILTER (WHERE outcome = 'miss') AS avg_llm_ms{{extra}}
    FROM pgcache_lookups
    GROUP BY 1, 2, 3
"""
DAILY_ESTIMATED = f""",
           coalesce(sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0))
                    FILTER (WHERE {HIT} AND tokens_estimated), 0) AS tokens_saved_estimated"""

TOP_ENTRIES = """
    SELECT id AS entry_id, namespace, model, prompt, source, tags, hit_count, last_hit_at,
           created_at, expires_at, (expires_at IS NULL OR expires_at > now()) AS live,
           hit_count * coalesce(total_tokens, 0) AS tokens_saved{extra}
    FROM pgcache_entries
    WHERE hit_count > 0
    ORDER BY hit_count DESC, id
"""
TOP_ESTIMATED = ",\n           token_estimator IS NOT NULL AS tokens_estimated"

NEAR_MISSES = """
    SELECT l.id AS lookup_id, l.at, l.namespace, l.model, l.similarity, l.threshold,
           l.threshold - l.similarity AS gap,
           {prompt} AS prompt,
           l.candidate_id,
           c.prompt AS candidate_prompt
    FROM pgcache_lookups AS l
    LEFT JOIN pgcache_entries AS q ON q.id = l.entry_id
    LEFT JOIN pgcache_entries AS c ON c.id = l.candidate_id
    WHERE l.outcome = 'miss' AND l.similarity < l.threshold AND l.similarity >= l.threshold - 0.05
"""

# Dollars per lookup, then summed per day and namespace. An embedding is priced by its tokens where the
# API reported them, else (a local model) by its time at the CPU-hour price; the judge by its tokens; the
# learned verifier by its CPU time. A cost whose price is missing counts as 0 and is counted as unpriced.
SAVINGS = f"""
    WITH priced AS (
        SELECT (l.at AT TIME ZONE 'UTC')::date AS day,
               l.namespace,
               l.outcome,
               l.{HIT} AS hit,
               l.embedding_tokens IS NOT NULL OR l.embedding_ms IS NOT NULL AS embedded,
               CASE WHEN l.{HIT} THEN coalesce(l.prompt_tokens, 0) + coalesce(l.completion_tokens, 0) END
                   AS tokens_saved,
               l.tokens_estimated,
               CASE WHEN l.{HIT} THEN (coalesce(l.prompt_tokens, 0) * pm.input
                                        + coalesce(l.completion_tokens, 0) * pm.output) / 1e6 END AS saved,
               l.{HIT} AND pm.item IS NULL AS saved_unpriced,
               l.embedding_tokens,
               l.embedding_ms,
               CASE WHEN l.embedding_tokens IS NOT NULL THEN l.embedding_tokens * pe.input / 1e6
                    WHEN l.embedding_ms IS NOT NULL THEN l.embedding_ms / 3.6e6 * cpu.input END AS embedding_cost,
               l.judge_tokens,
               (greatest(l.judge_tokens - coalesce(l.judge_completion_tokens, 0), 0) * pj.input
                + coalesce(l.judge_completion_tokens, 0) * pj.output) / 1e6 AS judge_cost,
               l.verifier_ms,
               l.verifier_ms / 3.6e6 * cpu.input AS verifier_cost,
               (l.embedding_tokens IS NOT NULL AND pe.item IS NULL)
                   OR (l.embedding_tokens IS NULL AND l.embedding_ms IS NOT NULL AND cpu.item IS NULL)
                   OR (l.judge_tokens IS NOT NULL AND pj.item IS NULL)
                   OR (l.verifier_ms IS NOT NULL AND cpu.item IS NULL) AS cost_unpriced
        FROM pgcache_lookups AS l
        LEFT JOIN pgcache_prices AS pm ON pm.item = l.model AND pm.unit = '1M tokens'
        LEFT JOIN pgcache_prices AS pe
            ON pe.item = regexp_replace(l.embedder, '^openai/|@[0-9]+$', '', 'g') AND pe.unit = '1M tokens'
        LEFT JOIN pgcache_prices AS pj ON pj.item = l.judge_model AND pj.unit = '1M tokens'
        LEFT JOIN pgcache_prices AS cpu ON cpu.item = 'cpu' AND cpu.unit = 'CPU hour'
    ), daily AS (
        SELECT day,
               namespace,
               count(*) AS lookups,
               count(*) FILTER (WHERE hit) AS hits,
               count(*) FILTER (WHERE outcome = 'semantic') AS semantic_hits,
               count(*) FILTER (WHERE embedded) AS embedded_lookups,
               coalesce(sum(tokens_saved), 0) AS tokens_saved,
               coalesce(sum(tokens_saved) FILTER (WHERE tokens_estimated), 0) AS tokens_saved_estimated,
               coalesce(sum(saved), 0) AS gross_savings,
               coalesce(sum(saved) FILTER (WHERE tokens_estimated), 0) AS gross_savings_estimated,
               coalesce(sum(saved) FILTER (WHERE outcome = 'semantic'), 0) AS semantic_savings,
               count(*) FILTER (WHERE saved_unpriced) AS hits_unpriced,
               coalesce(sum(embedding_tokens), 0) AS embedding_tokens,
               coalesce(sum(embedding_ms), 0) / 1000 AS embedding_seconds,
               coalesce(sum(embedding_cost), 0) AS embedding_cost,
               coalesce(sum(judge_tokens), 0) AS judge_tokens,
               coalesce(sum(judge_cost), 0) AS judge_cost,
               coalesce(sum(verifier_ms), 0) / 1000 AS verifier_seconds,
               coalesce(sum(verifier_cost), 0) AS verifier_cost,
               count(*) FILTER (WHERE cost_unpriced) AS costs_unpriced
        FROM priced
        GROUP BY day, namespace
    )
    SELECT day, namespace, lookups, hits, semantic_hits, embedded_lookups,
           tokens_saved, tokens_saved_estimated,
           gross_savings, gross_savings_estimated, semantic_savings, hits_unpriced,
           embedding_tokens, embedding_seconds, embedding_cost,
           judge_tokens, judge_cost, verifier_seconds, verifier_cost,
           embedding_cost + judge_cost + verifier_cost AS cache_cost,
           gross_savings - (embedding_cost + judge_cost + verifier_cost) AS net_savings,
           costs_unpriced,
           CASE WHEN semantic_hits > 0 AND embedding_cost > 0
                THEN (semantic_savings / semantic_hits) / (embedding_cost / embedded_lookups) END
               AS break_even_lookups
    FROM daily
"""


def upgrade() -> None:
    op.add_column("pgcache_entries", sa.Column("token_estimator", sa.Text(), nullable=True))
    for name, kind in (
        ("tokens_estimated", sa.Boolean()),
        ("embedding_tokens", sa.Integer()),
        ("embedding_ms", sa.Double()),
        ("judge_model", sa.Text()),
        ("judge_completion_tokens", sa.Integer()),
        ("verifier_ms", sa.Double()),
    ):
        op.add_column("pgcache_lookups", sa.Column(name, kind, nullable=True))
    prices = op.create_table(
        "pgcache_prices",
        sa.Column("item", sa.Text(), primary_key=True),
        sa.Column("unit", sa.Text(), nullable=False),
        sa.Column("input", sa.Double(), nullable=False),
        sa.Column("output", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("unit IN ('1M tokens', 'CPU hour')", name=op.f("pgcache_prices_unit_check")),
        sa.CheckConstraint("input >= 0 AND output >= 0", name=op.f("pgcache_prices_price_check")),
    )
    op.bulk_insert(prices, [dict(zip(("item", "unit", "input", "output"), row, strict=True)) for row in SEED_PRICES])
    # New columns go last, so CREATE OR REPLACE keeps the views' existing columns and their order.
    op.execute(f"CREATE OR REPLACE VIEW pgcache_daily_stats AS {DAILY_STATS.format(extra=DAILY_ESTIMATED)}")
    op.execute(f"CREATE OR REPLACE VIEW pgcache_top_entries AS {TOP_ENTRIES.format(extra=TOP_ESTIMATED)}")
    op.execute(
        f"CREATE OR REPLACE VIEW pgcache_near_misses AS {NEAR_MISSES.format(prompt='coalesce(l.prompt, q.prompt)')}"
    )
    op.execute(f"CREATE VIEW pgcache_savings AS {SAVINGS}")


def downgrade() -> None:
    op.execute("DROP VIEW pgcache_savings")
    op.execute(f"CREATE OR REPLACE VIEW pgcache_near_misses AS {NEAR_MISSES.format(prompt='q.prompt')}")
    # Dropped and created again: CREATE OR REPLACE cannot remove a column.
    op.execute("DROP VIEW pgcache_top_entries")
    op.execute(f"CREATE VIEW pgcache_top_entries AS {TOP_ENTRIES.format(extra='')}")
    op.execute("DROP VIEW pgcache_daily_stats")
    op.execute(f"CREATE VIEW pgcache_daily_stats AS {DAILY_STATS.format(extra='')}")
    op.drop_table("pgcache_prices")
    for name in (
        "verifier_ms",
        "judge_completion_tokens",
        "judge_model",
        "embedding_ms",
        "embedding_tokens",
        "tokens_estimated",
    ):
        op.drop_column("pgcache_lookups", name)
    op.drop_column("pgcache_entries", "token_estimator")
