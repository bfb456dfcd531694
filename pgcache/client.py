"""Drop-in wrappers for ``openai.OpenAI`` and ``openai.AsyncOpenAI`` clients.

``pgcache.wrap(client)`` returns a client whose ``chat.completions.create``
goes through the cache and returns what the SDK returns: a ``ChatCompletion``,
or with ``stream=True`` an iterator (async iterator) of ``ChatCompletionChunk``.
Every other attribute is the real client's. The cache's verdict is on the
result as ``.pgcache`` (a :class:`~pgcache.CacheResult`: ``status``,
``similarity``, ``entry_id``, ``lookup_id``); it is never sent anywhere.
Per-call options go in one keyword, ``pgcache={...}`` (see
:class:`~pgcache.options.CallOptions`), removed before the SDK call.

The async wrapper never blocks the event loop: the cache's database and
embedding work runs on the cache's own worker threads (:mod:`pgcache.offload`)
and single-flight waits are awaited. It shares the sync path's code and connection
pool rather than using psycopg's async connections: an async pool is bound to
the event loop that opened it, while one cache often serves several loops (and
sync callers) in the same process, and one code path keeps the two behaving
alike.
"""

from __future__ import annotations

from typing import Any, Self

from .cache import Cache
from .flight import Flight
from .offload import begin, offload
from .options import CallOptions
from .result import CacheResult
from .streaming import ChunkAccumulator, replay_chunks


def wrap(client: Any, cache: Cache | None = None) -> Any:
    """Put ``cache`` (default: ``Cache.from_env()``) in front of an OpenAI or AsyncOpenAI client."""
    import openai

    is_async = isinstance(client, openai.AsyncOpenAI)
    if cache is None:
        sync_twin = (
            client
            if not is_async
            else openai.OpenAI(
                api_key=client.api_key,
                base_url=client.base_url,
                organization=client.organization,
                project=client.project,
                max_retries=client.max_retries,
            )
        )
        cache = Cache.from_env(llm=sync_twin)
    if is_async:
        return _Client(client, _AsyncCompletions(client.chat.completions, cache))
    return _Client(client, _Completions(client.chat.completions, cache))


class _Passthrough:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Client(_Passthrough):
    def __init__(self, client: Any, completions: Any) -> None:
        super().__init__(client)
        self.chat = _Chat(client.chat, completions)
        self.cache = completions.cache


class _Chat(_Passthrough):
    def __init__(self, chat: Any, completions: Any) -> None:
        super().__init__(chat)
        self.completions = completions


class _Completions(_Passthrough):
    def __init__(self, completions: Any, cache: Cache) -> None:
        super().__init__(completions)
        self.cache = cache

    def create(self, *, messages: Any, model: str, stream: bool = False, pgcache: Any = None, **params: Any) -> Any:
        flights = self.cache.flights
        found = flights.begin(messages, model, params, CallOptions.build(pgcache))
        if isinstance(found, Flight) and found.contending:
            found = flights.wait(found)
        if isinstance(found, CacheResult):
            return _from_cache(found, stream, params)
        try:
            upstream = self._inner.create(messages=messages, model=model, stream=stream, **params)
        except BaseException as exc:
            flights.abort(found, exc)
            raise
        if stream:
            return LiveStream(upstream, self.cache, found)
        return _attach(upstream, flights.finish(found, upstream))


class _AsyncCompletions(_Passthrough):
    def __init__(self, completions: Any, cache: Cache) -> None:
        super().__init__(completions)
        self.cache = cache

    async def create(
        self, *, messages: Any, model: str, stream: bool = False, pgcache: Any = None, **params: Any
    ) -> Any:
        options = CallOptions.build(pgcache)
        found = await begin(self.cache, messages, model, params, options)
        if isinstance(found, CacheResult):
            result = _from_cache(found, stream, params)
            return _AsyncReplay(result) if stream else result
        try:
            upstream = await self._inner.create(messages=messages, model=model, stream=stream, **params)
        except BaseException as exc:
            await offload(self.cache, self.cache.flights.abort, found, exc)
            raise
        if stream:
            return AsyncLiveStream(upstream, self.cache, found)
        return _attach(upstream, await offload(self.cache, self.cache.flights.finish, found, upstream))


def _attach(obj: Any, result: CacheResult) -> Any:
    # Not a model field: never serialised, never sent upstream.
    object.__setattr__(obj, "pgcache", result)
    return obj


def _from_cache(result: CacheResult, stream: bool, params: dict[str, Any]) -> Any:
    if not stream:
        return _attach(result.completion(), result)
    include_usage = bool((params.get("stream_options") or {}).get("include_usage"))
    return _attach(_Replay(replay_chunks(result.response, include_usage)), result)


class _Replay:
    """A cached answer as a stream of chunks."""

    pgcache: CacheResult

    def __init__(self, chunks: list[Any]) -> None:
        self._chunks = iter(chunks)

    def __iter__(self) -> _Replay:
        return self

    def __next__(self) -> Any:
        return next(self._chunks)

    def close(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _AsyncReplay:
    def __init__(self, replay: _Replay) -> None:
        self._replay = replay
        self.pgcache = replay.pgcache

    def __aiter__(self) -> _AsyncReplay:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._replay)
        except StopIteration:
            raise StopAsyncIteration from None

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass


class _LiveBase:
    """A miss streamed to the caller while it is accumulated; stored only if it ends normally."""

    def __init__(self, upstream: Any, cache: Cache, flight: Flight) -> None:
        self._upstream = upstream
        self._cache = cache
        self._flight: Flight | None = flight
        self._accumulator = ChunkAccumulator()
        self.pgcache = CacheResult(
            content="",
            status="miss",
            similarity=None,
            entry_id=None,
            response={},
            model=flight.model,
            namespace=flight.namespace,
            lookup_id=flight.record.id,
        )
        """Status "miss" at once; the stored result once the stream has ended."""

    def _done(self) -> None:
        flight, self._flight = self._flight, None
        if flight is None:
            return
        if not self._accumulator.complete:  # ended without finish reasons: cut short, not an answer
            self._cache.flights.abort(flight, EOFError("stream ended early"))
            return
        self.pgcache = self._cache.flights.finish(flight, self._accumulator.completion())

    def _failed(self, error: BaseException) -> None:
        flight, self._flight = self._flight, None
        if flight is not None:
            self._cache.flights.abort(flight, error)

    def __del__(self) -> None:
        # A caller that stopped reading and dropped the stream: nothing is stored.
        if getattr(self, "_flight", None) is not None:
            self._failed(GeneratorExit())


class LiveStream(_LiveBase):
    def __iter__(self) -> LiveStream:
        return self

    def __next__(self) -> Any:
        try:
            chunk = next(self._upstream)
        except StopIteration:
            self._done()
            raise
        except BaseException as exc:
            self._failed(exc)
            raise
        self._accumulator.add(chunk)
        return chunk

    def close(self) -> None:
        self._failed(GeneratorExit())
        self._upstream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncLiveStream(_LiveBase):
    def __aiter__(self) -> AsyncLiveStream:
        return self

    async def __anext__(self) -> Any:
        try:
            chunk = await self._upstream.__anext__()
        except StopAsyncIteration:
            await offload(self._cache, self._done)
            raise
        except BaseException as exc:
            await offload(self._cache, self._failed, exc)
            raise
        self._accumulator.add(chunk)
        return chunk

    async def close(self) -> None:
        await offload(self._cache, self._failed, GeneratorExit())
        await self._upstream.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
