"""Running the cache's blocking work from asyncio code.

The cache talks to PostgreSQL and the embedder synchronously. Async callers
(the wrapped ``AsyncOpenAI`` client, ``pgcache serve``) hand that work to the
cache's own worker threads (``Cache.executor``), so that neither the event
loop nor the application's default executor waits on it, and await
single-flight's polls instead of sleeping in a thread.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import Cache
    from .flight import Flight
    from .options import CallOptions
    from .result import CacheResult


async def offload(cache: Cache, function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` on one of the cache's threads."""
    return await asyncio.get_running_loop().run_in_executor(cache.executor, functools.partial(function, *args))


async def begin(
    cache: Cache, messages: Sequence[Any], model: str | None, params: Mapping[str, Any], options: CallOptions
) -> CacheResult | Flight:
    """:meth:`SingleFlight.begin`, then single-flight's wait if it applies: a hit, or the flight of a miss."""
    from .flight import Flight

    found = await offload(cache, cache.flights.begin, messages, model, params, options)
    if isinstance(found, Flight) and found.contending:
        return await contend(cache, found)
    return found


async def contend(cache: Cache, flight: Flight) -> CacheResult | Flight:
    """:meth:`SingleFlight.contend` with its polls awaited: the answer of another caller, or the flight back."""
    steps = cache.flights.contend(flight)
    while True:
        done, value = await offload(cache, _step, steps)
        if done:
            return value
        await asyncio.sleep(value)


def _step(steps: Any) -> tuple[bool, Any]:
    # StopIteration cannot cross a future, so the generator's end is turned into a value here.
    try:
        return False, next(steps)
    except StopIteration as stop:
        return True, stop.value
