"""Every SQL statement pgcache runs, named, and the schema facts they rely on.

The hot paths (lookups, leases, inserts, the ledger), maintenance (sweep,
eviction, invalidation, the index) and reporting all read their SQL from here,
so a schema change is made in one module. Statements that filter entries use
:data:`LIVE`, so nothing expired is served whether or not a sweep has run. The
plpgsql functions (``pgcache_nearest``, ``pgcache_sweep``, ...) live in the
migrations that create them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

EMBEDDING_DIMENSIONS = 1536
"""Width of ``pgcache_entries.embedding`` (half precision); narrower embeddings are zero-padded to it."""

INDEXED_DIMENSIONS = 768
"""The ivfflat index covers the vectors' first 768 dimensions (migration 0010); lookups rank its candidates
by the whole vector."""

EXACT_SEARCH_ROWS = 500
"""Below this many vectors a search compares every one of them: exact, and a few ms at most.

The one value for both: the scope size below which ``pgcache_nearest()``
searches a scope exactly (passed on every lookup; migration 0005's default is
the same, and a test keeps them equal), and the table size below which the
ivfflat index keeps a single list (:func:`pgcache.maintenance.recommended_lists`).
Measured on 2 cores, exact search costs about 6 µs per row (3 ms p50, under
6 ms p99 at 500 rows; 14 ms p50 at 2,000), while the index path stays near
1-2 ms with recall@1 of 1.0 for hits from a few dozen rows up (docs/operations.md).
"""

INDEX_NAME = "pgcache_entries_embedding_idx"
SWEEP_LOCK_ID = 0x70676373776565  # "pgcswee"
REINDEX_LOCK_ID = 0x70676372656978  # "pgcreix"
MIGRATION_LOCK_ID = 0x70676361636865  # "pgcache": serialises migrations of a fresh database
VERSION_TABLE = "pgcache_alembic_version"


def live(alias: str = "") -> str:
    """The condition every served entry meets: not expired (columns of table ``alias`` if given)."""
    column = f"{alias}.expires_at" if alias else "expires_at"
    return f"({column} IS NULL OR {column} > now())"


LIVE = live()


def insert_named(table: str, columns: Sequence[str]) -> str:
    """``INSERT`` of one row whose values are bound by column name (``%(column)s``)."""
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(f'%({column})s' for column in columns)})"


# -- lookups --------------------------------------------------------------------------------------

ROW_COLUMNS = ("id", "response", "prompt_tokens", "completion_tokens")
"""What a hit needs of an entry (:class:`pgcache.lookup.Row`; the semantic tier adds similarity and more)."""

FIND_EXACT = f"SELECT {', '.join(ROW_COLUMNS)} FROM pgcache_entries WHERE exact_key = %s AND {LIVE}"

# pgcache_neighbours() (migration 0006) picks exact search or the ivfflat index and its probes,
# and returns the nearest n live entries of the scope.
FIND_NEIGHBOURS = "SELECT * FROM pgcache_neighbours(%(q)s, %(scope)s, %(embedder)s, %(n)s, %(k)s, %(exact_below)s)"

LIVE_KEYS = f"SELECT exact_key FROM pgcache_entries WHERE exact_key = ANY(%s) AND {LIVE}"

CALIBRATED_THRESHOLD = """
SELECT threshold, source, calibrated_at FROM pgcache_thresholds WHERE namespace = %s AND embedder = %s
"""

# -- single-flight leases ----------------------------------------------------------------------------

# Take the lease on a key, or take over one that lapsed; returns a row only to the new holder.
ACQUIRE_LEASE = """
INSERT INTO pgcache_inflight AS f (exact_key, expires_at)
VALUES (%(key)s, now() + %(seconds)s * interval '1 second')
ON CONFLICT (exact_key) DO UPDATE SET expires_at = EXCLUDED.expires_at WHERE f.expires_at <= now()
RETURNING true
"""

# What a waiting process needs in one round trip: the answer if stored, and whether a lease is live.
POLL_LEASE = f"""
SELECT {", ".join("e." + column for column in ROW_COLUMNS)},
       EXISTS (SELECT 1 FROM pgcache_inflight WHERE exact_key = %(key)s AND expires_at > now())
FROM (SELECT 1) AS one
LEFT JOIN pgcache_entries AS e ON e.exact_key = %(key)s AND {live("e")}
"""

RELEASE_LEASE = "DELETE FROM pgcache_inflight WHERE exact_key = %s"

# -- new entries ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A column written when an entry is stored: the parameter feeding it, its staging type and value."""

    name: str
    staged_as: str
    value: str = "{}"
    """SQL computing the column from its parameter (``{}``)."""
    param: str = ""

    @property
    def source(self) -> str:
        return self.param or self.name


ENTRY_COLUMNS = (
    Column("namespace", "text"),
    Column("exact_key", "bytea"),
    Column("scope_key", "bytea"),
    Column("model", "text"),
    Column("embedder", "text"),
    Column("prompt", "text"),
    Column("request", "text", "{}::jsonb"),
    Column("response", "text", "{}::jsonb"),
    Column("embedding", "halfvec"),
    Column("tags", "text[]"),
    Column("source", "text"),
    Column("expires_at", "float8", "now() + {} * interval '1 second'", param="ttl"),
    Column("prompt_tokens", "int4"),
    Column("completion_tokens", "int4"),
    Column("total_tokens", "int4"),
    Column("token_estimator", "text"),
)
"""The columns a new entry sets, in one order for the single-row insert, the staging table and COPY."""

_KEY_COLUMNS = {"namespace", "exact_key", "scope_key", "model"}
_NAMES = ", ".join(column.name for column in ENTRY_COLUMNS)

# Same exact key: the newer answer replaces the stored one.
_REFRESH = (
    "ON CONFLICT (exact_key) DO UPDATE SET "
    + ", ".join(f"{c.name} = EXCLUDED.{c.name}" for c in ENTRY_COLUMNS if c.name not in _KEY_COLUMNS)
    + ", created_at = now()"
)

INSERT_ENTRY = (
    f"INSERT INTO pgcache_entries AS e ({_NAMES}) VALUES ("
    + ", ".join(c.value.format(f"%({c.source})s") for c in ENTRY_COLUMNS)
    + f") {_REFRESH} RETURNING id"
)

# From this many entries a batch goes through binary COPY into a staging table, then upserts of at most
# UPSERT_ROWS rows each (one transaction): each statement stays well inside the statement timeout.
COPY_FROM = 20
UPSERT_ROWS = 2_000
STAGING_TYPES = [column.staged_as for column in ENTRY_COLUMNS]
# ON COMMIT DROP: nothing outlives the transaction, so pooled (and PgBouncer) connections stay clean.
CREATE_STAGING = (
    "CREATE TEMP TABLE pgcache_staging (position integer GENERATED ALWAYS AS IDENTITY, "
    + ", ".join(f"{c.source} {c.staged_as}" for c in ENTRY_COLUMNS)
    + ") ON COMMIT DROP"
)
COPY_STAGING = (
    "COPY pgcache_staging (" + ", ".join(c.source for c in ENTRY_COLUMNS) + ") FROM STDIN WITH (FORMAT BINARY)"
)
UPSERT_STAGED = (
    f"INSERT INTO pgcache_entries AS e ({_NAMES}) SELECT "
    + ", ".join(c.value.format(c.source) for c in ENTRY_COLUMNS)
    + " FROM pgcache_staging WHERE position > %s AND position <= %s"
    + f" ORDER BY exact_key {_REFRESH} RETURNING exact_key, id"
)

# -- the ledger ------------------------------------------------------------------------------------------

# Ids are sorted so that concurrent writers lock rows in the same order.
COUNT_HITS = """
UPDATE pgcache_entries AS e
SET hit_count = e.hit_count + h.n, last_hit_at = GREATEST(e.last_hit_at, h.at)
FROM (SELECT unnest(%s::bigint[]) AS id, unnest(%s::bigint[]) AS n, unnest(%s::timestamptz[]) AS at) AS h
WHERE e.id = h.id
"""

ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"

# -- thresholds and feedback -------------------------------------------------------------------------------

SAVE_THRESHOLD = """
INSERT INTO pgcache_thresholds AS t (namespace, embedder, threshold, target_precision, precision_lower, pairs, source)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (namespace, embedder) DO UPDATE SET
    threshold = EXCLUDED.threshold, target_precision = EXCLUDED.target_precision,
    precision_lower = EXCLUDED.precision_lower, pairs = EXCLUDED.pairs, source = EXCLUDED.source,
    calibrated_at = now()
"""

FEEDBACK_LOOKUP = """
SELECT l.outcome, l.entry_id, l.similarity, l.namespace, l.embedder, l.prompt, e.prompt
FROM pgcache_lookups AS l LEFT JOIN pgcache_entries AS e ON e.id = l.entry_id
WHERE l.id = %s
"""

SAVE_FEEDBACK = """
INSERT INTO pgcache_feedback (lookup_id, verdict, namespace, embedder, entry_id, prompt, entry_prompt, similarity)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (lookup_id) DO UPDATE SET verdict = EXCLUDED.verdict, created_at = now()
"""

TIGHTEN_ENTRY = """
UPDATE pgcache_entries SET min_similarity = greatest(coalesce(min_similarity, 0), %s)
WHERE id = %s RETURNING min_similarity
"""

FEEDBACK_PAIRS = """
SELECT prompt, entry_prompt, (verdict = 'right')::int FROM pgcache_feedback
WHERE namespace = %s AND embedder = %s AND prompt IS NOT NULL AND entry_prompt IS NOT NULL
"""

# -- learned verifiers and the judge's verdicts -------------------------------------------------------

_VERIFIER_COLUMNS = (
    "id, namespace, embedder, version, created_at, threshold, target_precision, metrics, length(weights)"
)
LOCK_VERIFIERS = "SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))"
SAVE_VERIFIER = f"""
INSERT INTO pgcache_verifiers (namespace, embedder, version, threshold, target_precision, metrics, weights)
SELECT %(namespace)s, %(embedder)s, coalesce(max(version), 0) + 1, %(threshold)s, %(target_precision)s, %(metrics)s,
       %(weights)s
FROM pgcache_verifiers WHERE namespace = %(namespace)s AND embedder = %(embedder)s
RETURNING {_VERIFIER_COLUMNS}
"""
LIST_VERIFIERS = f"""
SELECT {_VERIFIER_COLUMNS} FROM pgcache_verifiers
WHERE %(namespace)s::text IS NULL OR namespace = %(namespace)s
ORDER BY namespace, embedder, version DESC
"""
NEWEST_VERIFIER = f"""
SELECT {_VERIFIER_COLUMNS} FROM pgcache_verifiers WHERE namespace = %s AND embedder = %s
ORDER BY version DESC LIMIT 1
"""
LOAD_VERIFIER = f"""
SELECT {_VERIFIER_COLUMNS}, weights FROM pgcache_verifiers
WHERE namespace = %(namespace)s AND embedder = %(embedder)s
  AND (%(version)s::integer IS NULL OR version = %(version)s)
ORDER BY version DESC LIMIT 1
"""
DELETE_VERIFIER = "DELETE FROM pgcache_verifiers WHERE namespace = %s AND embedder = %s AND version = %s"
JUDGEMENT_PAIRS = """
SELECT prompt, entry_prompt, verdict::int FROM pgcache_judgements
WHERE namespace = %s AND (embedder = %s OR embedder IS NULL) ORDER BY at
"""

# -- sweep and eviction ------------------------------------------------------------------------------------

TRY_LOCK = "SELECT pg_try_advisory_lock(%s)"
UNLOCK = "SELECT pg_advisory_unlock(%s)"
COUNT_EXPIRED = "SELECT count(*) FROM pgcache_entries WHERE expires_at <= now()"
COUNT_OLD_LOOKUPS = "SELECT count(*) FROM pgcache_lookups WHERE at < now() - %s::interval"
COUNT_LIVE = f"SELECT count(*) FROM pgcache_entries WHERE {LIVE}"
SWEEP_BATCH = "SELECT * FROM pgcache_sweep(%s, %s::interval)"

EVICT = f"""
WITH excess AS (
    SELECT id FROM pgcache_entries WHERE {LIVE}
    ORDER BY (source = 'warm'), coalesce(last_hit_at, created_at), id
    LIMIT least(%(batch)s, greatest(0, ({COUNT_LIVE}) - %(max)s))
    FOR UPDATE SKIP LOCKED
)
DELETE FROM pgcache_entries AS e USING excess WHERE e.id = excess.id
"""

# -- invalidation -------------------------------------------------------------------------------------------

FILTERS = {
    "namespace": "namespace = %(namespace)s",
    "prompt": "prompt = %(prompt)s",
    "model": "model = %(model)s",
    "source": "source = %(source)s",
    "key": "exact_key = %(key)s",
    "tags": "tags @> %(tags)s::text[]",
    "older_than": "created_at < now() - %(older_than)s * interval '1 second'",
    "similar_to": (
        "embedder = %(embedder)s AND 1 - (embedding <=> %(similar_to)s::halfvec(1536)) >= %(min_similarity)s"
    ),
}
"""The conditions an invalidation can combine (with AND), each bound by name."""

COUNT_SELECTED = "SELECT count(*) FROM pgcache_entries WHERE {where}"
SAMPLE_SELECTED = "SELECT id, model, source, prompt FROM pgcache_entries WHERE {where} ORDER BY id LIMIT %(limit)s"
DELETE_SELECTED = "DELETE FROM pgcache_entries WHERE {where}"
COUNT_NAMESPACE = "SELECT count(*) FROM pgcache_entries WHERE namespace = %s"

# -- the vector index -------------------------------------------------------------------------------------

COUNT_VECTORS = "SELECT count(*) FROM pgcache_entries WHERE embedding IS NOT NULL"
INDEX_LISTS = "SELECT pgcache_index_lists()"
SET_LISTS = "ALTER INDEX {index} SET (lists = {lists})"
REINDEX = "REINDEX INDEX CONCURRENTLY {index}"

# -- reporting (over the documented views) ---------------------------------------------------------------------

REPORT_DAILY = """
SELECT day, model, sum(lookups) AS lookups, sum(exact_hits) AS exact_hits,
       sum(semantic_hits) AS semantic_hits, sum(misses) AS misses, sum(bypasses) AS bypasses,
       sum(errors) AS errors, sum(prompt_tokens_saved) AS prompt_tokens_saved,
       sum(completion_tokens_saved) AS completion_tokens_saved,
       sum(tokens_saved_estimated) AS tokens_saved_estimated,
       sum(avg_llm_ms * misses) FILTER (WHERE avg_llm_ms IS NOT NULL) AS llm_ms_total,
       sum(misses) FILTER (WHERE avg_llm_ms IS NOT NULL) AS timed_misses
FROM pgcache_daily_stats
WHERE {where}
GROUP BY day, model
ORDER BY day, model
"""

# The report's savings section: the quantities pgcache_savings prices, grouped by what prices them, so that
# prices configured in the process (PGCACHE_PRICES) apply. Embedders are priced by model: "openai/m@256" -> "m".
REPORT_COSTS = """
SELECT day, namespace, model, embedding_item, judge_model,
       count(*) AS lookups,
       count(*) FILTER (WHERE hit) AS hits,
       count(*) FILTER (WHERE outcome = 'semantic') AS semantic_hits,
       count(*) FILTER (WHERE embedding_tokens IS NOT NULL OR embedding_ms IS NOT NULL) AS embedded_lookups,
       coalesce(sum(prompt_tokens) FILTER (WHERE hit), 0) AS prompt_saved,
       coalesce(sum(completion_tokens) FILTER (WHERE hit), 0) AS completion_saved,
       coalesce(sum(prompt_tokens) FILTER (WHERE hit AND tokens_estimated), 0) AS prompt_saved_estimated,
       coalesce(sum(completion_tokens) FILTER (WHERE hit AND tokens_estimated), 0) AS completion_saved_estimated,
       coalesce(sum(prompt_tokens) FILTER (WHERE outcome = 'semantic'), 0) AS prompt_saved_semantic,
       coalesce(sum(completion_tokens) FILTER (WHERE outcome = 'semantic'), 0) AS completion_saved_semantic,
       coalesce(sum(embedding_tokens), 0) AS embedding_tokens,
       count(*) FILTER (WHERE embedding_tokens IS NOT NULL) AS embeddings_with_tokens,
       coalesce(sum(embedding_ms), 0) AS embedding_ms,
       coalesce(sum(embedding_ms) FILTER (WHERE embedding_tokens IS NULL), 0) AS embedding_cpu_ms,
       coalesce(sum(greatest(judge_tokens - coalesce(judge_completion_tokens, 0), 0)), 0) AS judge_prompt_tokens,
       coalesce(sum(judge_completion_tokens), 0) AS judge_completion_tokens,
       count(*) FILTER (WHERE judge_tokens IS NOT NULL) AS judged,
       coalesce(sum(verifier_ms), 0) AS verifier_ms
FROM (
    SELECT *, (at AT TIME ZONE 'UTC')::date AS day, outcome IN ('exact', 'semantic') AS hit,
           regexp_replace(embedder, '^openai/|@[0-9]+$', '', 'g') AS embedding_item
    FROM pgcache_lookups
) AS l
WHERE {where}
GROUP BY day, namespace, model, embedding_item, judge_model
ORDER BY day, namespace
"""

STORED_PRICES = "SELECT item, unit, input, output FROM pgcache_prices"

REPORT_TOP = """
SELECT entry_id, namespace, model, prompt, source, hit_count, last_hit_at, tokens_saved, tokens_estimated
FROM pgcache_top_entries WHERE {where} LIMIT %(limit)s
"""

REPORT_NEAR = """
SELECT lookup_id, at, namespace, model, similarity, threshold, gap, prompt, candidate_id, candidate_prompt
FROM pgcache_near_misses WHERE {where} ORDER BY gap, at DESC LIMIT %(limit)s
"""

# The what-if of `pgcache report --what-if-threshold`: per namespace and overall (ROLLUP), from the ledger alone.
# A learned verifier may serve its second or third candidate; that one's similarity, from verifier_scores,
# decides whether the hit survives (read only where a verifier scored: a third faster on a large ledger).
# split_part names the check that refused: feedback, guard, verifier, judge, unverifiable.
REPORT_WHAT_IF = """
WITH ledger AS (
    SELECT l.namespace, l.outcome, l.similarity, l.threshold, l.rejected_by,
           l.prompt_tokens, l.completion_tokens, l.verifier_scores IS NOT NULL AS scored,
           l.outcome IN ('semantic', 'miss') AND l.similarity IS NOT NULL AS considered,
           CASE WHEN l.outcome <> 'semantic' THEN NULL
                WHEN l.verifier_scores IS NULL THEN l.similarity
                ELSE coalesce(
                    (SELECT max((s ->> 'similarity')::double precision)
                     FROM jsonb_array_elements(l.verifier_scores) AS s
                     WHERE (s ->> 'entry_id')::bigint = l.entry_id),
                    l.similarity) END AS served_similarity
    FROM pgcache_lookups AS l
    WHERE {where}
), judged AS (
    SELECT *,
           served_similarity < %(threshold)s AS lost,
           outcome = 'miss' AND similarity >= %(threshold)s AS candidate,
           split_part(rejected_by, ':', 1) AS refused_by,
           coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0) AS tokens
    FROM ledger
)
SELECT CASE WHEN grouping(namespace) = 0 THEN namespace END AS namespace,
       count(*) AS lookups,
       count(*) FILTER (WHERE outcome = 'exact') AS exact_hits,
       count(*) FILTER (WHERE outcome IN ('semantic', 'miss') AND similarity IS NULL) AS no_candidate,
       count(*) FILTER (WHERE outcome = 'bypass') AS bypasses,
       count(*) FILTER (WHERE outcome = 'error') AS errors,
       count(*) FILTER (WHERE considered) AS considered,
       count(*) FILTER (WHERE considered AND scored) AS verifier_scored,
       min(threshold) FILTER (WHERE considered) AS threshold_min,
       max(threshold) FILTER (WHERE considered) AS threshold_max,
       count(*) FILTER (WHERE considered AND outcome = 'semantic') AS semantic_hits,
       count(*) FILTER (WHERE lost) AS hits_lost,
       coalesce(sum(tokens) FILTER (WHERE lost), 0) AS lost_hit_tokens,
       count(*) FILTER (WHERE candidate AND rejected_by IS NULL) AS new_hits,
       coalesce(sum(tokens) FILTER (WHERE candidate AND rejected_by IS NULL), 0) AS new_hit_tokens,
       count(*) FILTER (WHERE candidate AND rejected_by IS NULL AND completion_tokens IS NOT NULL)
           AS new_hits_with_tokens,
       count(*) FILTER (WHERE candidate AND rejected_by IS NOT NULL) AS still_refused,
       count(*) FILTER (WHERE candidate AND refused_by = 'feedback') AS refused_feedback,
       count(*) FILTER (WHERE candidate AND refused_by = 'guard') AS refused_guard,
       count(*) FILTER (WHERE candidate AND refused_by = 'verifier') AS refused_verifier,
       count(*) FILTER (WHERE candidate AND refused_by = 'judge') AS refused_judge,
       count(*) FILTER (WHERE candidate AND refused_by = 'unverifiable') AS refused_unverifiable
FROM judged
GROUP BY ROLLUP (namespace)
ORDER BY grouping(namespace) DESC, namespace
"""

REPORT_FILTERS = {
    "namespace": "(%(namespace)s::text IS NULL OR namespace = %(namespace)s)",
    "model": "(%(model)s::text IS NULL OR model = %(model)s)",
    "day": "(%(day)s::date IS NULL OR day >= %(day)s)",
    "at": "(%(at)s::timestamptz IS NULL OR at >= %(at)s)",
}

# -- session settings of maintenance connections -------------------------------------------------------------

SET_SESSION = "SELECT set_config(%s, %s, false)"
RESET_SESSION = "RESET {name}"

# -- schema version and the embedded server -----------------------------------------------------------------

FIND_VERSION_TABLE = "SELECT to_regclass(%s)"
SCHEMA_VERSION = f"SELECT version_num FROM {VERSION_TABLE}"
FIND_DATABASE = "SELECT 1 FROM pg_database WHERE datname = %s"
CREATE_DATABASE = "CREATE DATABASE {name}"


# -- invalidation hooks (migration 0008) ----------------------------------------------------------

ADD_HOOK = "SELECT pgcache_add_hook(%s::regclass, %s::jsonb, %s::text[], %s::text[], %s, %s)"
FIND_TABLE = "SELECT to_regclass(%s)::text"
LIST_HOOKS = """
SELECT id, table_name, templates, tags, events, mode, namespace, created_at, to_regclass(table_name) IS NOT NULL
FROM pgcache_hooks ORDER BY id
"""
REMOVE_HOOK = "SELECT pgcache_remove_hook(%s)"
INVALIDATE_TAGS = """
DELETE FROM pgcache_entries
WHERE tags && %(tags)s::text[] AND (%(namespace)s::text IS NULL OR namespace = %(namespace)s)
"""
EXPIRE_TAGS = """
UPDATE pgcache_entries SET expires_at = now()
WHERE tags && %(tags)s::text[] AND (%(namespace)s::text IS NULL OR namespace = %(namespace)s)
  AND (expires_at IS NULL OR expires_at > now())
"""
