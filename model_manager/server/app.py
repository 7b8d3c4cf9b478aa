"""`create_app(settings)`: the Litestar application — API, auth, UI, OpenAPI, HTTP hygiene.

Nothing happens on import. The app owns a `Store` (unless one is passed in), an `AuthService` and a
`Registry`; the lifespan loads the registered models before the first request and stops the
registry (and its watcher) on shutdown.

Every response passes through `ModelManagerApp.__call__`, which adds the security headers and
writes one access-log line (JSON: method, path, status, duration, client; never headers, query
strings or bodies, so no token or password can reach the log).
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from litestar import Litestar, Request, Response, Router, get
from litestar.config.compression import CompressionConfig
from litestar.config.cors import CORSConfig
from litestar.exceptions import ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import Message, Receive, Scope, Send

from model_manager import __version__
from model_manager.errors import ModelManagerError, ThrottledError
from model_manager.registry import Registry
from model_manager.server.auth import BEARER_SECURITY, AuthService, auth_routes, require_token
from model_manager.server.models import PayloadFastPath, model_routes
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


class ModelManagerApp(Litestar):
    """Litestar plus the response headers and access log that must cover every response,
    including 404/405/413 answered before any route handler runs. The payload route's common case
    is answered by `payload_fast_path` without entering Litestar (see server/models.py)."""

    payload_fast_path: PayloadFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # type: ignore[override]
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith("/schema"):
            extra = HEADERS_DOCS
        elif path.startswith("/api/auth/"):
            extra = HEADERS_AUTH
        else:
            extra = HEADERS_UI_AND_API
        started = time.perf_counter()
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", ())
                if scope["method"] == "OPTIONS" and status == 204:
                    headers = self._fix_allow(scope, headers)
                message["headers"] = [*headers, *extra]  # type: ignore[typeddict-item]
            await send(message)

        try:
            fast = self.payload_fast_path(scope) if self.payload_fast_path and path.startswith("/api/models/") else None
            if fast is None:
                await super().__call__(scope, receive, send_with_headers)
            else:
                status, headers, body = fast
                await send({"type": "http.response.start", "status": status, "headers": [*headers, *extra]})
                await send({"type": "http.response.body", "body": body})
        finally:
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info(json.dumps({
                    "method": scope["method"], "path": path, "status": status or None,
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                    "client": client[0] if client else None,
                }))


    def _fix_allow(self, scope: Scope, headers) -> list:
        """Litestar 2 answers OPTIONS on a path served by several handlers (GET and POST /api/models)
        with only the first handler's methods in `Allow` (litestar#4169, fixed in 3.0): use the
        methods of the whole route instead."""
        allow_by_path = self.__dict__.get("_allow_by_path")
        if allow_by_path is None:
            allow_by_path = self.__dict__["_allow_by_path"] = {
                route.path: ", ".join(sorted(route.methods)).encode() for route in self.routes if isinstance(route, HTTPRoute)}
        allow = allow_by_path.get(scope.get("path_template", ""))
        if allow is None:
            return list(headers)
        return [(k, v) for k, v in headers if k.lower() != b"allow"] + [(b"allow", allow)]


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
    return {"status": "ok", "models_loaded": request.app.state.registry.ready.is_set()}


async def _wait_for_models(request: Request) -> None:
    """Hold model requests during the initial load instead of answering 404 for models not yet read."""
    await request.app.state.registry.ready.wait()


def create_app(settings: Settings, *, store: Store | None = None) -> Litestar:
    """The application for these settings; opens (and on shutdown closes) the store unless given one."""
    owns_store = store is None
    store = store if store is not None else Store(settings.db_path)
    registry = Registry(settings, store)
    auth = AuthService(settings, store)

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        await registry.start()
        try:
            yield
        finally:
            try:
                await registry.stop()
            finally:
                if owns_store:
                    store.close()

    handlers: list = [
        healthz,
        *auth_routes,
        Router(path="/", route_handlers=model_routes, guards=[require_token], security=BEARER_SECURITY,
               before_request=_wait_for_models),
    ]
    if UI_DIR.is_dir():
        handlers.append(create_static_files_router(path="/", directories=[UI_DIR], html_mode=True, name="ui",
                                                   include_in_schema=False))

    cors = None
    if settings.cors_origins.strip():
        cors = CORSConfig(
            allow_origins=[o.strip() for o in settings.cors_origins.split(",") if o.strip()],
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "If-None-Match"],
            expose_headers=["ETag", "Retry-After"],
        )

    app = ModelManagerApp(
        route_handlers=handlers,
        lifespan=[lifespan],
        exception_handlers={ModelManagerError: _error_response, ValidationException: _validation_error,
                            HTTP_500_INTERNAL_SERVER_ERROR: _internal_error},
        compression_config=CompressionConfig(backend="gzip", minimum_size=1024, gzip_compress_level=6,
                                             exclude_opt_key="skip_compression"),
        openapi_config=OpenAPIConfig(
            title="model-manager",
            version=__version__,
            description="Serve per-symbol XGBoost models with their factor mapping to people and trading engines.",
            path="/schema",
            components=Components(security_schemes={
                "BearerToken": SecurityScheme(type="http", scheme="bearer",
                                              description="A token from POST /api/auth/login"),
            }),
            render_plugins=[SwaggerRenderPlugin(), ScalarRenderPlugin()],
        ),
        cors_config=cors,
        request_max_body_size=settings.max_body_kb * 1024,
        logging_config=None,  # `serve` configures logging; the app must not touch global logging
        debug=False,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.registry = registry
    app.state.auth = auth
    app.payload_fast_path = PayloadFastPath(registry, auth.tokens)
    return app
