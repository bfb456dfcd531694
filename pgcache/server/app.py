"""The ASGI application of ``pgcache serve``: an OpenAI-compatible API with a cache in front.

Routes:

* ``POST /v1/chat/completions`` — through the cache, as :func:`pgcache.wrap`
  does it (exact, semantic, single-flight, fail-open; only complete answers
  are stored), plain or streamed;
* any other ``/v1/...`` request — passed to the upstream API unchanged;
* ``POST /pgcache/feedback`` — a wrong or right semantic hit, by lookup id
  (needs the admin token);
* ``GET /healthz`` — database and upstream reachability;
* ``GET /metrics`` — Prometheus metrics (:mod:`pgcache.server.metrics`);
* ``GET /`` — the dashboard, and ``GET /pgcache/dashboard.json``, its figures
  (:mod:`pgcache.server.dashboard`; with an admin token set, they need it).

Every chat answer carries ``X-Pgcache-Status`` (exact, semantic, miss or
bypass), ``X-Pgcache-Lookup-Id`` and, when known, ``X-Pgcache-Similarity``
and ``X-Pgcache-Entry-Id``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import offload as bridge
from ..cache import Cache
from ..config import default_prices
from ..embedders import learn_width
from ..errors import ConfigurationError, InvalidRequestError, PgcacheError
from ..flight import Flight
from ..result import CacheResult
from ..streaming import ChunkAccumulator, replay_chunks
from . import dashboard, metrics
from .control import BadRequest, ChatRequest, chat_request, error_body, parse_body
from .settings import ServerSettings
from .upstream import Upstream, response_headers

_log = logging.getLogger("pgcache.server")
STATIC = Path(__file__).with_name("static")


@dataclass
class Server:
    """What the routes share: the cache, the upstream client and the settings."""

    cache: Cache
    upstream: Upstream
    settings: ServerSettings
    prices: Mapping[str, tuple[float, float]]

    async def close(self) -> None:
        await self.upstream.close()
        await bridge.offload(self.cache, self.cache.flush)
        self.cache.close()


def create_app(
    cache: Cache | None = None, settings: ServerSettings | None = None, environ: Mapping[str, str] | None = None
) -> Starlette:
    """The application; ``cache`` and ``settings`` default to those of the environment's variables."""
    env = os.environ if environ is None else environ
    settings = settings or ServerSettings.resolve({}, env)
    upstream = Upstream(settings, env)
    if cache is None:
        import openai

        # The cache's own client serves OpenAI embeddings and the judge; chat misses go through `upstream`.
        llm = openai.OpenAI(base_url=upstream.base_url, api_key=env.get("OPENAI_API_KEY") or "unset", max_retries=1)
        cache = Cache.from_env(env, llm=llm)
    server = Server(cache, upstream, settings, default_prices(cache.settings))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # A model the cache cannot store stops the server here, in one sentence, rather than at each request.
        problem = await bridge.offload(server.cache, learn_width, server.cache.embedder)
        if problem:
            _log.warning("pgcache serve: the embedding endpoint did not answer at start (%s)", problem)
        yield
        await server.close()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/{path:path}", passthrough, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
            Route("/pgcache/feedback", feedback, methods=["POST"]),
            Route("/pgcache/invalidate", invalidate, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_page, methods=["GET"]),
            Route("/", dashboard_page, methods=["GET"]),
            Route("/pgcache/dashboard.json", dashboard_figures, methods=["GET"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={BadRequest: _bad_request, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.server = server
    return app


def from_env() -> Starlette:
    """The application as ``pgcache serve``'s workers build it (a uvicorn factory)."""
    return create_app()


# -- chat completions --------------------------------------------------------------------------


async def chat_completions(request: Request) -> Response:
    server: Server = request.app.state.server
    cache = server.cache
    raw = await read_body(request, server.settings.max_body_bytes)
    chat = chat_request(raw, request.headers, cache.namespace, server.settings.tenant_secret)
    started = time.perf_counter()
    found: CacheResult | Flight | None = None
    try:
        found = await bridge.offload(cache, cache.flights.begin, chat.messages, chat.model, chat.params, chat.options)
        contended = isinstance(found, Flight) and found.contending
        if isinstance(found, Flight) and contended:
            found = await bridge.contend(cache, found)
    except (InvalidRequestError, ConfigurationError) as exc:
        raise BadRequest(str(exc), "messages") from None
    except BaseException as exc:  # cancelled while waiting (e.g. the server is stopping): release what it holds
        if isinstance(found, Flight):
            cache.executor.submit(cache.flights.abort, found, exc)
        raise
    if isinstance(found, CacheResult):
        if contended:
            metrics.SINGLE_FLIGHT.labels("served").inc()
        metrics.record_hit(server.prices, found, time.perf_counter() - started)
        return _hit(found, chat)
    if contended and not found.leased:
        metrics.SINGLE_FLIGHT.labels("timed out").inc()
    outcome = found.record.outcome if found.record.outcome in ("bypass", "error") else "miss"
    metrics.record_miss(outcome, found.namespace, time.perf_counter() - started)
    return await _ask_upstream(server, request, chat, found)


def _hit(result: CacheResult, chat: ChatRequest) -> Response:
    headers = result_headers(result)
    if chat.stream:
        chunks = replay_chunks(result.response, chat.include_usage)
        return StreamingResponse(_replay(chunks), media_type="text/event-stream", headers=headers)
    return Response(json.dumps(result.response), media_type="application/json", headers=headers)


async def _replay(chunks: list[Any]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield b"data: " + chunk.model_dump_json(exclude_none=True).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


async def _ask_upstream(server: Server, request: Request, chat: ChatRequest, flight: Flight) -> Response:
    """The upstream's answer to a miss, passed on; stored when it is a complete completion.

    Whatever happens, the flight is finished or aborted exactly once: here, or
    by the stream relay that takes it over. Work handed to the cache's threads
    completes even if this request is cancelled meanwhile.
    """
    cache = server.cache
    started = time.perf_counter()
    try:
        upstream = await server.upstream.send("POST", "/v1/chat/completions", request.headers, chat.upstream_body)
    except httpx.HTTPError as exc:
        metrics.UPSTREAM_ERRORS.labels("unreachable").inc()
        await bridge.offload(cache, cache.flights.abort, flight, exc)
        return _error(502, f"the upstream API could not be reached ({type(exc).__name__})", "upstream_error")
    except BaseException as exc:
        cache.executor.submit(cache.flights.abort, flight, exc)
        raise
    headers = response_headers(upstream) | miss_headers(flight)
    if upstream.status_code == 200 and chat.stream:
        return ClosingStreamingResponse(_relay(cache, flight, upstream, started), headers=headers)
    try:
        content = await upstream.aread()
    except BaseException as exc:
        cache.executor.submit(cache.flights.abort, flight, exc)
        if isinstance(exc, httpx.HTTPError):
            metrics.UPSTREAM_ERRORS.labels("unreachable").inc()
            return _error(502, f"the upstream API failed mid-answer ({type(exc).__name__})", "upstream_error")
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await upstream.aclose()
    metrics.UPSTREAM_SECONDS.observe(time.perf_counter() - started)
    if upstream.status_code != 200:
        metrics.UPSTREAM_ERRORS.labels(str(upstream.status_code)).inc()
        await bridge.offload(cache, cache.flights.abort, flight, UpstreamStatus(upstream.status_code))
    else:
        result = await bridge.offload(cache, _finish, cache, flight, content)
        if result is not None and result.entry_id is not None:
            headers["X-Pgcache-Entry-Id"] = str(result.entry_id)
    return Response(content, status_code=upstream.status_code, headers=headers)


class UpstreamStatus(Exception):
    """The upstream answered with an error status; recorded in the ledger as the lookup's error."""

    def __init__(self, status: int) -> None:
        super().__init__(f"upstream status {status}")


def _finish(cache: Cache, flight: Flight, content: bytes) -> CacheResult | None:
    """Store an upstream answer; a body that is not a completion is passed on but not stored."""
    try:
        completion = json.loads(content)
    except ValueError as exc:
        cache.flights.abort(flight, exc)
        return None
    try:
        return cache.flights.finish(flight, completion)
    except InvalidRequestError:
        return None  # finish() has aborted the flight


async def _relay(cache: Cache, flight: Flight, upstream: Any, started: float) -> AsyncIterator[bytes]:
    """The upstream's event stream, passed on as it comes and accumulated; stored only when complete.

    The answer is stored before the stream's last event (``[DONE]``) is passed
    on, so a caller that asks again as soon as its stream ends finds it.
    """
    accumulator = ChunkAccumulator()
    pending = b""
    settled = False
    try:
        async for data in upstream.aiter_bytes():
            *lines, pending = (pending + data).split(b"\n")
            if any(_feed(accumulator, line) for line in lines) and not settled:
                settled = True
                await _settle(cache, flight, accumulator, started)
            yield data
        if not settled:
            _feed(accumulator, pending)
            settled = True
            await _settle(cache, flight, accumulator, started)
    finally:
        if not settled:
            # The caller went away or the upstream failed: nothing is stored. Not awaited: we may be cancelled.
            cache.executor.submit(cache.flights.abort, flight, EOFError("stream abandoned"))
        with anyio.CancelScope(shield=True):
            await upstream.aclose()


async def _settle(cache: Cache, flight: Flight, accumulator: ChunkAccumulator, started: float) -> None:
    metrics.UPSTREAM_SECONDS.observe(time.perf_counter() - started)
    if accumulator.complete:
        await bridge.offload(cache, _finish_stream, cache, flight, accumulator.completion())
    else:
        await bridge.offload(cache, cache.flights.abort, flight, EOFError("stream ended early"))


def _finish_stream(cache: Cache, flight: Flight, completion: dict[str, Any]) -> None:
    with contextlib.suppress(InvalidRequestError):  # finish() has aborted the flight
        cache.flights.finish(flight, completion)


def _feed(accumulator: ChunkAccumulator, line: bytes) -> bool:
    """Add one line of the event stream; True at its end (``data: [DONE]``)."""
    line = line.strip()
    if not line.startswith(b"data:"):
        return False
    payload = line[5:].strip()
    if payload == b"[DONE]":
        return True
    with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
        accumulator.add(json.loads(payload))
    return False


class ClosingStreamingResponse(StreamingResponse):
    """A streaming response that always closes its body iterator, so an abandoned stream settles at once."""

    async def stream_response(self, send: Any) -> None:
        body = self.body_iterator
        try:
            await super().stream_response(send)
        finally:
            close = getattr(body, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()


def result_headers(result: CacheResult) -> dict[str, str]:
    headers: dict[str, str] = {"X-Pgcache-Status": result.status}
    if result.similarity is not None:
        headers["X-Pgcache-Similarity"] = f"{result.similarity:.6f}"
    if result.entry_id is not None:
        headers["X-Pgcache-Entry-Id"] = str(result.entry_id)
    if result.lookup_id is not None:
        headers["X-Pgcache-Lookup-Id"] = str(result.lookup_id)
    return headers


def miss_headers(flight: Flight) -> dict[str, str]:
    return {
        "X-Pgcache-Status": "bypass" if flight.record.outcome == "bypass" else "miss",
        "X-Pgcache-Lookup-Id": str(flight.record.id),
    }


# -- pass-through, admin, health, metrics --------------------------------------------------------


async def passthrough(request: Request) -> Response:
    server: Server = request.app.state.server
    body = await read_body(request, server.settings.max_body_bytes)
    try:
        upstream = await server.upstream.send(
            request.method, request.url.path, request.headers, body, request.url.query
        )
    except httpx.HTTPError as exc:
        metrics.UPSTREAM_ERRORS.labels("unreachable").inc()
        return _error(502, f"the upstream API could not be reached ({type(exc).__name__})", "upstream_error")

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for data in upstream.aiter_bytes():
                yield data
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()

    return ClosingStreamingResponse(relay(), status_code=upstream.status_code, headers=response_headers(upstream))


async def feedback(request: Request) -> Response:
    """``{"lookup_id": "...", "verdict": "wrong" | "right"}``, with ``Authorization: Bearer <admin token>``."""
    return await _admin_action(request, _feedback)


def _feedback(cache: Cache, body: dict[str, Any]) -> dict[str, Any]:
    verdict: Any = body.get("verdict")  # checked by feedback(), which names what is wrong
    threshold = cache.feedback(verdict, body.get("lookup_id"))
    return {"lookup_id": str(body["lookup_id"]), "verdict": body["verdict"], "entry_threshold": threshold}


async def invalidate(request: Request) -> Response:
    """``{"tags": [...], "namespace": null, "mode": "delete" | "expire"}``, with the admin token: retire tagged entries.

    For changes outside the database (a CMS's webhook); changes to tables in it are better served by hooks.
    """
    return await _admin_action(request, _invalidate)


def _invalidate(cache: Cache, body: dict[str, Any]) -> dict[str, Any]:
    mode = body.get("mode", "delete")
    return {"invalidated": cache.invalidate_tags(body.get("tags") or [], namespace=body.get("namespace"), mode=mode)}


async def _admin_action(request: Request, action: Callable[[Cache, dict[str, Any]], dict[str, Any]]) -> Response:
    """An endpoint that changes the cache: the admin token checked, ``action(cache, body)`` run on the
    cache's threads with the request's JSON body; a :class:`PgcacheError` it raises is a 400."""
    server: Server = request.app.state.server
    refused = _admin_refusal(request, server, required=True)
    if refused is not None:
        return refused
    body = parse_body(await read_body(request, 65536))
    try:
        answer = await bridge.offload(server.cache, action, server.cache, body)
    except PgcacheError as exc:
        raise BadRequest(str(exc)) from None
    return JSONResponse(answer)


def _admin_refusal(request: Request, server: Server, *, required: bool) -> Response | None:
    """None when the request may use an admin endpoint, else the error response.

    With no admin token set, endpoints that change the cache (``required``)
    refuse everyone and read-only ones (the dashboard) are open.
    """
    token = server.settings.admin_token
    if token is None:
        if required:
            return _error(403, "admin endpoints are disabled: set PGCACHE_ADMIN_TOKEN", "permission_error")
        return None
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        return _error(401, "a valid admin token is required (Authorization: Bearer ...)", "authentication_error")
    return None


async def dashboard_page(request: Request) -> Response:
    return FileResponse(STATIC / "dashboard.html", media_type="text/html")


async def dashboard_figures(request: Request) -> Response:
    """The dashboard's figures; ``?hours=N`` (1 to 720, default 24)."""
    server: Server = request.app.state.server
    refused = _admin_refusal(request, server, required=False)
    if refused is not None:
        return refused
    hours = request.query_params.get("hours", "24")
    if not hours.isdigit() or not 1 <= int(hours) <= 720:
        raise BadRequest(f"hours must be a whole number from 1 to 720, got {hours!r}", "hours")
    cache = server.cache
    try:
        figures = await bridge.offload(cache, cache.backend.read, dashboard.figures, server.prices, int(hours))
    except PgcacheError as exc:
        return _error(503, f"the cache database is unavailable ({type(exc).__name__})", "server_error")
    return JSONResponse(figures)


async def healthz(request: Request) -> Response:
    """200 with ``"ok"`` or ``"degraded"`` (the database is down: requests go straight upstream); 503 when the
    upstream cannot be reached."""
    server: Server = request.app.state.server
    database = await bridge.offload(server.cache, _database_problem, server.cache)
    upstream = await server.upstream.reachable()
    status = "down" if upstream else "degraded" if database else "ok"
    body = {"status": status, "database": database or "ok", "upstream": upstream or "ok"}
    return JSONResponse(body, status_code=503 if upstream else 200)


def _database_problem(cache: Cache) -> str | None:
    try:
        cache.backend.write(lambda conn: conn.execute("SELECT 1"))
    except PgcacheError as exc:
        return f"unreachable ({type(exc).__name__})"
    return None


async def metrics_page(request: Request) -> Response:
    server: Server = request.app.state.server
    content, media_type = metrics.exposition(server.cache)
    return Response(content, media_type=media_type)


# -- request bodies and errors -------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 beyond ``limit`` bytes without reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"the request body is larger than {limit} bytes", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the request body is larger than {limit} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(error_body(message, kind), status_code=status)


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadRequest)
    kind = "authentication_error" if exc.status == 401 else "invalid_request_error"
    return JSONResponse(error_body(exc.message, kind, exc.param), status_code=exc.status)


async def _internal_error(request: Request, exc: Exception) -> Response:
    _log.error("pgcache serve: %s %s failed: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
    return _error(500, f"pgcache failed to handle the request ({type(exc).__name__})", "server_error")
