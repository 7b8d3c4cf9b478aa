"""`create_app(settings)`: the Litestar application — API, auth, UI, OpenAPI, HTTP hygiene.

Nothing happens on import. The app is a thin surface over one `service.ModelManager` (`app.state.manager`):
the lifespan loads the registered models before the first model request and stops the service (and
its watcher) on shutdown.

Every response passes through the `before_send` hook `ResponseHooks`, which adds the security headers
and writes one access-log line (JSON: method, path, status, duration, client; never headers, query
strings or bodies, so no token or password can reach the log). The payload route's common case is
answered by `PayloadFastPath`, an ASGI wrapper around Litestar's handler (see server/payload.py).
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
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import Message, Scope

from model_manager import __version__
from model_manager.errors import ModelManagerError, ThrottledError
from model_manager.server.auth import auth_routes
from model_manager.server.keys import KeysController
from model_manager.server.models import ModelsController
from model_manager.server.payload import PayloadFastPath
from model_manager.server.versions import VersionsController
from model_manager.service import ModelManager
from model_manager.settings import Settings
from model_manager.store import Store

log = logging.getLogger("model_manager.server")
access_log = logging.getLogger("model_manager.access")

UI_DIR = Path(__file__).parent / "ui"

_COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
_STRICT_CSP = (b"content-security-policy",
               b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
               b"form-action 'self'; frame-ancestors 'none'")
# The API docs pages under /schema load their renderer from a CDN; they get no framing, nothing more.
_DOCS_CSP = (b"content-security-policy", b"frame-ancestors 'none'")
_NO_STORE = (b"cache-control", b"no-store")  # token responses must not sit in any cache

HEADERS_UI_AND_API = [*_COMMON_HEADERS, _STRICT_CSP]
HEADERS_AUTH = [*_COMMON_HEADERS, _STRICT_CSP, _NO_STORE]
HEADERS_DOCS = [*_COMMON_HEADERS, _DOCS_CSP]


class ResponseHooks:
    """A `before_send` hook for every HTTP response, including 404/405/413 answered before any route
    handler runs and the fast path's: security headers, the `Allow` fix, and the access log."""

    def __init__(self) -> None:
        self._allow_by_path: dict[str, bytes] | None = None

    async def __call__(self, message: Message, scope: Scope) -> None:
        if scope["type"] != "http":
            return
        if message["type"] == "http.response.start":
            path: str = scope["path"]
            extra = HEADERS_DOCS if path.startswith("/schema") else HEADERS_AUTH if path.startswith("/api/auth/") \
                else HEADERS_UI_AND_API
            headers = message.get("headers", ())
            if scope["method"] == "OPTIONS" and message["status"] == 204:
                headers = self._fix_allow(scope, headers)
            message["headers"] = [*headers, *extra]  # type: ignore[typeddict-item]
            scope["mm_status"] = message["status"]  # type: ignore[typeddict-unknown-key]
        elif message["type"] == "http.response.body" and not message.get("more_body") \
                and access_log.isEnabledFor(logging.INFO):
            started = scope.get("mm_started")  # type: ignore[typeddict-item]
            client = scope.get("client")
            access_log.info(json.dumps({
                "method": scope["method"], "path": scope["path"], "status": scope.get("mm_status"),  # type: ignore[typeddict-item]
                "ms": round((time.perf_counter() - started) * 1000, 2) if started else None,
                "client": client[0] if client else None,
            }))

    def _fix_allow(self, scope: Scope, headers) -> list:
        """Litestar 2 answers OPTIONS on a path served by several handlers (GET and POST /api/models)
        with only the first handler's methods in `Allow` (litestar#4169, fixed in 3.0): use the
        methods of the whole route instead."""
        if self._allow_by_path is None:
            app = scope["litestar_app"]  # type: ignore[typeddict-item]
            self._allow_by_path = {route.path: ", ".join(sorted(route.methods)).encode()
                                   for route in app.routes if isinstance(route, HTTPRoute)}
        allow = self._allow_by_path.get(scope.get("path_template", ""))  # type: ignore[call-overload]
        if allow is None:
            return list(headers)
        return [(k, v) for k, v in headers if k.lower() != b"allow"] + [(b"allow", allow)]


class _Timed:
    """The outermost ASGI wrapper: notes when a request started, for the access log."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        scope["mm_started"] = time.perf_counter()
        await self.app(scope, receive, send)


def _error_response(request: Request, exc: ModelManagerError) -> Response:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, ThrottledError) else None
    return Response({"status_code": exc.status_code, "detail": str(exc)}, status_code=exc.status_code, headers=headers)


def _validation_error(request: Request, exc: ValidationException) -> Response:
    """Litestar's request validation: say which field is wrong in `detail`, not only in `extra`."""
    problems = [f"{e.get('key') or e.get('source')}: {e.get('message')}" for e in (exc.extra or []) if isinstance(e, dict)]
    detail = exc.detail + (f" ({'; '.join(problems)})" if problems else "")
    body = {"status_code": 400, "detail": detail}
    if exc.extra:
        body["extra"] = exc.extra
    return Response(body, status_code=400)


def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return Response({"status_code": 500, "detail": "internal error"}, status_code=500)


@get("/healthz", sync_to_thread=False, tags=["health"])
def healthz(request: Request) -> dict[str, str | bool]:
    """Liveness probe, no authentication. `models_loaded` turns true once the registered models are
    loaded; model requests made before that wait for it."""
    return {"status": "ok", "models_loaded": request.app.state.manager.serving.ready.is_set()}


def create_app(settings: Settings, *, store: Store | None = None) -> Litestar:
    """The application for these settings; opens (and on shutdown closes) the store unless given one."""
    manager = ModelManager(settings, store=store)
    registry = manager.serve()

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        await manager.start_serving()
        try:
            yield
        finally:
            try:
                await manager.stop_serving()
            finally:
                manager.close()

    handlers: list = [healthz, *auth_routes, ModelsController, VersionsController, KeysController]
    if UI_DIR.is_dir():
        handlers.append(create_static_files_router(path="/", directories=[UI_DIR], html_mode=True, name="ui",
                                                   include_in_schema=False))
    app = Litestar(
        route_handlers=handlers,
        lifespan=[lifespan],
        before_send=[ResponseHooks()],
        exception_handlers={ModelManagerError: _error_response, ValidationException: _validation_error,
                            HTTP_500_INTERNAL_SERVER_ERROR: _internal_error},
        compression_config=CompressionConfig(backend="gzip", minimum_size=1024, gzip_compress_level=6,
                                             exclude_opt_key="skip_compression"),
        openapi_config=_openapi(),
        cors_config=_cors(settings),
        request_max_body_size=settings.max_body_kb * 1024,
        logging_config=None,  # `serve` configures logging; the app must not touch global logging
        debug=False,
    )
    app.state.settings = settings
    app.state.manager = manager
    app.state.store = manager.store
    app.state.registry = registry
    app.state.auth = manager.auth
    # the fast path sits inside Litestar's __call__, so the before_send hooks cover its responses too
    app.state.fast_path = PayloadFastPath(app.asgi_handler, registry, manager.auth.tokens)
    app.asgi_handler = _Timed(app.state.fast_path)
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
        render_plugins=[SwaggerRenderPlugin(), ScalarRenderPlugin()],
    )
