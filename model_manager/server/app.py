"""`create_app(settings)`: the Litestar application — API, auth, UI, OpenAPI, HTTP hygiene.

Nothing happens on import. The app is a thin surface over one `service.ModelManager` (`app.state.manager`):
the lifespan loads the registered models before the first model request and stops the service (and
its watcher) on shutdown.

Every response passes through the `before_send` hook `ResponseHooks` (security headers, metrics, the
access log: see server/hooks.py). The payload route's common case is answered by `PayloadFastPath`
in front of Litestar (`ModelManagerApp`, see server/payload.py), which adds the same headers and counts
its answers the same way.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from litestar import Litestar, Request, Response, get
from litestar.config.compression import CompressionConfig
from litestar.config.cors import CORSConfig
from litestar.exceptions import ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from model_manager import __version__
from model_manager.errors import ModelManagerError, ThrottledError
from model_manager.metrics import CONTENT_TYPE
from model_manager.server import error_responses
from model_manager.server.auth import auth_routes, require_token_unless_public
from model_manager.server.bodies import BoundedRequest
from model_manager.server.docs import LocalSwaggerPlugin
from model_manager.server.events import model_events
from model_manager.server.hooks import ResponseHooks, headers_for
from model_manager.server.keys import KeysController
from model_manager.server.models import ModelsController
from model_manager.server.payload import PayloadFastPath
from model_manager.server.versions import VersionsController
from model_manager.service import ModelManager
from model_manager.settings import Settings
from model_manager.store import Store
from model_manager.workers import WorkerRole

log = logging.getLogger("model_manager.server")

UI_DIR = Path(__file__).parent / "ui"

def _error_response(request: Request, exc: ModelManagerError) -> Response:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, ThrottledError) else None
    return Response({"status_code": exc.status_code, "detail": str(exc)}, status_code=exc.status_code, headers=headers)


def _validation_error(request: Request, exc: ValidationException) -> Response:
    """Litestar's request validation: say which field is wrong in `detail`, not only in `extra`."""
    problems = [f"{_field_name(request, e)}: {e.get('message')}" for e in (exc.extra or []) if isinstance(e, dict)]
    detail = exc.detail + (f" ({'; '.join(problems)})" if problems else "")
    body = {"status_code": 400, "detail": detail}
    if exc.extra:
        body["extra"] = exc.extra
    return Response(body, status_code=400)


def _field_name(request: Request, problem: dict) -> str:
    """The name the client sent: a query parameter named after a Python keyword is declared with a
    trailing underscore (`from_` for `?from=`), which Litestar reports."""
    key = problem.get("key") or problem.get("source") or "request"
    if problem.get("source") == "query" and key.endswith("_") and key not in request.query_params:
        return key.rstrip("_")
    return str(key)


def _internal_error(request: Request, exc: Exception) -> Response:
    if request.scope.get("mm_answered_at_stop"):  # answered 503 at a stop; its client is gone (read ends early)
        log.debug("%s %s ended after its 503 at the stop: %s", request.method, request.url.path, exc)
    else:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response({"status_code": 500, "detail": "internal error"}, status_code=500)


@get("/healthz", sync_to_thread=False, tags=["health"])
def healthz(request: Request) -> dict[str, str | bool | int]:
    """Liveness probe, no authentication. `models_loaded` turns true once the registered models are
    loaded; model requests made before that wait for it. `worker`: which of the server's `workers`
    processes answered (0 to workers - 1)."""
    manager = request.app.state.manager
    return {"status": "ok", "models_loaded": manager.serving.ready.is_set(), "worker": manager.role.index,
            "workers": manager.role.count}


@get("/metrics", tags=["health"], include_in_schema=True, media_type=CONTENT_TYPE, sync_to_thread=True,
     guards=[require_token_unless_public], responses=error_responses(401))
def metrics(request: Request) -> Response[bytes]:
    """Prometheus metrics (text format) of the whole server, every worker process summed. Needs a token
    or key unless MODEL_MANAGER_METRICS_PUBLIC=1."""
    return Response(request.app.state.manager.metrics_text(), media_type=CONTENT_TYPE)


class _Unfinished:
    """A request Litestar is answering, for `ModelManagerApp.answer_unfinished`: its `send`, and
    whether its answer has started."""

    __slots__ = ("_scope", "_send", "started", "stopped")

    def __init__(self, scope, send) -> None:
        self._scope, self._send, self.started, self.stopped = scope, send, False, False

    async def send(self, message) -> None:
        if self.stopped:  # answered 503 at a stop: what the handler answers later goes nowhere
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    async def stop(self) -> None:
        if self.started or self.stopped:
            return
        self.stopped = self._scope["mm_answered_at_stop"] = True  # (what fails after this is no news: `_internal_error`)
        body = json.dumps({"status_code": 503, "detail": STOPPING_DETAIL}).encode()
        await self._send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"5"), *headers_for(self._scope["path"])]})
        await self._send({"type": "http.response.body", "body": body})


STOPPING_DETAIL = ("the server is stopping and did not finish this request; send it again once it is back "
                   "(registering or refreshing again is safe: a half-done one leaves nothing behind)")


class ModelManagerApp(Litestar):
    """Litestar, with the payload fast path in front: the polls of trading engines are answered
    before Litestar's own per-request machinery (scope setup, the before_send wrapper, routing);
    everything else gets its start time noted (for the access log) and goes on to Litestar."""

    fast_path: PayloadFastPath | None = None
    unfinished: set[_Unfinished]

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[override]
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        fast = self.fast_path
        if fast is not None and await fast.handle(scope, send):
            return
        scope["mm_started"] = time.perf_counter()
        request = _Unfinished(scope, send)
        self.unfinished.add(request)
        try:
            await super().__call__(scope, receive, request.send)
        finally:
            self.unfinished.discard(request)

    async def answer_unfinished(self) -> None:
        """At a stop, once the grace period is nearly over: a 503 that says so to every request whose
        answer has not started (a registration or refresh still checking files in a thread, which
        uvicorn cannot cut short), instead of the plain-text 500 uvicorn gives a request it cancels."""
        for request in list(self.unfinished):
            await request.stop()


def create_app(settings: Settings, *, store: Store | None = None, role: WorkerRole | None = None) -> Litestar:
    """The application for these settings; opens (and on shutdown closes) the store unless given one.
    `role`: which worker of `serve --workers N` it is (default: the only one)."""
    manager = ModelManager(settings, store=store, role=role)
    registry = manager.serve()
    hooks = ResponseHooks(manager.metrics)

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        await manager.start_serving()
        try:
            yield
        finally:
            try:
                await manager.stop_serving()
            finally:
                hooks.access.flush()
                manager.close()

    handlers: list = [healthz, metrics, *auth_routes, ModelsController, VersionsController, KeysController, model_events]
    if UI_DIR.is_dir():
        handlers.append(create_static_files_router(path="/", directories=[UI_DIR], html_mode=True, name="ui",
                                                   include_in_schema=False))
    app = ModelManagerApp(
        route_handlers=handlers,
        lifespan=[lifespan],
        before_send=[hooks],
        exception_handlers={ModelManagerError: _error_response, ValidationException: _validation_error,
                            HTTP_500_INTERNAL_SERVER_ERROR: _internal_error},
        compression_config=CompressionConfig(backend="gzip", minimum_size=1024, gzip_compress_level=6,
                                             exclude_opt_key="skip_compression"),
        openapi_config=_openapi(),
        cors_config=_cors(settings),
        request_max_body_size=settings.max_body_kb * 1024,
        request_class=BoundedRequest,  # JSON nested deeper than 64 levels is a 400, not a RecursionError
        logging_config=None,  # `serve` configures logging; the app must not touch global logging
        debug=False,
    )
    app.state.settings = settings
    app.state.manager = manager
    app.state.store = manager.store
    app.state.registry = registry
    app.state.auth = manager.auth
    app.unfinished = set()
    app.state.fast_path = app.fast_path = PayloadFastPath(registry, manager.auth.tokens, manager.fleet, manager.metrics,
                                                          hooks, shared=manager.role.shared)
    return app


def _cors(settings: Settings) -> CORSConfig | None:
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if not origins:
        return None
    return CORSConfig(allow_origins=origins, allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                      allow_headers=["Authorization", "Content-Type", "If-None-Match"],
                      expose_headers=["ETag", "Retry-After"])


def _openapi() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="model-manager",
        version=__version__,
        description="Serve per-symbol XGBoost models with their factor mapping to people and trading engines.",
        path="/schema",
        components=Components(security_schemes={
            "BearerToken": SecurityScheme(type="http", scheme="bearer",
                                          description="A token from POST /api/auth/login, or an API key from POST /api/keys"),
        }),
        render_plugins=[LocalSwaggerPlugin()],  # no script from another origin (see server/docs.py)
    )
