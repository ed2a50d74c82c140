"""The FastAPI app: routes, API keys and limits, the error shape, and the uvicorn runner.

Every refusal is a 4xx with a one-line reason in OpenAI's error shape; an upstream that fails is
a 502; nothing a client sends makes a 500. /health is open (load balancers and editors probe it);
everything else needs a key when the server has keys."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from zen_coder.errors import ZenCoderError
from zen_coder.serving import infill, openai_api, tabby
from zen_coder.serving.backends import Backend, BackendError
from zen_coder.serving.metrics import CONTENT_TYPE, Metrics
from zen_coder.serving.security import ApiError, InFlight, Keys, read_json
from zen_coder.serving.service import Call, Service
from zen_coder.serving.settings import ServerSettings

if TYPE_CHECKING:
    from zen_coder.inference.repository import RepositoryContext

log = logging.getLogger("zen_coder.serving")
SHUTDOWN_SECONDS = 5  # an interrupted server waits this long for requests in flight
REFRESH_SECONDS = 2.0  # how often the repository index catches up with the editor's saves
Handler = Callable[[Service, dict[str, Any], Call], Awaitable[Any]]


def create_app(
    backend: Backend, settings: ServerSettings, repository: RepositoryContext | None = None
) -> FastAPI:
    """The server's app around `backend`; the backend and the repository are closed when the
    app shuts down."""
    metrics = Metrics(backend.stats)
    service = Service(backend, settings, metrics, repository)
    keys = Keys(settings.api_keys)
    in_flight = InFlight(settings.concurrent_per_key, settings.retry_after_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await backend.close()
        if repository is not None:
            repository.close()

    app = FastAPI(
        title="zen-coder", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.service = service
    app.add_middleware(CountRequests, metrics=metrics)

    @app.exception_handler(ApiError)
    async def refused(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), error.status, headers=error.headers)

    @app.exception_handler(BackendError)
    async def upstream_failed(request: Request, error: BackendError) -> JSONResponse:
        return JSONResponse(ApiError(502, str(error)).body(), 502)

    @app.exception_handler(ZenCoderError)
    async def bad_input(request: Request, error: ZenCoderError) -> JSONResponse:
        return JSONResponse(ApiError(400, str(error)).body(), 400)

    @app.exception_handler(HTTPException)
    async def not_here(request: Request, error: HTTPException) -> JSONResponse:
        reason = f"{request.method} {request.url.path}: {error.detail}"
        return JSONResponse(ApiError(error.status_code, reason).body(), error.status_code)

    async def generate(request: Request, handler: Handler) -> Response:
        """Authorize, hold a place among the key's requests in flight, read the body and run
        `handler`: a dict is answered as JSON, an async iterator streamed as events; the place
        is given back when the answer is complete."""
        caller = keys.caller(request)
        in_flight.acquire(caller)
        try:
            body = await read_json(request, settings.max_body_bytes)
            answer = await handler(service, body, Call(caller, disconnect_of(request)))
        except BaseException:
            in_flight.release(caller)
            raise
        if isinstance(answer, dict):
            in_flight.release(caller)
            return JSONResponse(answer)
        return EventStream(answer, lambda: in_flight.release(caller))

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.api_route("/v1/health", methods=["GET", "POST"])  # Tabby's agents use either
    async def tabby_health(request: Request) -> dict[str, Any]:
        keys.caller(request)
        return tabby.health(service)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        keys.caller(request)
        entry = {
            "id": settings.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "zen-coder",
        }
        return {"object": "list", "data": [entry]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        async def either(service: Service, body: dict[str, Any], call: Call) -> Any:
            if "segments" in body:  # Tabby's body; OpenAI's has none
                return await tabby.completion(service, body, call)
            return await openai_api.completions(service, body, call)

        return await generate(request, either)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await generate(request, openai_api.chat_completions)

    @app.post("/infill")
    async def llama_infill(request: Request) -> Response:
        return await generate(request, infill.infill)

    @app.post("/v1/events")
    async def events(request: Request) -> Response:
        keys.caller(request)
        tabby.record_event(service, await read_json(request, settings.max_body_bytes))
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        keys.caller(request)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app


def disconnect_of(request: Request) -> Callable[[], Awaitable[None]]:
    """A wait that returns once the client has gone. Once the body is read, the next message
    the server receives is the disconnect (a response not yet sent keeps it from coming
    otherwise)."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return disconnected


class EventStream(StreamingResponse):
    """Server-sent events that run `release` once the response has ended, however it ends: a
    client that leaves before the first event too (the events' generator has then never started,
    so no `finally` of its own would run)."""

    def __init__(self, events: AsyncGenerator[str, None], release: Callable[[], None]) -> None:
        super().__init__(
            ending_in_error_events(events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # stops the backend's work if it is still running
            self.release()


async def ending_in_error_events(events: AsyncGenerator[str, None]) -> AsyncIterator[str]:
    """`events`; an error after the answer began can only be its last event."""
    try:
        async for item in events:
            yield item
    except Exception as error:
        yield openai_api.event(stream_error(error).body())
    finally:
        await events.aclose()


def stream_error(error: Exception) -> ApiError:
    """The error event that ends a stream: the status the error would have had before it."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, BackendError):
        return ApiError(502, str(error))
    if isinstance(error, ZenCoderError):
        return ApiError(400, str(error))
    log.exception("a streamed completion failed")
    return ApiError(500, f"the completion failed ({type(error).__name__}); see the server's log")


class CountRequests:
    """Counts every answer by route and status (the route, not the raw path: a scan of random
    paths must not grow the metrics)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "other")
            self.metrics.requests.labels(endpoint, str(status[0])).inc()


def serve(
    backend: Backend,
    settings: ServerSettings,
    repository: RepositoryContext | None = None,
    log_level: str = "info",
) -> None:
    """Run the server until interrupted. Without API keys on an address other than localhost
    anyone who reaches the port can use the model: said loudly at start."""
    if not settings.is_local_only and not settings.api_keys:
        log.warning(
            "serving on %s without API keys: anyone who reaches port %d can use the model; "
            "pass --api-key (or ZEN_CODER_API_KEYS)",
            settings.host,
            settings.port,
        )
    app = create_app(backend, settings, repository)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
    )


def open_repository(
    path: Path | None, backend: Backend, refresh_seconds: float = REFRESH_SECONDS
) -> RepositoryContext | None:
    """The repository context of `--repo`, kept fresh in the background (the server answers
    while it is first indexed, without context until then). The repository is named as the
    model's repository table names it where it can be. Its index's libraries are imported only
    here."""
    if path is None:
        return None
    from zen_coder.inference.repository import RepositoryContext

    repository = RepositoryContext(path, known_repos=backend.repo_names)
    repository.watch(refresh_seconds)
    return repository
