"""What a cache lookup or chat call returns."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["exact", "semantic", "miss", "bypass"]


@dataclass(frozen=True, slots=True)
class CacheResult:
    """An answer and where it came from.

    ``similarity`` is the cosine similarity (1 − pgvector's cosine distance)
    between the request and the entry that served it: set for semantic hits,
    ``None`` for exact hits and misses.
    """

    content: str
    status: Status
    similarity: float | None
    entry_id: int | None
    response: dict[str, Any]
    """The full chat completion as stored (OpenAI's JSON shape)."""
    model: str
    namespace: str
    lookup_id: uuid.UUID | None = None
    """Id of this lookup's row in ``pgcache_lookups``."""

    @property
    def cached(self) -> bool:
        """True when the answer came from the cache."""
        return self.status in ("exact", "semantic")

    def completion(self):
        """The response as an ``openai`` ``ChatCompletion`` object."""
        from openai.types.chat import ChatCompletion

        return ChatCompletion.model_validate(self.response)
