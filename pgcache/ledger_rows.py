"""The ledger's rows: a lookup (``pgcache_lookups``) and an LLM judge's verdict (``pgcache_judgements``)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from . import queries


@dataclass(slots=True)
class LookupRecord:
    """One row of ``pgcache_lookups``."""

    id: uuid.UUID
    at: datetime
    namespace: str
    model: str
    outcome: str
    entry_id: int | None
    embedder: str | None
    similarity: float | None
    threshold: float | None
    latency_ms: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    candidate_id: int | None = None
    llm_ms: float | None = None
    rejected_by: str | None = None
    prompt: str | None = None
    """The request's text, kept for semantic hits (feedback turns it into a labelled pair) and misses."""
    judge_tokens: int | None = None
    verifier_probability: float | None = None
    """The learned verifier's probability for the nearest candidate, when it scored one."""
    verifier_scores: list[dict[str, Any]] | None = None
    """Every candidate the verifier scored: entry id, similarity, probability."""
    tokens_estimated: bool | None = None
    """A hit whose saved token counts were estimated when the entry was stored (it came without usage)."""
    embedding_tokens: int | None = None
    """Tokens the embeddings API reported for embedding the request (None for a local model)."""
    embedding_ms: float | None = None
    judge_model: str | None = None
    judge_completion_tokens: int | None = None
    """Of ``judge_tokens``, those the judge answered with (priced at the output rate)."""
    verifier_ms: float | None = None
    """CPU time the learned verifier spent scoring this lookup's candidates."""

    @classmethod
    def start(cls, model: str, namespace: str) -> LookupRecord:
        """The record of a lookup that begins now; a miss until a tier finds something."""
        return cls(
            id=uuid.uuid4(),
            at=datetime.now(UTC),
            namespace=namespace,
            model=model,
            outcome="miss",
            entry_id=None,
            embedder=None,
            similarity=None,
            threshold=None,
            latency_ms=0.0,
        )

    def params(self) -> dict[str, Any]:
        """The row's values by column name."""
        values = {name: getattr(self, name) for name in LOOKUP_COLUMNS}
        if self.verifier_scores is not None:
            values["verifier_scores"] = Jsonb(self.verifier_scores)
        return values


@dataclass(slots=True)
class Judgement:
    """One row of ``pgcache_judgements``: the LLM judge's verdict on a candidate, kept to train a verifier on."""

    at: datetime
    lookup_id: uuid.UUID
    namespace: str
    embedder: str | None
    judge: str | None
    prompt: str
    entry_prompt: str
    similarity: float
    verifier_probability: float | None
    verdict: bool

    def params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in JUDGEMENT_COLUMNS}


LOOKUP_COLUMNS = tuple(field.name for field in fields(LookupRecord))
JUDGEMENT_COLUMNS = tuple(field.name for field in fields(Judgement))
# Bound by name, from the records' own fields: reordering a field cannot shift a column.
# A row already stored (a batch written again after an outage) is skipped; the ids inserted come back.
INSERT_LOOKUP = queries.insert_named("pgcache_lookups", LOOKUP_COLUMNS) + " ON CONFLICT (id) DO NOTHING RETURNING id"
INSERT_JUDGEMENT = queries.insert_named("pgcache_judgements", JUDGEMENT_COLUMNS)
