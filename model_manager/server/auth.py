"""Authentication: one password, bearer tokens, the token guard and the /api/auth routes.

Hot path: `require_token` hashes the bearer token and looks the digest up in `TokenCache`, an
in-memory map of digest → expiry that re-reads sqlite for a digest at most every
`TOKEN_RECHECK_SECONDS`. Logout and password changes made through this process drop cache entries
at once; a `model-manager password set` in another process takes effect within the recheck period
(plus `RECHECK_GRACE_SECONDS` for requests made while the re-read is under way).

First run: while no password is set, `AuthService` holds a one-time setup code (printed by
`serve`). A bootstrap from a non-loopback client must present it, so whoever reaches the port first
cannot take the server over; a client on the same host may omit it.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from litestar import Request, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers import BaseRouteHandler
from litestar.params import JSONBody, Parameter

from model_manager.errors import AuthError, ConflictError, ForbiddenError, ThrottledError
from model_manager.server import error_responses
from model_manager.settings import Settings
from model_manager.store import Store, check_password_strength, hash_token, isoformat

log = logging.getLogger("model_manager.auth")

TOKEN_RECHECK_SECONDS = 0.5  # how stale a cached token check may be (revocation from another process)
RECHECK_GRACE_SECONDS = 0.1  # while one request re-reads a due token, the others use the cached answer
BEARER_SECURITY = [{"BearerToken": []}]
SETUP_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read off a terminal


def is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; anything unparsable is not loopback."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def bearer_token(connection: ASGIConnection) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    return parse_bearer(connection.headers.get("authorization"))


def parse_bearer(header: str | None) -> str | None:
    """The token of an `Authorization` header value `Bearer <token>`, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class TokenCache:
    """digest → (expiry as unix seconds, when it was last read from sqlite as monotonic seconds)."""

    def __init__(self, store: Store, recheck_seconds: float = TOKEN_RECHECK_SECONDS, max_entries: int = 10_000):
        self.store = store
        self.recheck_seconds = recheck_seconds
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, float]] = {}
        self._rechecking: dict[str, float] = {}  # digest → until when one request's sqlite re-read covers it

    def expiry(self, digest: str) -> float | None:
        """Expiry of a live token (unix seconds), None when unknown, revoked or expired."""
        entry = self._entries.get(digest)
        if entry is None or time.monotonic() - entry[1] >= self.recheck_seconds:
            moment = self.store.token_expiry_for_digest(digest)
            self._rechecking.pop(digest, None)
            if moment is None:
                self._entries.pop(digest, None)
                return None
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # bounded memory; live tokens are simply re-read
            entry = (moment.timestamp(), time.monotonic())
            self._entries[digest] = entry
        if entry[0] <= time.time():
            self._entries.pop(digest, None)
            return None
        return entry[0]

    def fresh(self, digest: str, *, claim: bool = True) -> float | None | bool:
        """`expiry` without any I/O: False when the answer needs sqlite (unknown digest, or an entry
        due for its recheck); then the caller asks `expiry` off the event loop.

        Of the requests that find an entry due, only one is sent to sqlite: the entry is vouched
        for `RECHECK_GRACE_SECONDS` longer while that read is under way. Otherwise every request of
        a busy client queued for the same read twice a second, which set the p99 latency. With
        `claim=False` (the payload fast path, which cannot read sqlite itself) a due entry nobody is
        re-reading yet is False without being claimed, so the full route's guard claims and reads it."""
        entry = self._entries.get(digest)
        if entry is None:
            return False
        now = time.monotonic()
        if now - entry[1] >= self.recheck_seconds and self._rechecking.get(digest, 0.0) <= now:
            if claim:
                self._rechecking[digest] = now + RECHECK_GRACE_SECONDS  # this caller re-reads; the others need not
            return False
        if entry[0] <= time.time():
            return None
        return entry[0]

    def forget(self, digest: str) -> None:
        self._entries.pop(digest, None)

    def clear(self, *, keep: str | None = None) -> None:
        kept = self._entries.get(keep) if keep else None
        self._entries.clear()
        self._rechecking.clear()
        if kept is not None:
            self._entries[keep] = kept  # type: ignore[index]


class LoginThrottle:
    """Failed password attempts per client address. After `free_failures` failures each further one
    blocks the client for a doubling delay (capped); a success resets the address."""

    def __init__(self, free_failures: int = 5, base_delay: float = 2.0, max_delay: float = 300.0,
                 forget_after: float = 900.0, max_clients: int = 10_000):
        self.free_failures = free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_clients = max_clients
        self._clients: dict[str, tuple[int, float, float]] = {}  # client -> (failures, blocked_until, last_failure)
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        """Raise ThrottledError while the client is blocked."""
        with self._lock:
            failures, blocked_until, last = self._clients.get(client, (0, 0.0, 0.0))
        now = time.monotonic()
        if blocked_until > now:
            wait = max(1, math.ceil(blocked_until - now))
            raise ThrottledError(f"too many failed attempts from this address: try again in {wait} s", retry_after=wait)

    def failure(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            failures, _, last = self._clients.get(client, (0, 0.0, 0.0))
            if last and now - last > self.forget_after:
                failures = 0
            failures += 1
            blocked_until = 0.0
            if failures >= self.free_failures:
                blocked_until = now + min(self.base_delay * 2 ** (failures - self.free_failures), self.max_delay)
            if len(self._clients) >= self.max_clients:
                self._clients = {k: v for k, v in self._clients.items() if now - v[2] < self.forget_after}
            self._clients[client] = (failures, blocked_until, now)

    def success(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)


class AuthService:
    """The password, tokens, throttling and first-run setup code of one app instance."""

    def __init__(self, settings: Settings, store: Store):
        self.settings = settings
        self.store = store
        self.tokens = TokenCache(store)
        self.throttle = LoginThrottle()
        # argon2 takes ~64 MiB and ~0.1 s per check: bound the concurrent ones, off the event loop
        self._hash_limiter = anyio.CapacityLimiter(2)
        self.setup_code: str | None = None if store.is_initialized() else new_setup_code()

    # -- tokens -----------------------------------------------------------------------------------

    def token_object(self) -> dict[str, Any]:
        token, expires = self.store.create_token(self.settings.token_ttl)
        return {"token": token, "token_type": "bearer", "expires_in": self.settings.token_ttl,
                "expires_at": isoformat(expires)}

    def token_expiry(self, token: str | None) -> float | None:
        return self.tokens.expiry(hash_token(token)) if token else None

    async def _verify(self, password: str, client_key: str) -> bool:
        def check() -> bool:
            # checked again once a hashing slot is free: a burst of parallel guesses must not all get
            # past a block that the first failures of the burst put in place
            self.throttle.check(client_key)
            return self.store.verify_password(password)

        return await anyio.to_thread.run_sync(check, limiter=self._hash_limiter)

    # -- flows (called by the route handlers) -----------------------------------------------------

    async def bootstrap(self, password: str, setup_code: str | None, client: str | None) -> dict[str, Any]:
        key = client or "unknown"
        self.throttle.check(key)
        if self.store.is_initialized():
            self.setup_code = None
            raise ConflictError("a password is already set: log in with POST /api/auth/login")
        if not is_loopback(client):
            if not setup_code:
                self.store.audit("bootstrap_refused", client=client, detail="no setup code")
                raise ForbiddenError("setting the first password from another machine needs the one-time setup code: "
                                     "`model-manager serve` printed it at startup (see the server's output or log); "
                                     "or run `model-manager password init` on the server")
            if not self.setup_code or not hmac.compare_digest(_normalize_code(setup_code), _normalize_code(self.setup_code)):
                self.throttle.failure(key)
                self.store.audit("bootstrap_refused", client=client, detail="wrong setup code")
                raise ForbiddenError("the setup code is wrong: use the one-time code printed by `model-manager serve` "
                                     "at startup of the running server")
        check_password_strength(password)
        await anyio.to_thread.run_sync(self.store.init_password, password, limiter=self._hash_limiter)
        self.setup_code = None
        self.throttle.success(key)
        self.store.audit("bootstrap", client=client)
        return self.token_object()

    async def login(self, password: str, client: str | None) -> dict[str, Any]:
        key = client or "unknown"
        self.throttle.check(key)
        if not self.store.is_initialized():
            raise ConflictError("no password is set yet: set one with POST /api/auth/bootstrap "
                                "or `model-manager password init`")
        if not await self._verify(password, key):
            self.throttle.failure(key)
            self.store.audit("login_failed", client=client)
            raise AuthError("wrong password")
        self.throttle.success(key)
        self.store.audit("login", client=client)
        return self.token_object()

    def logout(self, token: str, client: str | None) -> None:
        self.store.revoke_token(token)
        self.tokens.forget(hash_token(token))
        self.store.audit("logout", client=client)

    async def change_password(self, token: str, current: str, new: str, client: str | None) -> None:
        key = client or "unknown"
        self.throttle.check(key)
        if not await self._verify(current, key):
            self.throttle.failure(key)
            self.store.audit("password_change_failed", client=client)
            raise AuthError("the current password is wrong")
        self.throttle.success(key)
        check_password_strength(new)
        revoked = await anyio.to_thread.run_sync(
            lambda: self.store.set_password(new, keep_token=token), limiter=self._hash_limiter)
        self.tokens.clear(keep=hash_token(token))
        self.store.audit("password_changed", client=client, detail=f"{revoked} other token(s) revoked")


def new_setup_code() -> str:
    chars = "".join(secrets.choice(SETUP_CODE_ALPHABET) for _ in range(8))
    return f"{chars[:4]}-{chars[4:]}"


def _normalize_code(code: str) -> bytes:
    return "".join(code.split()).replace("-", "").upper().encode()


async def require_token(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard: a live bearer token or 401.

    Async on purpose: Litestar runs a sync guard in a worker thread, and that thread hop cost more
    than the whole payload request. A token checked within the last `TOKEN_RECHECK_SECONDS` is
    answered from memory; otherwise sqlite is read in a worker thread."""
    token = bearer_token(connection)
    if token is None:
        raise NotAuthorizedException(detail="missing bearer token: log in with POST /api/auth/login and send "
                                            "`Authorization: Bearer <token>`", headers={"WWW-Authenticate": "Bearer"})
    auth = connection.app.state.auth
    expiry = auth.tokens.fresh(hash_token(token))
    if expiry is False:
        expiry = await anyio.to_thread.run_sync(auth.token_expiry, token)
    if expiry is None:
        raise NotAuthorizedException(detail="the token is invalid, expired or revoked: log in again",
                                     headers={"WWW-Authenticate": "Bearer"})


def client_address(request: Request) -> str | None:
    """The client's address as the server sees it (for throttling, the setup code and the audit trail)."""
    return request.client.host if request.client else None


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

@get("/api/auth/status", sync_to_thread=False, tags=["auth"])
def auth_status(request: Request) -> AuthStatus:
    """Whether a password is set and whether the bearer token sent (if any) is live."""
    auth: AuthService = request.app.state.auth
    initialized = auth.store.is_initialized()
    expiry = auth.token_expiry(bearer_token(request))
    return AuthStatus(
        initialized=initialized,
        authenticated=expiry is not None,
        expires_at=isoformat_ts(expiry),
        setup_code_required=not initialized and not is_loopback(client_address(request)),
    )


@post("/api/auth/bootstrap", status_code=201, tags=["auth"], responses=error_responses(400, 403, 409, 429))
async def auth_bootstrap(request: Request, data: JSONBody[BootstrapBody]) -> TokenObject:
    """Set the first password and get a token. From another machine, send the setup code `serve` printed."""
    return TokenObject(**await request.app.state.auth.bootstrap(data.password, data.setup_code, client_address(request)))


@post("/api/auth/login", status_code=200, tags=["auth"], responses=error_responses(400, 401, 409, 429))
async def auth_login(request: Request, data: JSONBody[PasswordBody]) -> TokenObject:
    """Exchange the password for a bearer token."""
    return TokenObject(**await request.app.state.auth.login(data.password, client_address(request)))


@post("/api/auth/logout", status_code=204, guards=[require_token], security=BEARER_SECURITY, tags=["auth"],
      responses=error_responses(401), sync_to_thread=False)
def auth_logout(request: Request) -> None:
    """Revoke the token sent with this request."""
    request.app.state.auth.logout(bearer_token(request), client_address(request))


@post("/api/auth/password", status_code=204, guards=[require_token], security=BEARER_SECURITY, tags=["auth"],
      responses=error_responses(400, 401, 429))
async def auth_password(request: Request, data: JSONBody[PasswordChangeBody]) -> None:
    """Change the password; every token except the one sent with this request is revoked."""
    await request.app.state.auth.change_password(bearer_token(request), data.current_password, data.new_password,
                                                 client_address(request))


@get("/api/audit", guards=[require_token], security=BEARER_SECURITY, tags=["audit"], sync_to_thread=False,
     responses=error_responses(400, 401))
def audit_events(
    request: Request,
    limit: int = Parameter(default=200, ge=1, le=1000, description="How many events, newest first"),
    event: str | None = Parameter(default=None, max_length=64, description="Only this event type"),
) -> AuditEvents:
    """The audit trail: logins, failed logins, password changes, registrations, refresh failures."""
    rows = request.app.state.store.audit_events(limit=limit, event=event)
    return AuditEvents(events=[AuditEvent(**row) for row in rows])


def isoformat_ts(timestamp: float | None) -> str | None:
    return None if timestamp is None else isoformat(datetime.fromtimestamp(timestamp, UTC))


auth_routes = [auth_status, auth_bootstrap, auth_login, auth_logout, auth_password, audit_events]
