"""A request on its way from a cache miss to the LLM, and what it records."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .keys import RequestKey
from .ledger import LookupRecord
from .options import CallOptions


class Unavailable(Exception):
    """The cache database was skipped or failed; the call goes on without it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Flight:
    """A request on its way to the LLM after a miss (or a bypass)."""

    key: RequestKey
    model: str
    namespace: str
    options: CallOptions
    record: LookupRecord
    vector: Any = None
    store: bool = True
    leased: bool = False
    contend: bool = False
    llm_started: float = 0.0


def takeoff(flight: Flight) -> Flight:
    flight.llm_started = time.perf_counter()
    return flight


def new_record(model: str, namespace: str) -> LookupRecord:
    return LookupRecord(
        id=uuid.uuid4(), at=datetime.now(timezone.utc), namespace=namespace, model=model,
        outcome="miss", entry_id=None, embedder=None, similarity=None, threshold=None, latency_ms=0.0,
    )
