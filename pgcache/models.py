"""SQLAlchemy models of the pgcache schema.

These declare the schema that the Alembic migrations build; a test checks that
the two agree. The lookup hot path does not go through the ORM (see
``queries.py``); the models serve migrations, tests and ad-hoc scripts.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pgvector.sqlalchemy import HALFVEC
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Text,
    UniqueConstraint,
    Uuid,
    cast,
    func,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .queries import EMBEDDING_DIMENSIONS, INDEX_NAME, INDEXED_DIMENSIONS

NAMING_CONVENTION = {
    "ix": "%(table_name)s_%(column_0_name)s_idx",
    "uq": "%(table_name)s_%(column_0_name)s_key",
    "ck": "%(table_name)s_%(constraint_name)s_check",
    "pk": "%(table_name)s_pkey",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Entry(Base):
    """One cached answer: the exact tier's row and, when it has an embedding, the semantic tier's."""

    __tablename__ = "pgcache_entries"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    namespace: Mapped[str] = mapped_column(Text, nullable=False)
    exact_key: Mapped[bytes] = mapped_column(LargeBinary, nullable=False, unique=True)
    scope_key: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    embedder: Mapped[str | None] = mapped_column(Text)
    prompt: Mapped[str | None] = mapped_column(Text)
    request: Mapped[dict] = mapped_column(JSONB, nullable=False)
    response: Mapped[dict] = mapped_column(JSONB, nullable=False)
    embedding = mapped_column(HALFVEC(EMBEDDING_DIMENSIONS))
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False, server_default=text("'{}'::text[]"))
    source: Mapped[str] = mapped_column(Text, nullable=False, server_default=text("'llm'"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    hit_count: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    last_hit_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    total_tokens: Mapped[int | None] = mapped_column(Integer)
    min_similarity: Mapped[float | None] = mapped_column(Double)
    token_estimator: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("source IN ('llm', 'warm', 'manual')", name="source"),
        CheckConstraint("(embedding IS NULL) = (embedder IS NULL)", name="embedder"),
        Index("pgcache_entries_expires_at_idx", "expires_at"),
        Index("pgcache_entries_scope_idx", "scope_key", "embedder"),
        Index("pgcache_entries_tags_idx", "tags", postgresql_using="gin"),
        # Over the vectors' first 768 dimensions: candidates, which lookups rank by the whole vector.
        Index(
            INDEX_NAME,
            cast(func.subvector(literal_column("embedding"), 1, INDEXED_DIMENSIONS), HALFVEC(INDEXED_DIMENSIONS)).label(
                "embedding_head"
            ),
            postgresql_using="ivfflat",
            postgresql_with={"lists": 1},
            postgresql_ops={"embedding_head": "halfvec_cosine_ops"},
        ),
    )


class Lookup(Base):
    """The lookup ledger: one append-only row per cache lookup."""

    __tablename__ = "pgcache_lookups"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    namespace: Mapped[str] = mapped_column(Text, nullable=False)
    model: Mapped[str] = mapped_column(Text, nullable=False)
    outcome: Mapped[str] = mapped_column(Text, nullable=False)
    entry_id: Mapped[int | None] = mapped_column(BigInteger)
    embedder: Mapped[str | None] = mapped_column(Text)
    similarity: Mapped[float | None] = mapped_column(Double)
    threshold: Mapped[float | None] = mapped_column(Double)
    latency_ms: Mapped[float] = mapped_column(Double, nullable=False)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    candidate_id: Mapped[int | None] = mapped_column(BigInteger)
    llm_ms: Mapped[float | None] = mapped_column(Double)
    rejected_by: Mapped[str | None] = mapped_column(Text)
    prompt: Mapped[str | None] = mapped_column(Text)
    judge_tokens: Mapped[int | None] = mapped_column(Integer)
    verifier_probability: Mapped[float | None] = mapped_column(Double)
    verifier_scores: Mapped[list | None] = mapped_column(JSONB)
    tokens_estimated: Mapped[bool | None] = mapped_column(Boolean)
    embedding_tokens: Mapped[int | None] = mapped_column(Integer)
    embedding_ms: Mapped[float | None] = mapped_column(Double)
    judge_model: Mapped[str | None] = mapped_column(Text)
    judge_completion_tokens: Mapped[int | None] = mapped_column(Integer)
    verifier_ms: Mapped[float | None] = mapped_column(Double)

    __table_args__ = (
        CheckConstraint("outcome IN ('exact', 'semantic', 'miss', 'bypass', 'error')", name="outcome"),
        Index("pgcache_lookups_at_idx", "at"),
        Index("pgcache_lookups_namespace_at_idx", "namespace", "at"),
    )


class Inflight(Base):
    """A lease on an exact key while one process asks the LLM (single-flight); unlogged."""

    __tablename__ = "pgcache_inflight"
    __table_args__ = ({"prefixes": ["UNLOGGED"]},)

    exact_key: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class CalibratedThreshold(Base):
    """The threshold ``pgcache calibrate`` chose for a namespace and embedder."""

    __tablename__ = "pgcache_thresholds"

    namespace: Mapped[str] = mapped_column(Text, primary_key=True)
    embedder: Mapped[str] = mapped_column(Text, primary_key=True)
    threshold: Mapped[float] = mapped_column(Double, nullable=False)
    target_precision: Mapped[float] = mapped_column(Double, nullable=False)
    precision_lower: Mapped[float] = mapped_column(Double, nullable=False)
    pairs: Mapped[int] = mapped_column(Integer, nullable=False)
    source: Mapped[str] = mapped_column(Text, nullable=False)
    calibrated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())

    __table_args__ = (CheckConstraint("threshold > 0 AND threshold <= 1", name="threshold"),)


class Feedback(Base):
    """A verdict on a semantic hit: kept as a labelled pair for calibration."""

    __tablename__ = "pgcache_feedback"

    lookup_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    verdict: Mapped[str] = mapped_column(Text, nullable=False)
    namespace: Mapped[str] = mapped_column(Text, nullable=False)
    embedder: Mapped[str | None] = mapped_column(Text)
    entry_id: Mapped[int | None] = mapped_column(BigInteger)
    prompt: Mapped[str | None] = mapped_column(Text)
    entry_prompt: Mapped[str | None] = mapped_column(Text)
    similarity: Mapped[float | None] = mapped_column(Double)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())

    __table_args__ = (CheckConstraint("verdict IN ('right', 'wrong')", name="verdict"),)


class StoredVerifier(Base):
    """A learned verifier: LoRA weights over the bundled encoder, its threshold and held-out metrics."""

    __tablename__ = "pgcache_verifiers"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    namespace: Mapped[str] = mapped_column(Text, nullable=False)
    embedder: Mapped[str] = mapped_column(Text, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())
    threshold: Mapped[float] = mapped_column(Double, nullable=False)
    target_precision: Mapped[float | None] = mapped_column(Double)
    metrics: Mapped[dict] = mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))
    weights: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)

    __table_args__ = (
        UniqueConstraint("namespace", "embedder", "version"),
        CheckConstraint("threshold > 0 AND threshold < 1", name="threshold"),
    )


class Judgement(Base):
    """A verdict of the LLM judge on a semantic candidate, kept for training a verifier on it."""

    __tablename__ = "pgcache_judgements"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    lookup_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    namespace: Mapped[str] = mapped_column(Text, nullable=False)
    embedder: Mapped[str | None] = mapped_column(Text)
    judge: Mapped[str | None] = mapped_column(Text)
    prompt: Mapped[str] = mapped_column(Text, nullable=False)
    entry_prompt: Mapped[str] = mapped_column(Text, nullable=False)
    similarity: Mapped[float | None] = mapped_column(Double)
    verifier_probability: Mapped[float | None] = mapped_column(Double)
    verdict: Mapped[bool] = mapped_column(Boolean, nullable=False)

    __table_args__ = (Index("pgcache_judgements_namespace_idx", "namespace", "embedder", "at"),)


class Hook(Base):
    """An invalidation hook: a trigger on an application table retires the entries tagged with its changed rows.

    Installed and removed by the SQL functions ``pgcache_add_hook`` and
    ``pgcache_remove_hook`` (migration 0008), which also manage the triggers.
    """

    __tablename__ = "pgcache_hooks"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    table_name: Mapped[str] = mapped_column(Text, nullable=False)
    templates: Mapped[list] = mapped_column(JSONB, nullable=False)
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    mode: Mapped[str] = mapped_column(Text, nullable=False)
    namespace: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())

    __table_args__ = (CheckConstraint("mode IN ('delete', 'expire')", name="mode"),)


class Price(Base):
    """A price the savings reports use: a model's per million tokens, or the CPU's per hour (item ``cpu``)."""

    __tablename__ = "pgcache_prices"

    item: Mapped[str] = mapped_column(Text, primary_key=True)
    unit: Mapped[str] = mapped_column(Text, nullable=False)
    input: Mapped[float] = mapped_column(Double, nullable=False)
    output: Mapped[float] = mapped_column(Double, nullable=False, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())

    __table_args__ = (
        CheckConstraint("unit IN ('1M tokens', 'CPU hour')", name="unit"),
        CheckConstraint("input >= 0 AND output >= 0", name="price"),
    )
