"""The HTTP side of authentication: the token guard (sessions and API keys, with the scope rule) and the
/api/auth and /api/audit routes.

The flows themselves (password, tokens, throttling, setup code) are `model_manager.auth.Authenticator`;
every one of them touches sqlite or argon2, so the routes run them in worker threads. argon2 takes
~64 MiB and ~0.1 s per check: at most two run at once (`HASH_LIMITER`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import anyio
from litestar import Request, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from litestar.params import JSONBody, Parameter

from model_manager.auth import SESSION, Authenticator, Identity, parse_bearer
from model_manager.clock import iso_from_timestamp
from model_manager.server import error_responses
from model_manager.store import hash_token

BEARER_SECURITY = [{"BearerToken": []}]
_HASH_SLOTS = 2


def bearer_token(connection: ASGIConnection) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    return parse_bearer(connection.headers.get("authorization"))


def client_address(request: ASGIConnection) -> str | None:
    """The client's address as the server sees it (for throttling, the setup code and the audit trail)."""
    return request.client.host if request.client else None


def _auth(connection: ASGIConnection) -> Authenticator:
    return connection.app.state.manager.auth


async def _hashing(connection: ASGIConnection, fn, *args) -> Any:
    """Run a flow that checks or makes a password hash in a worker thread, two at a time."""
    state = connection.app.state
    limiter = state.get("hash_limiter")
    if limiter is None:
        limiter = state.hash_limiter = anyio.CapacityLimiter(_HASH_SLOTS)
    return await anyio.to_thread.run_sync(lambda: fn(*args), limiter=limiter)


async def require_token(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard: a live bearer credential (a session token or an API key) allowed this request, else 401/403.

    Async on purpose: Litestar runs a sync guard in a worker thread, and that thread hop cost more
    than the whole payload request. A credential checked within the last `TOKEN_RECHECK_SECONDS` is
    answered from memory; otherwise sqlite is read in a worker thread. The scope rule is the core's
    `Identity.may`: a read key gets 403 on anything but GET /api/models/**. The identity is left on
    the connection scope (`mm_identity`) for the routes that record who asked."""
    token = bearer_token(connection)
    if token is None:
        raise NotAuthorizedException(detail="missing bearer token: log in with POST /api/auth/login (or use an API key) "
                                            "and send `Authorization: Bearer <token>`", headers={"WWW-Authenticate": "Bearer"})
    tokens = _auth(connection).tokens
    digest = hash_token(token)
    expiry = tokens.fresh(digest)
    identity = tokens.identity(digest) if isinstance(expiry, float) else None
    if identity is None and expiry is not None:  # due for its recheck, or not seen yet
        identity = await anyio.to_thread.run_sync(tokens.check, digest)
    if identity is None:
        raise NotAuthorizedException(detail="the token or API key is invalid, expired or revoked: log in again, "
                                            "or use a live key", headers={"WWW-Authenticate": "Bearer"})
    method, path = connection.scope["method"], connection.scope["path"]  # type: ignore[typeddict-item]
    if not identity.may(method, path):
        raise PermissionDeniedException(detail=identity.refusal(method, path))
    connection.scope["mm_identity"] = identity  # type: ignore[typeddict-unknown-key]


def identity_of(connection: ASGIConnection) -> Identity:
    """Whom the request's credential speaks for (set by `require_token`)."""
    return connection.scope.get("mm_identity", SESSION)  # type: ignore[return-value]


async def require_token_unless_public(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Guard of /metrics: a live token or key, unless MODEL_MANAGER_METRICS_PUBLIC=1."""
    if not connection.app.state.settings.metrics_public:
        await require_token(connection, handler)


# -- request and response bodies (they document the API in /schema) -------------------------------

@dataclass
class PasswordBody:
    password: str


@dataclass
class BootstrapBody:
    password: str
    setup_code: str | None = None


@dataclass
class PasswordChangeBody:
    current_password: str
    new_password: str


@dataclass
class TokenObject:
    token: str
    token_type: str
    expires_in: int
    expires_at: str


@dataclass
class AuthStatus:
    initialized: bool
    authenticated: bool
    expires_at: str | None
    setup_code_required: bool
    client: str | None = None  # "session", or the API key's name
    scope: str | None = None   # "admin" or "read"


@dataclass
class AuditEvent:
    id: int
    at: str
    event: str
    client: str | None
    detail: str


@dataclass
class AuditEvents:
    events: list[AuditEvent]


# -- routes ---------------------------------------------------------------------------------------

@get("/api/auth/status", tags=["auth"])
async def auth_status(request: Request) -> AuthStatus:
    """Whether a password is set and whether the bearer token or API key sent (if any) is live, and for whom."""
    initialized, expiry, identity = await anyio.to_thread.run_sync(_auth(request).status, bearer_token(request))
    return AuthStatus(initialized=initialized, authenticated=expiry is not None,
                      expires_at=iso_from_timestamp(expiry) if expiry != math.inf else None,
                      setup_code_required=not initialized,
                      client=identity.client if identity else None, scope=identity.scope if identity else None)


@post("/api/auth/bootstrap", status_code=201, tags=["auth"], responses=error_responses(400, 403, 409, 429))
async def auth_bootstrap(request: Request, data: JSONBody[BootstrapBody]) -> TokenObject:
    """Set the first password and get a token. Send the one-time setup code `serve` printed (from every client)."""
    auth, client = _auth(request), client_address(request)
    auth.throttle.check(client or "unknown")
    return TokenObject(**await _hashing(request, auth.bootstrap, data.password, data.setup_code, client))


@post("/api/auth/login", status_code=200, tags=["auth"], responses=error_responses(400, 401, 409, 429))
async def auth_login(request: Request, data: JSONBody[PasswordBody]) -> TokenObject:
    """Exchange the password for a bearer token."""
    auth, client = _auth(request), client_address(request)
    auth.throttle.check(client or "unknown")  # a blocked client waits for no hashing slot
    return TokenObject(**await _hashing(request, auth.login, data.password, client))


@post("/api/auth/logout", status_code=204, guards=[require_token], security=BEARER_SECURITY, tags=["auth"],
      responses=error_responses(400, 401, 403), sync_to_thread=True)
def auth_logout(request: Request) -> None:
    """Revoke the session token sent with this request (400 for an API key: revoke it by name)."""
    _auth(request).logout(bearer_token(request), client_address(request))


@post("/api/auth/password", status_code=204, guards=[require_token], security=BEARER_SECURITY, tags=["auth"],
      responses=error_responses(400, 401, 403, 429))
async def auth_password(request: Request, data: JSONBody[PasswordChangeBody]) -> None:
    """Change the password; every token except the one sent with this request is revoked."""
    auth, client = _auth(request), client_address(request)
    auth.throttle.check(client or "unknown")
    await _hashing(request, auth.change_password, bearer_token(request), data.current_password, data.new_password, client)


@get("/api/audit", guards=[require_token], security=BEARER_SECURITY, tags=["audit"], sync_to_thread=True,
     responses=error_responses(400, 401, 403))
def audit_events(
    request: Request,
    limit: int = Parameter(default=200, ge=1, le=1000, description="How many events, newest first"),
    event: str | None = Parameter(default=None, max_length=64, description="Only this event type"),
) -> AuditEvents:
    """The audit trail: logins, failed logins, password changes, registrations, refresh failures."""
    rows = request.app.state.manager.audit_events(limit=limit, event=event)
    return AuditEvents(events=[AuditEvent(**row) for row in rows])


auth_routes = [auth_status, auth_bootstrap, auth_login, auth_logout, auth_password, audit_events]
