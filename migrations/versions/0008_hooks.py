"""Invalidation hooks: triggers on application tables that retire the cache entries tagged with the changed rows.

* ``pgcache_hooks``: one row per hook (table, tag templates, fixed tags, events, mode, namespace).
* ``pgcache_add_hook(...)``: installs a hook (idempotent: the same hook twice is one hook) and its
  statement-level triggers, one per event (PostgreSQL allows transition tables on single-event
  triggers only), so that a statement changing 10,000 rows invalidates in one set-based statement.
* ``pgcache_remove_hook(id)``: drops the triggers and the row.
* ``pgcache_hook_fired()``: the triggers' function. It renders each template for every changed row
  (old and new values of an update) in one query, then deletes the entries carrying any rendered tag or a fixed
  tag, or expires them, in the transaction of the change: a rollback leaves the entries, a commit
  retires them for every process at once. SECURITY DEFINER, so that the application's role needs no
  rights on the cache's tables; its search_path is the one the migration ran with.
* A template is stored parsed: literal text and column names alternating (``["article:", "id", ""]``);
  the trigger turns it into one SQL expression over the changed rows (``'article:' || (r."id")::text``),
  so that a column is written as PostgreSQL writes it as text, and a NULL column renders no tag.
* A GIN index on ``pgcache_entries.tags`` for the ``tags && …`` these run (and ``pgcache invalidate
  --tag``). Built in the migration's transaction: writes to the entries wait for it, lookups do not.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

FUNCTIONS = {
    "pgcache_hook_fired()": r"""
    CREATE FUNCTION pgcache_hook_fired() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
    DECLARE
        hook pgcache_hooks%ROWTYPE;
        changed text;
        rendering text;
        rendered text[];
        hits bigint[];
    BEGIN
        SELECT * INTO hook FROM pgcache_hooks WHERE id = TG_ARGV[0]::bigint;
        IF NOT FOUND THEN
            RETURN NULL;  -- removed while this statement ran
        END IF;
        -- A trigger has only the transition tables of its event; an update's old and new rows both count.
        changed := CASE TG_OP
            WHEN 'INSERT' THEN 'SELECT * FROM pgcache_changed_new'
            WHEN 'DELETE' THEN 'SELECT * FROM pgcache_changed_old'
            ELSE 'SELECT * FROM pgcache_changed_new UNION ALL SELECT * FROM pgcache_changed_old' END;
        -- Each template as one SQL expression over a row: 'article:' || (r."id")::text (NULL if the column is).
        SELECT string_agg(expression, ', ') INTO rendering FROM (
            SELECT (SELECT string_agg(CASE WHEN k % 2 = 1 THEN quote_literal(p) ELSE format('(r.%I)::text', p) END,
                                      ' || ' ORDER BY k)
                    FROM jsonb_array_elements_text(t) WITH ORDINALITY AS u(p, k)) AS expression
            FROM jsonb_array_elements(hook.templates) AS t
        ) AS templates;
        IF rendering IS NULL THEN  -- fixed tags only: they go if any row changed
            EXECUTE format('SELECT CASE WHEN EXISTS (%s) THEN ''{}''::text[] END', changed) INTO rendered;
        ELSE
            EXECUTE format(
                'SELECT array_agg(DISTINCT tag) FILTER (WHERE tag IS NOT NULL) || ''{}''::text[] '
                'FROM (%s) AS r, LATERAL unnest(ARRAY[%s]) AS tag HAVING count(*) > 0',
                changed, rendering) INTO rendered;
        END IF;
        IF rendered IS NULL THEN
            RETURN NULL;  -- the statement changed no row
        END IF;
        rendered := rendered || hook.tags;
        IF cardinality(rendered) = 0 THEN
            RETURN NULL;
        END IF;
        -- A few tags: the GIN index answers tags && rendered. Thousands (a bulk update): && would compare
        -- every entry's tags with every rendered tag, so the tags are hash-joined instead.
        IF cardinality(rendered) <= 64 THEN
            hits := ARRAY(SELECT id FROM pgcache_entries
                          WHERE tags && rendered AND (hook.namespace IS NULL OR namespace = hook.namespace));
        ELSE
            hits := ARRAY(SELECT DISTINCT e.id
                          FROM pgcache_entries AS e CROSS JOIN LATERAL unnest(e.tags) AS entry_tag(tag)
                          JOIN unnest(rendered) AS wanted(tag) ON wanted.tag = entry_tag.tag
                          WHERE hook.namespace IS NULL OR e.namespace = hook.namespace);
        END IF;
        IF hook.mode = 'delete' THEN
            DELETE FROM pgcache_entries WHERE id = ANY(hits);
        ELSE
            UPDATE pgcache_entries SET expires_at = now()
            WHERE id = ANY(hits) AND (expires_at IS NULL OR expires_at > now());
        END IF;
        RETURN NULL;
    END
    $$
    """,
    "pgcache_add_hook(regclass, jsonb, text[], text[], text, text)": r"""
    CREATE FUNCTION pgcache_add_hook(target regclass, templates jsonb, fixed_tags text[], events text[],
                                     hook_mode text, for_namespace text) RETURNS bigint
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    DECLARE
        qualified text;
        kind "char";
        template jsonb;
        missing text;
        hook_id bigint;
        event text;
    BEGIN
        SELECT format('%I.%I', n.nspname, c.relname), c.relkind INTO qualified, kind
        FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE c.oid = target;
        IF kind NOT IN ('r', 'p') THEN
            RAISE EXCEPTION 'pgcache hooks attach to tables; % is not one', qualified USING ERRCODE = '22023';
        END IF;
        IF hook_mode NOT IN ('delete', 'expire') THEN
            RAISE EXCEPTION 'hook mode must be delete or expire, got %', hook_mode USING ERRCODE = '22023';
        END IF;
        IF cardinality(events) IS NULL OR NOT events <@ ARRAY['insert', 'update', 'delete'] THEN
            RAISE EXCEPTION 'hook events must be among insert, update, delete, got %', events
                USING ERRCODE = '22023';
        END IF;
        IF jsonb_typeof(templates) <> 'array' OR (jsonb_array_length(templates) = 0 AND cardinality(fixed_tags) = 0)
        THEN
            RAISE EXCEPTION 'a hook needs a tag template or a tag' USING ERRCODE = '22023';
        END IF;
        FOR template IN SELECT jsonb_array_elements(templates) LOOP
            SELECT p INTO missing
            FROM jsonb_array_elements_text(template) WITH ORDINALITY AS u(p, k)
            WHERE k % 2 = 0 AND NOT EXISTS (
                SELECT 1 FROM pg_attribute
                WHERE attrelid = target AND attname = p AND attnum > 0 AND NOT attisdropped)
            LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'table % has no column %', qualified, quote_ident(missing) USING ERRCODE = '42703';
            END IF;
        END LOOP;
        events := ARRAY(SELECT DISTINCT e FROM unnest(events) AS e ORDER BY e);
        SELECT id INTO hook_id FROM pgcache_hooks AS h
        WHERE h.table_name = qualified AND h.templates = pgcache_add_hook.templates AND h.tags = fixed_tags
          AND h.events = pgcache_add_hook.events AND h.mode = hook_mode
          AND h.namespace IS NOT DISTINCT FROM for_namespace;
        IF hook_id IS NULL THEN
            INSERT INTO pgcache_hooks (table_name, templates, tags, events, mode, namespace)
            VALUES (qualified, templates, fixed_tags, events, hook_mode, for_namespace)
            RETURNING id INTO hook_id;
        END IF;
        FOREACH event IN ARRAY events LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'pgcache_hook_' || hook_id || '_' || event, qualified);
            EXECUTE format(
                'CREATE TRIGGER %I AFTER %s ON %s REFERENCING %s '
                'FOR EACH STATEMENT EXECUTE FUNCTION pgcache_hook_fired(%L)',
                'pgcache_hook_' || hook_id || '_' || event, upper(event), qualified,
                CASE event WHEN 'insert' THEN 'NEW TABLE AS pgcache_changed_new'
                           WHEN 'delete' THEN 'OLD TABLE AS pgcache_changed_old'
                           ELSE 'OLD TABLE AS pgcache_changed_old NEW TABLE AS pgcache_changed_new' END,
                hook_id);
        END LOOP;
        RETURN hook_id;
    END
    $$
    """,
    "pgcache_remove_hook(bigint)": r"""
    CREATE FUNCTION pgcache_remove_hook(hook_id bigint) RETURNS boolean
    LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
    DECLARE
        hook pgcache_hooks%ROWTYPE;
        event text;
    BEGIN
        SELECT * INTO hook FROM pgcache_hooks WHERE id = hook_id FOR UPDATE;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
        IF to_regclass(hook.table_name) IS NOT NULL THEN  -- a dropped table took its triggers with it
            FOREACH event IN ARRAY hook.events LOOP
                EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'pgcache_hook_' || hook_id || '_' || event,
                               hook.table_name);
            END LOOP;
        END IF;
        DELETE FROM pgcache_hooks WHERE id = hook_id;
        RETURN true;
    END
    $$
    """,
}


def upgrade() -> None:
    op.create_table(
        "pgcache_hooks",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), primary_key=True),
        sa.Column("table_name", sa.Text, nullable=False),
        sa.Column("templates", JSONB, nullable=False),
        sa.Column("tags", ARRAY(sa.Text), nullable=False),
        sa.Column("events", ARRAY(sa.Text), nullable=False),
        sa.Column("mode", sa.Text, nullable=False),
        sa.Column("namespace", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("mode IN ('delete', 'expire')", name=op.f("pgcache_hooks_mode_check")),
    )
    op.create_index("pgcache_entries_tags_idx", "pgcache_entries", ["tags"], postgresql_using="gin")
    for body in FUNCTIONS.values():
        op.execute(body)


def downgrade() -> None:
    # Hooks go with the schema that runs them: their triggers would call a function that no longer exists.
    op.execute(
        "DO $$ DECLARE hook_id bigint; BEGIN "
        "FOR hook_id IN SELECT id FROM pgcache_hooks LOOP PERFORM pgcache_remove_hook(hook_id); END LOOP; END $$"
    )
    for signature in reversed(list(FUNCTIONS)):
        op.execute(f"DROP FUNCTION {signature}")
    op.drop_index("pgcache_entries_tags_idx", table_name="pgcache_entries")
    op.drop_table("pgcache_hooks")
