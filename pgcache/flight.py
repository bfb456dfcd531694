"""Single-flight: how a request travels from a cache lookup to the LLM and back into the cache.

Every caller that may call the LLM (``Cache.chat``, the wrapped OpenAI
clients, an HTTP front end) drives a request through :class:`SingleFlight`
in the same steps::

    found = flights.begin(messages, model, params, options)  # a hit, or a Flight
    if isinstance(found, Flight) and found.contending:
        found = flights.wait(found)          # sync; async callers drive flights.contend()
    if isinstance(found, CacheResult):
        return found                         # served from the cache
    try:
        completion = call_the_llm()
    except BaseException as error:
        flights.abort(found, error)          # nothing stored, the lease released
        raise
    return flights.finish(found, completion) # stored (unless told not to), lease released

When several callers miss on the same exact key at once, one takes the key's
lease (a row in ``pgcache_inflight``, so this holds across processes and
machines) and asks the LLM; the others poll for its answer for up to
``single_flight_wait`` seconds, then ask the LLM themselves. A lease whose
holder died lapses after ``lease_seconds``. Every path writes exactly one
ledger record.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

from . import queries
from .backend import Backend, Unavailable
from .config import Settings
from .durations import parse_ttl
from .entries import Entries
from .errors import InvalidRequestError
from .keys import RequestKey, RequestKeys
from .ledger import LedgerWriter, LookupRecord
from .lookup import Finder, Row, find_exact, hit_result
from .options import UNSET, CallOptions
from .responses import completion_dict, content_of, usage_of
from .result import CacheResult

_log = logging.getLogger(__name__)


@dataclass
class Flight:
    """A request on its way to the LLM after a miss (or a bypass)."""

    key: RequestKey
    options: CallOptions
    record: LookupRecord
    vector: np.ndarray | None = None
    """The request's embedding from the lookup, stored with the answer."""
    storing: bool = True
    """Whether the answer will be stored."""
    leased: bool = False
    """Whether this caller holds the key's single-flight lease."""
    contending: bool = False
    """Whether single-flight comes next (:meth:`SingleFlight.wait` or :meth:`SingleFlight.contend`)."""
    llm_started: float = 0.0

    @property
    def model(self) -> str:
        return self.key.model

    @property
    def namespace(self) -> str:
        return self.key.namespace


def acquire_lease(conn: psycopg.Connection, exact_key: bytes, seconds: float) -> bool:
    return conn.execute(queries.ACQUIRE_LEASE, {"key": exact_key, "seconds": seconds}).fetchone() is not None


def poll_lease(conn: psycopg.Connection, exact_key: bytes) -> tuple[Row | None, bool]:
    """The stored entry for the key (or None) and whether another process still holds its lease."""
    found = conn.execute(queries.POLL_LEASE, {"key": exact_key}).fetchone()
    assert found is not None, "the poll's outer query always returns one row"
    *entry, leased = found
    return (Row(*entry) if entry[0] is not None else None), leased


def release_lease(conn: psycopg.Connection, exact_key: bytes) -> None:
    conn.execute(queries.RELEASE_LEASE, (exact_key,))


class SingleFlight:
    """The steps of a request that may go to the LLM; see the module's docstring."""

    def __init__(
        self,
        backend: Backend,
        finder: Finder,
        entries: Entries,
        ledger: LedgerWriter,
        keys: RequestKeys,
        settings: Settings,
    ) -> None:
        self.backend = backend
        self.finder = finder
        self.entries = entries
        self.ledger = ledger
        self.keys = keys
        self.ttl = settings.ttl
        self.enabled = settings.single_flight
        self.wait_seconds = settings.single_flight_wait
        self.bypass_nonzero_temperature = settings.bypass_nonzero_temperature
        self.lease_seconds = max(300.0, 2 * self.wait_seconds)

    def begin(
        self, messages: str | Sequence[Any], model: str | None, params: Mapping[str, Any], options: CallOptions
    ) -> CacheResult | Flight:
        """Key, bypass policy and both tiers: a hit to return, or the flight a miss continues with."""
        key = self.keys.key(messages, model, options.namespace, params)
        record = LookupRecord.start(key.model, key.namespace)
        flight = Flight(key, options, record, storing=not options.no_store)
        temperature = params.get("temperature")
        if self.bypass_nonzero_temperature and temperature is not None and temperature > 0:
            record.outcome, flight.storing = "bypass", False
            return self._depart(flight)
        if options.bypass:
            record.outcome = "bypass"
            return self._depart(flight)
        try:
            hit, flight.vector = self.backend.attempt(self.finder.find, key, record, options.threshold)
        except Unavailable as exc:
            # A miss the LLM answers, as the caller sees it; the reason stays in the ledger's error.
            record.error = exc.reason
            return self._depart(flight)
        if hit is not None:
            self.ledger.record(record)
            return hit
        flight.contending = self.enabled
        return self._depart(flight)

    def wait(self, flight: Flight) -> CacheResult | Flight:
        """:meth:`contend` for a synchronous caller: sleeps between polls."""
        steps = self.contend(flight)
        try:
            while True:
                time.sleep(next(steps))
        except StopIteration as done:
            return done.value

    def contend(self, flight: Flight) -> Generator[float, None, CacheResult | Flight]:
        """Take the key's lease (this caller then asks the LLM), or wait for the holder's answer.

        A generator that yields the seconds to sleep between polls and returns
        the hit or the flight; a sync caller sleeps, an async one awaits.
        """
        flight.contending = False
        key = flight.key.exact_key
        deadline = time.monotonic() + self.wait_seconds
        row: Row | None = None
        try:
            while row is None:
                if self.backend.attempt(self.backend.write, acquire_lease, key, self.lease_seconds):
                    flight.leased = True
                    # The answer may have been stored between our miss and the lease.
                    row = self.backend.attempt(self.backend.write, find_exact, key)
                    break
                delay = 0.01
                while True:
                    row, leased = self.backend.attempt(self.backend.write, poll_lease, key)
                    if row is not None or not leased:
                        break  # an answer; or the holder gave up without one: take over
                    if time.monotonic() >= deadline:
                        _log.info(
                            "pgcache: waited %.0fs for another caller's answer; asking the LLM", self.wait_seconds
                        )
                        return self._depart(flight)
                    yield delay
                    delay = min(delay * 1.5, 0.25)
        except Unavailable:
            return self._depart(flight)
        if row is None:
            return self._depart(flight)
        self._release(flight)
        hit = hit_result(row, "exact", flight.record)
        self.ledger.record(flight.record)
        return hit

    def finish(self, flight: Flight, completion: Any) -> CacheResult:
        """After the LLM answered: store the answer (unless told not to), release the lease, log the lookup."""
        record = flight.record
        record.llm_ms = (time.perf_counter() - flight.llm_started) * 1000
        try:
            response = completion_dict(completion, flight.model)
        except InvalidRequestError as exc:  # e.g. no choices: nothing to store, and the lease must go
            self.abort(flight, exc)
            raise
        record.prompt_tokens, record.completion_tokens, _ = usage_of(response)
        try:
            if flight.storing:
                options = flight.options
                ttl = self.ttl if options.ttl is UNSET else parse_ttl(options.ttl)
                record.entry_id = self.entries.keep_answer(flight.key, response, list(options.tags), ttl, flight.vector)
        finally:
            self._release(flight)
        self.ledger.record(record)
        return CacheResult(
            content=content_of(response),
            status="bypass" if record.outcome == "bypass" else "miss",
            similarity=None,
            entry_id=record.entry_id,
            response=response,
            model=flight.model,
            namespace=flight.namespace,
            lookup_id=record.id,
        )

    def abort(self, flight: Flight, error: BaseException) -> None:
        """The LLM call failed or was abandoned: nothing is stored, the lease is released."""
        flight.record.error = f"llm: {type(error).__name__}"
        self._release(flight)
        self.ledger.record(flight.record)

    def _depart(self, flight: Flight) -> Flight:
        # The LLM's time (the ledger's llm_ms) counts from here.
        flight.llm_started = time.perf_counter()
        return flight

    def _release(self, flight: Flight) -> None:
        if flight.leased:
            flight.leased = False
            # Unavailable: the lease lapses on its own.
            with contextlib.suppress(Unavailable):
                self.backend.attempt(self.backend.write, release_lease, flight.key.exact_key)
