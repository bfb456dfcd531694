"""The cache's public face: :class:`Cache` composes the parts that do the work.

Settings come from :mod:`pgcache.config`; the databases from
:mod:`pgcache.backend`; lookups from :mod:`pgcache.lookup` and
:mod:`pgcache.verify`; new entries from :mod:`pgcache.entries`; the way to the
LLM and back from :mod:`pgcache.flight`; maintenance and reports from
:mod:`pgcache.admin`. docs/architecture.md draws the map.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, Self, TypeVar, overload

from . import db, embedded
from .admin import Admin
from .backend import Backend, Unavailable
from .config import UNSET, Settings
from .connections import Database
from .durations import parse_ttl
from .entries import Entries
from .errors import InvalidRequestError
from .flight import SingleFlight
from .keys import RequestKey, RequestKeys
from .ledger import LedgerWriter, LookupRecord
from .lookup import Finder, Thresholds
from .options import CallOptions
from .result import CacheResult
from .spool import default_spool_dir, spool_dir_for
from .validation import check_embedder, check_source, check_tags, check_threshold
from .verifiers import Verifiers
from .verify import build_verifier
from .warm import WarmResult, warm_file

P = ParamSpec("P")
R = TypeVar("R")


class _Forward(Generic[P, R]):
    """A facade method that is a method of one of the cache's parts: same signature, same docstring."""

    def __init__(self, part: str, method: Callable[Concatenate[Any, P], R]) -> None:
        self.part, self.name, self.__doc__ = part, method.__name__, method.__doc__

    @overload
    def __get__(self, cache: None, owner: type) -> _Forward[P, R]: ...
    @overload
    def __get__(self, cache: object, owner: type) -> Callable[P, R]: ...
    def __get__(self, cache: object, owner: type) -> Any:
        return self if cache is None else getattr(getattr(cache, self.part), self.name)


class Cache:
    """A persistent LLM response cache on PostgreSQL + pgvector.

    Every setting of :mod:`pgcache.config` is an argument: the first seven
    by position or name, the others by name (``pool_size=20``,
    ``fail_open=False``, ``guard_rules=[...]``, ``sure_threshold=0.97``…). An
    argument given wins, else the setting's ``PGCACHE_*`` variable (of
    ``environ``, default ``os.environ``), else its default; the README's
    configuration table lists them all.

    Args:
        database_url: ``postgresql://`` or ``postgres://`` URL; ``None`` starts
            (or joins) the embedded PostgreSQL in ``data_dir``.
        embedder: an object with ``name``, ``dimensions`` and ``embed(texts)``,
            or ``"openai"`` / ``"local"``; default: the ``embedder`` setting.
        llm: an ``openai.OpenAI`` client (or compatible) for misses; ``None``
            builds one from the SDK's environment variables when first needed.
        model, namespace, ttl, threshold: see :mod:`pgcache.config`.
        judge: an LLM judge object (default: the ``judge_model`` setting's).
    """

    def __init__(
        self,
        database_url: Any = UNSET,
        embedder: Any = None,
        llm: Any = None,
        model: Any = UNSET,
        namespace: Any = UNSET,
        ttl: Any = UNSET,
        threshold: Any = UNSET,
        *,
        judge: Any = None,
        environ: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> None:
        given = {
            "database_url": database_url,
            "model": model,
            "namespace": namespace,
            "ttl": ttl,
            "threshold": threshold,
        }
        if isinstance(embedder, str):
            given["embedder"], embedder = embedder, None
        self.settings = s = Settings.resolve({**given, **settings}, environ)
        if embedder is not None:
            check_embedder(embedder)
        self._llm = llm
        self.embedder = embedder if embedder is not None else s.make_embedder(client=llm)
        self.judge = judge if judge is not None else s.make_judge(client=llm)
        self.backend = Backend(s)
        self.breaker, self.read_breaker = self.backend.breaker, self.backend.read_breaker
        # Bound to the backend, not to the cache, so that the finalizer below can collect the cache.
        self.ledger = LedgerWriter(
            functools.partial(self.backend.attempt, self.backend.database),
            spool_dir=spool_dir_for(s.ledger_spool_dir or default_spool_dir(), _database_identity(s)),
            spool_rows=s.ledger_spool_rows,
        )
        self.thresholds = Thresholds(self.backend, self.embedder, s.threshold)
        self.keys = RequestKeys(s.model, s.namespace)
        self.verifiers = Verifiers(self.backend, self.embedder, s.verifier, s.verifier_threshold)
        verifier = build_verifier(s, self.judge, self.ledger.record, breaker=self.verifiers.breaker)
        self.finder = Finder(
            self.backend,
            self.embedder,
            self.thresholds,
            verifier,
            store_prompts=s.store_prompts,
            verifiers=self.verifiers,
            verifier_floor=s.verifier_floor,
            verifier_candidates=s.verifier_candidates,
        )
        self.entries = Entries(self.backend, self.embedder, self.keys, store_prompts=s.store_prompts)
        self.flights = SingleFlight(self.backend, self.finder, self.entries, self.ledger, self.keys, s)
        self.admin = Admin(self.backend, self.embedder, self.thresholds, self.ledger, s, self.verifiers)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # Queued ledger rows are written even when the cache is never closed.
        self._finalizer = weakref.finalize(self, _shutdown, self.ledger, self.backend)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, llm: Any = None, **arguments: Any) -> Cache:
        """``Cache(llm=llm, **arguments)`` with the variables of ``environ`` (default: ``os.environ``)."""
        return cls(llm=llm, environ=environ, **arguments)

    model = property(lambda self: self.settings.model, doc="The default chat model.")
    namespace = property(lambda self: self.settings.namespace, doc="The default namespace.")
    ttl = property(lambda self: self.settings.ttl, doc="Default lifetime of new entries in seconds (None: never).")
    database_url = property(lambda self: self.backend.database_url, doc="The configured database URL, normalised.")
    read_database_url = property(
        lambda self: self.backend.read_database_url, doc="Where lookups read, if not the primary."
    )

    @property
    def llm(self) -> Any:
        """The client that answers misses (``openai.OpenAI()`` unless one was given)."""
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
                self._executor = ThreadPoolExecutor(
                    max_workers=self.settings.pool_size + 2, thread_name_prefix="pgcache"
                )
            return self._executor

    @property
    def threshold(self) -> float:
        """Minimum cosine similarity for a semantic hit in the cache's namespace."""
        return self.threshold_in_force()[0]

    def threshold_in_force(self, namespace: str | None = None) -> tuple[float, str]:
        """The threshold for ``namespace`` (default: the cache's) and where it comes from."""
        return self.thresholds.in_force(self.namespace if namespace is None else namespace)

    def database(self) -> Database:
        """The connection pool, opened (and the embedded schema migrated) on first use."""
        return self.backend.database()

    @property
    def url(self) -> str:
        """URL of the cache database (the embedded server's when none was given)."""
        return self.backend.url

    # -- lookups and answers ----------------------------------------------------------------

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
        key = self.keys.key(prompt_or_messages, model, namespace, params)
        threshold = None if threshold is None else check_threshold(threshold)
        return self.lookup_key(key, threshold)[0]

    def lookup_key(self, key: RequestKey, threshold: float | None = None) -> tuple[CacheResult | None, Any]:
        """:meth:`lookup` of a key already built (front ends with their own requests, such as LangChain's).

        Returns the hit (or None) and the request's vector (None if it was not
        embedded), which :meth:`Entries.keep_answer` takes so that storing the
        answer to a miss does not embed the prompt again. The lookup is logged.
        """
        record = LookupRecord.start(key.model, key.namespace)
        try:
            hit, vector = self.backend.attempt(self.finder.find, key, record, threshold)
        except Unavailable as exc:
            hit, vector, record.error = None, None, exc.reason  # a miss, and why
        self.ledger.record(record)
        return hit, vector

    def chat(
        self,
        messages: str | Sequence[Any],
        model: str | None = None,
        *,
        ttl: Any = UNSET,
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
        options = CallOptions.build(
            ttl=ttl, tags=tags, namespace=namespace, threshold=threshold, bypass=bypass, no_store=no_store
        )
        found = self.flights.begin(messages, model, params, options)
        if not isinstance(found, CacheResult) and found.contending:
            found = self.flights.wait(found)
        if isinstance(found, CacheResult):
            return found
        sent = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
        try:
            completion = self.llm.chat.completions.create(model=found.model, messages=sent, **params)
        except BaseException as exc:
            self.flights.abort(found, exc)
            raise
        return self.flights.finish(found, completion)

    def query(self, prompt: str, model: str | None = None, **kwargs: Any) -> CacheResult:
        """``chat`` for a single user message."""
        if not isinstance(prompt, str):
            raise InvalidRequestError(f"prompt must be a string, got {type(prompt).__name__}")
        return self.chat([{"role": "user", "content": prompt}], model, **kwargs)

    def store(
        self,
        prompt_or_messages: str | Sequence[Any],
        response: Any,
        model: str | None = None,
        ttl: Any = UNSET,
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
        return self.store_many(
            [(prompt_or_messages, response)], model, ttl, tags, namespace=namespace, source=source, **params
        )[0]

    def store_many(
        self,
        items: Iterable[tuple[str | Sequence[Any], Any]],
        model: str | None = None,
        ttl: Any = UNSET,
        tags: Iterable[str] | None = None,
        *,
        namespace: str | None = None,
        source: str = "warm",
        **params: Any,
    ) -> list[int]:
        """Store many ``(prompt_or_messages, response)`` pairs with one embedding batch."""
        lifetime, checked = self._storing(ttl, tags, source)
        return self.entries.store_many(
            items, model, lifetime, checked, namespace=namespace, source=source, params=params
        )

    def store_keyed(
        self,
        keyed: Sequence[tuple[RequestKey, Any]],
        ttl: Any = UNSET,
        tags: Iterable[str] | None = None,
        *,
        source: str = "warm",
    ) -> list[int]:
        """:meth:`store_many` for ``(key, response)`` pairs whose keys were derived already (``cache.keys.key``)."""
        lifetime, checked = self._storing(ttl, tags, source)
        return self.entries.store_keyed(keyed, lifetime, checked, source=source)

    def _storing(self, ttl: Any, tags: Iterable[str] | None, source: str) -> tuple[float | None, list[str]]:
        """A store's lifetime (the cache's default when ``ttl`` is not given) and its checked tags."""
        check_source(source)
        return (self.ttl if ttl is UNSET else parse_ttl(ttl)), check_tags(tags)

    def contains_many(
        self, requests: Iterable[tuple[str | Sequence[Any], str | None]], model: str | None = None, **params: Any
    ) -> list[bool]:
        """For ``(prompt_or_messages, namespace)`` pairs: whether each has a live entry (exact key)."""
        return self.entries.contains_many(requests, model, params)

    def warm(self, file: Any, **options: Any) -> WarmResult:
        """Fill the cache from an FAQ file, as ``pgcache warm`` does (see :func:`pgcache.warm.warm_file`)."""
        return warm_file(self, file, **options)

    # -- maintenance, reporting, calibration: the methods of pgcache.admin.Admin ---------------

    sweep = _Forward("admin", Admin.sweep)
    invalidate = _Forward("admin", Admin.invalidate)
    preview_invalidation = _Forward("admin", Admin.preview_invalidation)
    invalidate_tags = _Forward("admin", Admin.invalidate_tags)
    add_hook = _Forward("admin", Admin.add_hook)
    list_hooks = _Forward("admin", Admin.list_hooks)
    remove_hook = _Forward("admin", Admin.remove_hook)
    reindex = _Forward("admin", Admin.reindex)
    index_status = _Forward("admin", Admin.index_status)
    report = _Forward("admin", Admin.report)
    evaluate = _Forward("admin", Admin.evaluate)
    calibrate = _Forward("admin", Admin.calibrate)
    feedback = _Forward("admin", Admin.feedback)
    train_verifier = _Forward("admin", Admin.train_verifier)
    list_verifiers = _Forward("admin", Admin.list_verifiers)
    show_verifier = _Forward("admin", Admin.show_verifier)
    delete_verifier = _Forward("admin", Admin.delete_verifier)

    # -- lifecycle ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Write queued ledger rows and hit counts now."""
        self.ledger.flush()

    def close(self) -> None:
        """Flush the ledger and close the connection pools (the cache opens them again if used)."""
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
        self.ledger.close()
        self.backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _shutdown(ledger: LedgerWriter, backend: Backend) -> None:
    ledger.close()
    backend.close()


def _database_identity(settings: Settings) -> str:
    """Which database the ledger writes to, without a password: its URL, or the embedded server's directory."""
    if settings.database_url is not None:
        return db.redact(settings.database_url)
    return "embedded:" + str(Path(settings.data_dir or embedded.default_data_dir()).expanduser().resolve())
