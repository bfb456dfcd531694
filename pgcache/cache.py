"""The two-tier cache: exact key, then semantic neighbour, then the LLM."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import db, store
from .admin import CacheAdmin
from .breaker import CircuitBreaker
from .connections import Database
from .durations import parse_ttl
from .embedders import OpenAIEmbedder, embed_texts, threshold_for
from .errors import (
    ConfigurationError,
    DatabaseError,
    EmbedderError,
    InvalidRequestError,
    PgcacheError,
)
from .flight import Flight, Unavailable, new_record, takeoff
from .guard import DEFAULT_RULES
from .guard import rejects as guard_rejects
from .guard import select as select_rules
from .keys import RequestKey, request_key
from .ledger import LedgerWriter, LookupRecord
from .options import UNSET, CallOptions
from .prices import DEFAULT_PRICES
from .privacy import redact_request
from .responses import check_text, completion_dict, content_of, storable_json, usage_of
from .result import CacheResult
from .settings import DEFAULT_MODEL, DEFAULT_NAMESPACE, Settings
from .validation import (
    check_embedder,
    check_name,
    check_source,
    check_tags,
    check_threshold,
)

_log = logging.getLogger(__name__)
CALIBRATION_REFRESH_SECONDS = 60.0
_UNSET: Any = UNSET


class Cache(CacheAdmin):
    """A persistent LLM response cache on PostgreSQL + pgvector.

    Args:
        database_url: ``postgresql://`` or ``postgres://`` URL; ``None`` starts
            (or joins) the embedded PostgreSQL in ``data_dir``.
        embedder: any object with ``name``, ``dimensions`` and ``embed(texts)``;
            ``None`` uses OpenAI's text-embedding-3-small through ``llm``.
        llm: an ``openai.OpenAI`` client (or compatible) for misses; ``None``
            builds one from the SDK's environment variables when first needed.
        model: the default chat model.
        namespace: entries of different namespaces never serve each other.
        ttl: default lifetime of new entries (seconds, ``"12h"``, ``"7d"``…);
            ``None`` keeps them until invalidated.
        threshold: minimum cosine similarity for a semantic hit; ``None`` uses
            the embedder's default (0.92 for text-embedding-3-small).
        data_dir: data directory of the embedded server (default: per user).
        pool_size: most connections this cache opens at once.
        connect_timeout, statement_timeout: seconds before a database
            operation gives up (2 each: a dead database costs a caller little).
        prices: ``{model: (input, output)}`` dollars per million tokens, for
            reports; ``None`` uses :data:`pgcache.prices.DEFAULT_PRICES`.
        fail_open: when the database or the embedder fails, ``chat`` and
            ``lookup`` carry on without the cache (a circuit breaker skips it
            until it recovers) instead of raising.
        single_flight: when several callers miss on the same key at once, one
            asks the LLM and the others wait up to ``single_flight_wait``
            seconds for its answer. The lease lives in PostgreSQL, so this
            holds across processes and machines.
        bypass_nonzero_temperature: neither look up nor store requests whose
            ``temperature`` is above 0 (default: cache every request).
        guard, sure, guard_rules: a semantic candidate whose similarity is at
            least the threshold but below ``sure`` (default 1: every candidate)
            is served only if the offline guard (:mod:`pgcache.guard`) finds no
            difference that embeddings miss. ``guard_rules`` names the rules
            (default :data:`pgcache.guard.DEFAULT_RULES`, the ones that paid in
            docs/semantic-quality.md; also "numbers", "negation", "opposites",
            "entities", "question type").
        judge: an optional second verifier for the band, e.g.
            ``pgcache.judge.LLMJudge(client, model="gpt-4o-mini")``: asked after
            the guard passes; its "no", error or timeout makes a miss.
        read_database_url: where lookups read (exact and semantic finds,
            calibrated thresholds), e.g. a streaming replica; every write stays
            on ``database_url``. When it fails, lookups use the primary.
        store_prompts: ``False`` keeps prompt text out of the database: the
            ``prompt`` column and the ledger's stay NULL and the stored request
            holds SHA-256 digests of the messages. Candidates in the
            verification band then cannot be verified and are misses.
    """

    def __init__(
        self,
        database_url: str | None = None,
        embedder: Any = None,
        llm: Any = None,
        model: str = DEFAULT_MODEL,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: Any = None,
        threshold: float | None = None,
        *,
        data_dir: str | Path | None = None,
        pool_size: int = 10,
        connect_timeout: float = 2.0,
        statement_timeout: float = 2.0,
        prices: Mapping[str, tuple[float, float]] | None = None,
        fail_open: bool = True,
        single_flight: bool = True,
        single_flight_wait: float = 30.0,
        bypass_nonzero_temperature: bool = False,
        guard: bool = True,
        sure: float = 1.0,
        judge: Any = None,
        guard_rules: Iterable[str] | None = None,
        read_database_url: str | None = None,
        store_prompts: bool = True,
    ) -> None:
        self.database_url = db.normalize_url(database_url) if database_url else None
        self.read_database_url = db.normalize_url(read_database_url) if read_database_url else None
        self.store_prompts = store_prompts
        self.data_dir = Path(data_dir) if data_dir else None
        self.model = check_name(model, "model")
        self.namespace = check_name(namespace, "namespace")
        self.ttl = parse_ttl(ttl)
        self._threshold = None if threshold is None else check_threshold(threshold)
        if embedder is not None:
            check_embedder(embedder)
        self._embedder = embedder
        self._llm = llm
        self.prices = dict(DEFAULT_PRICES if prices is None else prices)
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigurationError(f"pool_size must be a positive integer, got {pool_size!r}")
        self._pool_options = {
            "max_size": pool_size,
            "connect_timeout": connect_timeout,
            "statement_timeout": statement_timeout,
        }
        self.fail_open = fail_open
        self.single_flight = single_flight
        self.single_flight_wait = float(single_flight_wait)
        self.lease_seconds = max(300.0, 2 * self.single_flight_wait)
        self.bypass_nonzero_temperature = bypass_nonzero_temperature
        self.guard = guard
        self.guard_rules = select_rules(DEFAULT_RULES if guard_rules is None else guard_rules)
        self.sure = check_threshold(sure)
        self.judge = judge
        self.breaker = CircuitBreaker()
        """Trips while the database fails; ``breaker.failures`` and ``breaker.skipped`` count."""
        self.embedder_breaker = CircuitBreaker()
        self.read_breaker = CircuitBreaker(subject="read database", fallback="lookups read the primary",
                                           recovery="lookups read it again")
        """Trips while the read database fails; lookups then go to the primary."""
        self._db: Database | None = None
        self._read_db: Database | None = None
        self._read_finalizer: weakref.finalize | None = None
        self._ledger: LedgerWriter | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._calibrated: dict[tuple[str, str], tuple[float, Any]] = {}
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, llm: Any = None, **overrides: Any) -> Cache:
        """A cache configured from ``PGCACHE_*`` variables; keyword arguments override them."""
        settings = Settings.from_env(environ)
        options: dict[str, Any] = {
            "database_url": settings.database_url,
            "data_dir": settings.data_dir,
            "model": settings.model,
            "namespace": settings.namespace,
            "ttl": settings.ttl,
            "threshold": settings.threshold,
            "prices": settings.prices,
            "connect_timeout": settings.connect_timeout,
            "statement_timeout": settings.statement_timeout,
            "single_flight_wait": settings.single_flight_wait,
            "bypass_nonzero_temperature": settings.bypass_nonzero_temperature,
            "guard": settings.guard,
            "sure": settings.sure,
            "read_database_url": settings.read_database_url,
            "store_prompts": settings.store_prompts,
        }
        if settings.judge_model:
            from .judge import LLMJudge

            options["judge"] = LLMJudge(client=llm, model=settings.judge_model)
        options.update(overrides)
        if options.get("embedder") is None:
            options["embedder"] = settings.make_embedder(client=llm)
        return cls(llm=llm, **options)

    # -- configuration ------------------------------------------------------

    @property
    def embedder(self) -> Any:
        with self._lock:
            if self._embedder is None:
                self._embedder = OpenAIEmbedder(client=self._llm)
            return self._embedder

    @property
    def llm(self) -> Any:
        with self._lock:
            if self._llm is None:
                import openai

                self._llm = openai.OpenAI()
            return self._llm

    @property
    def executor(self) -> ThreadPoolExecutor:
        """Threads on which async callers (``pgcache.wrap(AsyncOpenAI())``) run the cache's blocking work."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self._pool_options["max_size"] + 2,
                                                    thread_name_prefix="pgcache")
            return self._executor

    @property
    def threshold(self) -> float:
        """Minimum cosine similarity for a semantic hit in the cache's namespace."""
        return self.threshold_in_force()[0]

    def threshold_in_force(self, namespace: str | None = None) -> tuple[float, str]:
        """The threshold for ``namespace`` and where it comes from.

        In order: the ``threshold`` this cache was given; the one ``pgcache
        calibrate`` stored for the namespace and embedder (re-read at most once
        a minute); the embedder's default.
        """
        if self._threshold is not None:
            return self._threshold, "configured"
        embedder = self.embedder
        namespace = self.namespace if namespace is None else namespace
        cache_key = (namespace, embedder.name)
        cached = self._calibrated.get(cache_key)
        if cached is None or time.monotonic() - cached[0] > CALIBRATION_REFRESH_SECONDS:
            try:
                row = self._guard(self._read, store.calibrated_threshold, namespace, embedder.name)
            except Unavailable:
                row = cached[1] if cached else None
            cached = (time.monotonic(), row)
            self._calibrated[cache_key] = cached
        if cached[1] is not None:
            value, source, when = cached[1]
            return value, f"calibrated on {source} at {when:%Y-%m-%d %H:%M} UTC"
        return threshold_for(embedder), f"default for {embedder.name}"

    def database(self) -> Database:
        """The connection pool, opened (and the embedded schema migrated) on first use."""
        with self._lock:
            if self._db is None:
                url, embedded = db.resolve_url(self.database_url, self.data_dir)
                db.check_schema(url, auto_upgrade=embedded)
                self._db = Database(url, **self._pool_options)
                self._ledger = LedgerWriter(self._db)
                # Queued ledger rows are written even when the cache is never closed.
                self._finalizer = weakref.finalize(self, _shutdown, self._ledger, self._db)
            return self._db

    def read_database(self) -> Database | None:
        """The pool lookups read from (``read_database_url``), or None when there is none.

        Its schema is not checked: a replica cannot be migrated, and a query
        that fails there is retried on the primary.
        """
        if self.read_database_url is None:
            return None
        with self._lock:
            if self._read_db is None:
                self._read_db = Database(self.read_database_url, application_name="pgcache-read",
                                         **self._pool_options)
                self._read_finalizer = weakref.finalize(self, self._read_db.close)
            return self._read_db

    @property
    def url(self) -> str:
        """URL of the cache database (the embedded server's when none was given)."""
        return self.database().url

    # -- public API ---------------------------------------------------------

    def lookup(
        self,
        prompt_or_messages: str | Sequence[Any],
        model: str | None = None,
        *,
        namespace: str | None = None,
        threshold: float | None = None,
        **params: Any,
    ) -> CacheResult | None:
        """The cached answer for a request, or ``None``; never calls the LLM.

        With ``fail_open`` a failing database counts as a miss (``None``).
        """
        key, model, namespace = self._key(prompt_or_messages, model, namespace, params)
        threshold = None if threshold is None else check_threshold(threshold)
        record = new_record(model, namespace)
        try:
            hit, _ = self._guard(self._find, key, record, threshold)
        except Unavailable as exc:
            hit, record.outcome, record.error = None, "error", exc.reason
        self._record(record)
        return hit

    def store(
        self,
        prompt_or_messages: str | Sequence[Any],
        response: Any,
        model: str | None = None,
        ttl: Any = _UNSET,
        tags: Iterable[str] | None = None,
        *,
        namespace: str | None = None,
        source: str = "manual",
        **params: Any,
    ) -> int:
        """Store an answer (text, dict or ``ChatCompletion``) for a request; return the entry id.

        ``params`` are the request's generation parameters, so that a later
        ``chat(..., **params)`` with the same values finds it. An existing entry
        with the same exact key is replaced.
        """
        return self.store_many([(prompt_or_messages, response)], model, ttl, tags,
                               namespace=namespace, source=source, **params)[0]

    def store_many(
        self,
        items: Iterable[tuple[str | Sequence[Any], Any]],
        model: str | None = None,
        ttl: Any = _UNSET,
        tags: Iterable[str] | None = None,
        *,
        namespace: str | None = None,
        source: str = "warm",
        **params: Any,
    ) -> list[int]:
        """Store many ``(prompt_or_messages, response)`` pairs with one embedding batch."""
        check_source(source)
        lifetime = self.ttl if ttl is _UNSET else parse_ttl(ttl)
        tag_list = check_tags(tags)
        entries: list[store.NewEntry] = []
        prompts: list[str | None] = []  # the keys' prompts: entries hold none with store_prompts=False
        for prompt_or_messages, response in _pairs(items):
            key, model_name, ns = self._key(prompt_or_messages, model, namespace, params)
            entries.append(self._entry(key, model_name, ns, completion_dict(response, model_name),
                                       tag_list, source, lifetime))
            prompts.append(key.prompt)
        if not entries:
            return []
        embeddable = [i for i, prompt in enumerate(prompts) if _embeddable(prompt)]
        if embeddable:
            matrix = embed_texts(self.embedder, [prompts[i] for i in embeddable])
            for i, vector in zip(embeddable, matrix):
                entries[i].embedder, entries[i].embedding = self.embedder.name, vector
        # Same lock order in every writer, so concurrent batches cannot deadlock.
        order = sorted(range(len(entries)), key=lambda i: entries[i].exact_key)
        with self.database().connection() as conn:
            ids = store.insert_entries(conn, [entries[i] for i in order])
        by_position = dict(zip(order, ids))
        return [by_position[i] for i in range(len(entries))]

    def contains_many(
        self, requests: Iterable[tuple[str | Sequence[Any], str | None]], model: str | None = None, **params: Any
    ) -> list[bool]:
        """For ``(prompt_or_messages, namespace)`` pairs: whether each has a live entry (exact key)."""
        keys = [self._key(request, model, namespace, params)[0].exact_key for request, namespace in requests]
        if not keys:
            return []
        with self.database().connection() as conn:
            live = store.live_keys(conn, keys)
        return [key in live for key in keys]

    def chat(
        self,
        messages: str | Sequence[Any],
        model: str | None = None,
        *,
        ttl: Any = _UNSET,
        tags: Iterable[str] | None = None,
        namespace: str | None = None,
        threshold: float | None = None,
        bypass: bool = False,
        no_store: bool = False,
        **params: Any,
    ) -> CacheResult:
        """Answer a chat request: exact hit, else semantic hit, else call the LLM and store its answer.

        ``params`` are passed to ``chat.completions.create`` unchanged; those
        that can change the answer are part of the cache key. ``bypass`` skips
        the lookup (the answer still replaces the entry); ``no_store`` keeps
        the answer out of the cache.
        """
        if params.get("stream"):
            raise InvalidRequestError("chat() does not stream; use pgcache.wrap(client) for streaming")
        options = CallOptions.build(ttl=ttl, tags=tags, namespace=namespace, threshold=threshold,
                                    bypass=bypass, no_store=no_store)
        flight = self._begin(messages, model, params, options)
        if isinstance(flight, CacheResult):
            return flight
        sent = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
        try:
            completion = self.llm.chat.completions.create(model=flight.model, messages=sent, **params)
        except BaseException as exc:
            self._abort(flight, exc)
            raise
        return self._finish(flight, completion)

    def query(self, prompt: str, model: str | None = None, **kwargs: Any) -> CacheResult:
        """``chat`` for a single user message."""
        if not isinstance(prompt, str):
            raise InvalidRequestError(f"prompt must be a string, got {type(prompt).__name__}")
        return self.chat([{"role": "user", "content": prompt}], model, **kwargs)

    def flush(self) -> None:
        """Write queued ledger rows and hit counts now."""
        if self._ledger is not None:
            self._ledger.flush()

    def close(self) -> None:
        """Flush the ledger and close the connection pool."""
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            if self._finalizer is not None:
                self._finalizer()
                self._db = self._ledger = self._finalizer = None
            if self._read_finalizer is not None:
                self._read_finalizer()
                self._read_db = self._read_finalizer = None

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- internals ----------------------------------------------------------

    def _key(self, prompt_or_messages, model, namespace, params) -> tuple[RequestKey, str, str]:
        model = self.model if model is None else check_name(model, "model")
        namespace = self.namespace if namespace is None else check_name(namespace, "namespace")
        return request_key(prompt_or_messages, model=model, namespace=namespace, params=params), model, namespace

    def _begin(self, messages, model, params, options: CallOptions) -> CacheResult | Flight:
        """Everything before the LLM call: a hit to return, or the flight a miss continues with."""
        found = self._look_up(messages, model, params, options)
        if isinstance(found, Flight) and found.contend:
            steps = self._contend(found)
            try:
                while True:
                    time.sleep(next(steps))
            except StopIteration as done:
                found = done.value
        return found

    def _look_up(self, messages, model, params, options: CallOptions) -> CacheResult | Flight:
        """Key, bypass policy and both tiers; a miss comes back as a Flight (``contend``: single-flight next)."""
        key, model, namespace = self._key(messages, model, options.namespace, params)
        record = new_record(model, namespace)
        flight = Flight(key, model, namespace, options, record)
        temperature = params.get("temperature")
        if self.bypass_nonzero_temperature and temperature is not None and temperature > 0:
            record.outcome, flight.store = "bypass", False
            return takeoff(flight)
        if options.bypass:
            record.outcome, flight.store = "bypass", not options.no_store
            return takeoff(flight)
        flight.store = not options.no_store
        try:
            hit, flight.vector = self._guard(self._find, key, record, options.threshold)
        except Unavailable as exc:
            record.outcome, record.error = "error", exc.reason
            return takeoff(flight)
        if hit is not None:
            self._record(record)
            return hit
        flight.contend = self.single_flight
        return takeoff(flight)

    def _contend(self, flight: Flight):
        """Single-flight, as a generator that yields the seconds to sleep and returns the hit or the flight.

        Take the key's lease (then this caller asks the LLM), or wait for the
        holder's answer; a sync caller sleeps, an async one awaits.
        """
        flight.contend = False
        key = flight.key.exact_key
        deadline = time.monotonic() + self.single_flight_wait
        try:
            while True:
                if self._guard(self._with_conn, store.acquire_lease, key, self.lease_seconds):
                    flight.leased = True
                    # The answer may have been stored between our miss and the lease.
                    row = self._guard(self._with_conn, store.find_exact, key)
                    break
                delay = 0.01
                while True:
                    row, leased = self._guard(self._with_conn, store.poll_lease, key)
                    if row is not None or not leased:
                        break  # an answer; or the holder gave up without one: take over
                    if time.monotonic() >= deadline:
                        _log.info("pgcache: waited %.0fs for another caller's answer; asking the LLM",
                                  self.single_flight_wait)
                        return takeoff(flight)
                    yield delay
                    delay = min(delay * 1.5, 0.25)
                if row is not None:
                    break
        except Unavailable:
            return takeoff(flight)
        if row is None:
            return takeoff(flight)
        self._release(flight)
        hit = self._hit(row, "exact", flight.record)
        self._record(flight.record)
        return hit

    def _finish(self, flight: Flight, completion: Any) -> CacheResult:
        """After the LLM answered: store the answer (unless told not to), release the lease, log the lookup."""
        record = flight.record
        record.llm_ms = (time.perf_counter() - flight.llm_started) * 1000
        try:
            response = completion_dict(completion, flight.model)
        except InvalidRequestError as exc:  # e.g. no choices: nothing to store, and the lease must go
            self._abort(flight, exc)
            raise
        record.prompt_tokens, record.completion_tokens, _ = usage_of(response)
        try:
            if flight.store:
                entry = self._entry(flight.key, flight.model, flight.namespace, response, list(flight.options.tags),
                                    "llm", self.ttl if flight.options.ttl is _UNSET else parse_ttl(flight.options.ttl))
                if flight.vector is not None:
                    entry.embedder, entry.embedding = self.embedder.name, flight.vector
                record.entry_id = self._guard(self._insert, entry)
        except Unavailable:
            pass
        except InvalidRequestError as exc:
            # The answer is paid for and correct; failing to cache it must not lose it.
            _log.warning("pgcache: answer not stored: %s", exc)
        finally:
            self._release(flight)
        self._record(record)
        return CacheResult(
            content=content_of(response), status="bypass" if record.outcome == "bypass" else "miss",
            similarity=None, entry_id=record.entry_id, response=response, model=flight.model,
            namespace=flight.namespace, lookup_id=record.id,
        )

    def _abort(self, flight: Flight, error: BaseException) -> None:
        """The LLM call failed or was abandoned: nothing is stored."""
        flight.record.error = f"llm: {type(error).__name__}"
        self._release(flight)
        self._record(flight.record)

    def _guard(self, operation, *args):
        """Run a database operation; with ``fail_open``, failures trip the breaker and raise :class:`Unavailable`."""
        if not self.fail_open:
            return operation(*args)
        if not self.breaker.allow():
            raise Unavailable("database: skipped while unavailable")
        try:
            value = operation(*args)
        except DatabaseError as exc:
            self.breaker.failure(exc)
            raise Unavailable(f"database: {type(exc).__name__}") from exc
        self.breaker.success()
        return value

    def _record(self, record: LookupRecord) -> None:
        if self._ledger is None:  # a bypass can come before anything opened the database
            try:
                self._guard(self.database)
            except (Unavailable, PgcacheError):
                return
        self._ledger.record(record)

    def _find(self, key: RequestKey, record: LookupRecord, threshold: float | None) -> tuple[CacheResult | None, Any]:
        """Exact tier, then semantic tier; returns the hit (or None) and the query vector, filling ``record``."""
        started = time.perf_counter()
        row = self._read(store.find_exact, key.exact_key)
        vector = None
        status = "exact"
        if row is None and _embeddable(key.prompt):
            vector = self._embed_query(key.prompt, record)
        if vector is not None:
            embedder = self.embedder
            if threshold is None:  # resolved only here: an exact hit never needs it
                threshold = self.threshold_in_force(record.namespace)[0]
            record.embedder, record.threshold = embedder.name, threshold
            row = self._read(store.find_nearest, key.scope_key, embedder.name, vector)
            if row is not None:
                record.similarity, record.candidate_id = row.similarity, row.id
                if row.similarity < threshold:
                    row = None
                elif row.min_similarity is not None and row.similarity < row.min_similarity:
                    record.rejected_by, row = "feedback: entry threshold", None
                elif row.similarity < self.sure:
                    # The verification band: close enough to hit, not so close as to be sure.
                    rejected = self._verify(key.prompt, row.prompt, record)
                    if rejected is not None:
                        record.rejected_by, row = rejected, None
            status = "semantic"
        record.latency_ms = (time.perf_counter() - started) * 1000
        if row is None:
            return None, vector
        if status == "semantic" and self.store_prompts:
            record.prompt = key.prompt  # so that feedback on this hit can keep the pair
        return self._hit(row, status, record), vector

    def _verify(self, prompt: str, cached: str | None, record: LookupRecord) -> str | None:
        """Why a candidate in the band is refused (offline guard first, then the LLM judge), or None."""
        if cached is None:
            # Stored without its prompt (store_prompts=False): there is nothing to verify against,
            # so when verification is asked for, the candidate is refused rather than waved through.
            verifies = (self.guard and bool(self.guard_rules)) or self.judge is not None
            return "unverifiable: no stored prompt" if verifies else None
        if self.guard:
            rule = guard_rejects(prompt, cached, self.guard_rules)
            if rule is not None:
                return f"guard: {rule}"
        if self.judge is not None:
            verdict = self.judge.verify(prompt, cached)
            record.judge_tokens = verdict.prompt_tokens + verdict.completion_tokens
            if not verdict.same:
                return f"judge: {verdict.error}" if verdict.error else "judge"
        return None

    def _embed_query(self, prompt: str, record: LookupRecord) -> Any:
        """The prompt's vector, or None when the embedder is failing (fail-open: exact tier only)."""
        if not self.fail_open:
            return embed_texts(self.embedder, [prompt])[0]
        if not self.embedder_breaker.allow():
            return None
        try:
            vector = embed_texts(self.embedder, [prompt])[0]
        except EmbedderError as exc:
            self.embedder_breaker.failure(exc)
            record.error = "embedder: unavailable"
            return None
        self.embedder_breaker.success()
        return vector

    def _hit(self, row: store.Row, status: str, record: LookupRecord) -> CacheResult:
        record.outcome, record.entry_id = status, row.id
        record.prompt_tokens, record.completion_tokens = row.prompt_tokens, row.completion_tokens
        return CacheResult(
            content=content_of(row.response), status=status,
            similarity=row.similarity if status == "semantic" else None, entry_id=row.id,
            response=row.response, model=record.model, namespace=record.namespace, lookup_id=record.id,
        )

    def _release(self, flight: Flight) -> None:
        if flight.leased:
            flight.leased = False
            try:
                self._guard(self._with_conn, store.release_lease, flight.key.exact_key)
            except Unavailable:
                pass  # the lease lapses on its own

    def _with_conn(self, function, *args):
        with self.database().connection() as conn:
            return function(conn, *args)

    def _read(self, function, *args):
        """Run a lookup query on the read database; on the primary when there is none or it fails."""
        if self.read_database_url is not None and self.read_breaker.allow():
            try:
                with self.read_database().connection() as conn:
                    value = function(conn, *args)
            except DatabaseError as exc:
                self.read_breaker.failure(exc)
            else:
                self.read_breaker.success()
                return value
        return self._with_conn(function, *args)

    def _insert(self, entry: store.NewEntry) -> int:
        with self.database().connection() as conn:
            return store.insert_entries(conn, [entry])[0]

    def _entry(self, key, model, namespace, response, tags, source, ttl) -> store.NewEntry:
        """A row to insert, its JSON checked before any embedding is paid for."""
        if key.prompt is not None:
            check_text(key.prompt, "prompt")
        prompt_tokens, completion_tokens, total_tokens = usage_of(response)
        request = key.request if self.store_prompts else redact_request(key.request)
        return store.NewEntry(
            namespace=namespace, exact_key=key.exact_key, scope_key=key.scope_key, model=model,
            prompt=key.prompt if self.store_prompts else None, request=storable_json(request, "request"),
            response=storable_json(response, "response"),
            tags=tags, source=source, ttl=ttl, prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, total_tokens=total_tokens,
        )


def _pairs(items: Any) -> list[tuple[Any, Any]]:
    """``items`` as a list of ``(prompt_or_messages, response)`` pairs, or a clear error."""
    if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
        raise InvalidRequestError(
            f"items must be an iterable of (prompt_or_messages, response) pairs, got {type(items).__name__}")
    pairs = []
    for position, item in enumerate(items):
        if isinstance(item, (str, bytes)) or not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InvalidRequestError(
                f"items[{position}] must be a (prompt_or_messages, response) pair, got {type(item).__name__}")
        pairs.append((item[0], item[1]))
    return pairs


def _embeddable(prompt: str | None) -> bool:
    return prompt is not None and bool(prompt.strip())


def _shutdown(ledger: LedgerWriter | None, database: Database) -> None:
    if ledger is not None:
        ledger.close()
    database.close()
