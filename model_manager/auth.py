"""Authentication, without any web framework: the password flows, bearer credentials (session tokens
and API keys), the scope rule, and login throttling.

`Authenticator` is what the server calls (its methods do blocking I/O — sqlite, argon2 — so the
server runs them in worker threads). Each flow and its audit row is one store transaction.

Credential checks are the hot path: `TokenCache` maps a digest to its expiry and `Identity` (who:
"session" or a key's name; scope: "admin" or "read") and re-reads sqlite for a digest at most every
`TOKEN_RECHECK_SECONDS`. Logout, password changes and key revocations made through this process drop
cache entries at once; a `model-manager password set` or `keys revoke` in another process takes effect
within the recheck period (plus `RECHECK_GRACE_SECONDS` for requests made while the re-read is under way).
`Identity.may(method, path)` is the scope rule the server's guard applies.

First run: while no password is set, the authenticator holds a one-time setup code (printed by
`serve` with a link that fills it in). Every bootstrap must present it, so whoever reaches the port
first cannot take the server over — a client on the same host included, since a proxy on the same
host makes every client look local. Five wrong codes and every bootstrap is throttled.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from model_manager.clock import isoformat
from model_manager.errors import AuthError, ConflictError, ForbiddenError, ThrottledError, ValidationError
from model_manager.keys import LAST_USED_WRITE_SECONDS, SESSION_CLIENT, KeyRecord, KeyStore
from model_manager.settings import Settings
from model_manager.store import Store, check_password_strength, hash_token

log = logging.getLogger(__name__)

TOKEN_RECHECK_SECONDS = 0.5  # how stale a cached token check may be (revocation from another process)
RECHECK_GRACE_SECONDS = 0.1  # while one request re-reads a due token, the others use the cached answer
SETUP_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read off a terminal
# what a read key may GET (and everything below it): the models, and the metrics a monitoring
# system scrapes (SPEC §9 asks "a key or session" for /metrics; an admin key is no scraper's business)
READ_SCOPE_PATHS = ("/api/models", "/metrics")


def parse_bearer(header: str | None) -> str | None:
    """The token of an `Authorization` header value `Bearer <token>`, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass(frozen=True)
class Identity:
    """Who a bearer credential speaks for: `client` is an API key's name, or "session" for a password
    session; `scope` is "admin" (sessions, admin keys) or "read"."""

    client: str
    scope: str

    @property
    def is_session(self) -> bool:
        return self.client == SESSION_CLIENT

    def may(self, method: str, path: str) -> bool:
        """Whether this credential may make this request: everything for the admin scope; for the read
        scope, GET (and HEAD) of `/api/models` and below, nothing else."""
        if self.scope == "admin":
            return True
        return method in ("GET", "HEAD") and any(path == p or path.startswith(p + "/") for p in READ_SCOPE_PATHS)

    def refusal(self, method: str, path: str) -> str:
        """The 403 detail for a request `may` refuses."""
        return (f"the API key {self.client!r} has the read scope: it can only GET /api/models/… "
                f"(lists, symbols, factors, details, payloads, versions); {method} {path} needs an admin key "
                "or a password session (log in)")


SESSION = Identity(SESSION_CLIENT, "admin")


class TokenCache:
    """digest → (expiry as unix seconds, when it was last read from sqlite as monotonic seconds, Identity).

    A bearer credential is a password session token (`tokens` table) or an API key (`keys.KeyStore`);
    both are known by their sha256 digest and rechecked the same way, so a revoked key, like a revoked
    token, is refused at once in the process that revoked it and within `recheck_seconds` in every
    other. A key that never expires has the expiry `math.inf`. Each sqlite re-read of a key — at most
    one per `recheck_seconds` while it is used — notes the use in memory (`last_used`), and writes it
    to the store when the stored time is older than `keys.LAST_USED_WRITE_SECONDS`: no write per request."""

    def __init__(self, store: Store, recheck_seconds: float = TOKEN_RECHECK_SECONDS, max_entries: int = 10_000):
        self.store = store
        self.keys = KeyStore(store)
        self.recheck_seconds = recheck_seconds
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, float, Identity]] = {}
        self._rechecking: dict[str, float] = {}  # digest → until when one request's sqlite re-read covers it
        self._key_used: dict[str, float] = {}  # key digest → latest use noted (unix seconds)

    def lookup(self, digest: str) -> tuple[float, Identity] | None:
        """Read sqlite: (expiry, identity) of a live session token or API key, else None."""
        moment = self.store.token_expiry_for_digest(digest)
        if moment is not None:
            return moment.timestamp(), SESSION
        record = self.keys.lookup(digest)
        if record is None or not record.live():
            return None
        self._note_use(record)
        return (math.inf if record.expires_at is None else record.expires_at), Identity(record.name, record.scope)

    def _note_use(self, record: KeyRecord) -> None:
        now = time.time()
        self._key_used[record.digest] = now
        if record.last_used_at is None or now - record.last_used_at >= LAST_USED_WRITE_SECONDS:
            try:
                self.keys.touch(record.digest, now)
            except sqlite3.Error as exc:  # a busy database must not refuse the request; the next use retries
                log.warning("could not record the use of API key %r: %s", record.name, exc)

    def last_used(self, digest: str) -> float | None:
        """The latest use of a key this process noted (it may be newer than the stored one)."""
        return self._key_used.get(digest)

    def check(self, digest: str) -> Identity | None:
        """The identity of a live credential (reading sqlite when due), None when unknown, revoked or expired."""
        entry = self._live_entry(digest)
        return entry[2] if entry else None

    def expiry(self, digest: str) -> float | None:
        """Expiry of a live credential (unix seconds, `math.inf` for a key that never expires), None
        when unknown, revoked or expired."""
        entry = self._live_entry(digest)
        return entry[0] if entry else None

    def _live_entry(self, digest: str) -> tuple[float, float, Identity] | None:
        entry = self._entries.get(digest)
        if entry is None or time.monotonic() - entry[1] >= self.recheck_seconds:
            found = self.lookup(digest)
            self._rechecking.pop(digest, None)
            if found is None:
                self._entries.pop(digest, None)
                return None
            if len(self._entries) >= self.max_entries:
                self._entries.clear()  # bounded memory; live tokens are simply re-read
            entry = (found[0], time.monotonic(), found[1])
            self._entries[digest] = entry
        if entry[0] <= time.time():
            self._entries.pop(digest, None)
            return None
        return entry

    def fresh(self, digest: str, *, claim: bool = True) -> float | None | bool:
        """`expiry` without any I/O: False when the answer needs sqlite (unknown digest, or an entry
        due for its recheck); then the caller asks `expiry` (or `check`) off the event loop.

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

    def identity(self, digest: str) -> Identity | None:
        """The identity of a cached credential, without any I/O; None when it is not cached. It says
        nothing about whether the credential is live: ask `fresh` (or `check`) first."""
        entry = self._entries.get(digest)
        return entry[2] if entry else None

    def forget(self, digest: str) -> None:
        self._entries.pop(digest, None)

    def clear(self, *, keep: str | None = None) -> None:
        kept = self._entries.get(keep) if keep else None
        self._entries.clear()
        self._rechecking.clear()
        if kept is not None:
            self._entries[keep] = kept  # type: ignore[index]


class LoginThrottle:
    """Failed attempts, per client and across all clients.

    After `free_failures` failures from one client each further one blocks that client for a doubling
    delay (capped); after `global_free_failures` failures from anyone, everyone is blocked the same
    way, so guesses spread over many addresses (an IPv6 /64 holds 2**64) do not multiply. IPv6
    clients are counted per /64. A success resets its client; failures are forgotten after
    `forget_after` seconds without one.

    With a `store`, the counts live in sqlite (table `throttle`, rows of this `kind`), so every server
    process of a data dir — the workers of `serve --workers N` — counts the same failures, and a
    restart forgets none. `check(shared=True)` (blocking) reads them; a plain `check` answers from what
    this process has seen (cheap enough for the event loop: the early refusal of a blocked client)."""

    GLOBAL = "*"

    def __init__(self, free_failures: int = 5, base_delay: float = 2.0, max_delay: float = 300.0,
                 forget_after: float = 900.0, max_clients: int = 10_000, global_free_failures: int = 30,
                 store: Store | None = None, kind: str = "login"):
        self.free_failures = free_failures
        self.global_free_failures = global_free_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.max_clients = max_clients
        self.store = store
        self.kind = kind
        self._clients: dict[str, tuple[int, float, float]] = {}  # client -> (failures, blocked_until, last_failure)
        self._lock = threading.Lock()

    def check(self, client: str, *, shared: bool = False) -> None:
        """Raise ThrottledError while the client (or everyone) is blocked. `shared`: as every process
        sharing the store counted (blocking: a sqlite read)."""
        now = time.time()
        keys = (client_key(client), self.GLOBAL)
        if shared and self.store is not None:
            self._pull(keys)
        for key, whom in zip(keys, ("this address", "this server")):
            with self._lock:
                _failures, blocked_until, _last = self._clients.get(key, (0, 0.0, 0.0))
            if blocked_until > now:
                wait = max(1, math.ceil(blocked_until - now))
                raise ThrottledError(f"too many failed attempts on {whom}: try again in {wait} s", retry_after=wait)

    def _pull(self, keys: tuple[str, ...]) -> None:
        rows = {key: (failures, blocked, last) for key, failures, blocked, last in self.store.query(
            "SELECT key, failures, blocked_until, last_failure FROM throttle WHERE kind = ? AND key IN (?, ?)",
            (self.kind, *keys))}
        with self._lock:
            for key in keys:
                if key in rows:
                    self._clients[key] = rows[key]
                else:  # reset by a success elsewhere, or never failed
                    self._clients.pop(key, None)

    def failure(self, client: str) -> None:
        now = time.time()
        counted = ((client_key(client), self.free_failures), (self.GLOBAL, self.global_free_failures))
        with self._lock:
            if len(self._clients) >= self.max_clients:
                self._clients = {k: v for k, v in self._clients.items() if now - v[2] < self.forget_after}
            if self.store is None:
                for key, free in counted:
                    self._clients[key] = self._counted(self._clients.get(key), free, now)
                return
            with self.store.transaction() as db:
                db.execute("DELETE FROM throttle WHERE kind = ? AND last_failure < ?", (self.kind, now - self.forget_after))
                for key, free in counted:
                    row = db.execute("SELECT failures, blocked_until, last_failure FROM throttle WHERE kind = ? AND key = ?",
                                     (self.kind, key)).fetchone()
                    self._clients[key] = state = self._counted(row, free, now)
                    db.execute("INSERT OR REPLACE INTO throttle (kind, key, failures, blocked_until, last_failure) "
                               "VALUES (?, ?, ?, ?, ?)", (self.kind, key, *state))

    def _counted(self, old: tuple[int, float, float] | None, free: int, now: float) -> tuple[int, float, float]:
        failures, _, last = old or (0, 0.0, 0.0)
        if last and now - last > self.forget_after:
            failures = 0
        failures += 1
        blocked_until = now + min(self.base_delay * 2 ** (failures - free), self.max_delay) if failures >= free else 0.0
        return failures, blocked_until, now

    def attempt(self, client: str) -> None:
        """Before a slow check (the password's hash): ThrottledError while the client or everyone is
        blocked, else count the attempt as a failure now, in one step (one transaction with a store),
        so attempts made at the same moment — through several workers too — are each counted and no
        more than the free ones reach the check. `success` takes the count back."""
        now = time.time()
        counted = ((client_key(client), self.free_failures, "this address"),
                   (self.GLOBAL, self.global_free_failures, "this server"))
        with self._lock:
            if self.store is None:
                states = {key: self._clients.get(key) for key, _, _ in counted}
                self._refuse_if_blocked(states, counted, now)
                for key, free, _ in counted:
                    self._clients[key] = self._counted(states[key], free, now)
                return
            with self.store.transaction() as db:
                states = {key: db.execute("SELECT failures, blocked_until, last_failure FROM throttle "
                                          "WHERE kind = ? AND key = ?", (self.kind, key)).fetchone()
                          for key, _, _ in counted}
                self._refuse_if_blocked(states, counted, now)
                for key, free, _ in counted:
                    self._clients[key] = state = self._counted(states[key], free, now)
                    db.execute("INSERT OR REPLACE INTO throttle (kind, key, failures, blocked_until, last_failure) "
                               "VALUES (?, ?, ?, ?, ?)", (self.kind, key, *state))

    @staticmethod
    def _refuse_if_blocked(states: dict, counted: tuple, now: float) -> None:
        for key, _, whom in counted:
            blocked_until = states[key][1] if states[key] else 0.0
            if blocked_until > now:
                wait = max(1, math.ceil(blocked_until - now))
                raise ThrottledError(f"too many failed attempts on {whom}: try again in {wait} s", retry_after=wait)

    def success(self, client: str) -> None:
        """The client got it right: its count is reset, and the attempt `attempt` counted for
        everyone is taken back."""
        key = client_key(client)
        with self._lock:
            self._clients.pop(key, None)
            if self.store is None:
                self._clients[self.GLOBAL] = self._uncounted(self._clients.get(self.GLOBAL))
                return
            with self.store.transaction() as db:
                db.execute("DELETE FROM throttle WHERE kind = ? AND key = ?", (self.kind, key))
                row = db.execute("SELECT failures, blocked_until, last_failure FROM throttle WHERE kind = ? AND key = ?",
                                 (self.kind, self.GLOBAL)).fetchone()
                if row is not None:
                    self._clients[self.GLOBAL] = state = self._uncounted(row)
                    db.execute("UPDATE throttle SET failures = ?, blocked_until = ? WHERE kind = ? AND key = ?",
                               (state[0], state[1], self.kind, self.GLOBAL))

    def _uncounted(self, state: tuple[int, float, float] | None) -> tuple[int, float, float]:
        failures, blocked_until, last = state or (0, 0.0, 0.0)
        failures = max(0, failures - 1)
        return failures, blocked_until if failures >= self.global_free_failures else 0.0, last


def client_key(client: str) -> str:
    """What a client is counted as: its address, or its /64 for IPv6 (one host can hold them all)."""
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class Authenticator:
    """The password, tokens, throttling and first-run setup code of one server process (throttling
    and everything but the setup code itself are shared with the other processes through the store)."""

    def __init__(self, settings: Settings, store: Store, setup_code: str | None = None):
        self.settings = settings
        self.store = store
        self.tokens = TokenCache(store)
        self.throttle = LoginThrottle(store=store)
        # 5 wrong setup codes from anywhere and every bootstrap waits: the code is the only secret then
        self.setup_throttle = LoginThrottle(free_failures=5, global_free_failures=5, store=store, kind="setup")
        # `setup_code`: the one every worker of a server shares (the supervisor printed it)
        self.setup_code: str | None = None if store.is_initialized() else (setup_code or new_setup_code())
        self.changed: Callable[[], None] = lambda: None  # after a revocation (the server's workers follow at once)

    def token_object(self) -> dict[str, Any]:
        token, expires = self.store.create_token(self.settings.token_ttl)
        return {"token": token, "token_type": "bearer", "expires_in": self.settings.token_ttl,
                "expires_at": isoformat(expires)}

    def token_expiry(self, token: str | None) -> float | None:
        """Expiry (unix seconds; `math.inf`: never) of a live token or API key; None for no token,
        unknown, revoked or expired."""
        return self.tokens.expiry(hash_token(token)) if token else None

    def status(self, token: str | None) -> tuple[bool, float | None, Identity | None]:
        """(a password is set, expiry of `token` or None, whom `token` speaks for or None)."""
        if not token:
            return self.store.is_initialized(), None, None
        digest = hash_token(token)
        expiry = self.tokens.expiry(digest)
        return self.store.is_initialized(), expiry, self.tokens.identity(digest) if expiry is not None else None

    def bootstrap(self, password: str, setup_code: str | None, client: str | None) -> dict[str, Any]:
        """Set the first password and return a token object."""
        key = client or "unknown"
        self.setup_throttle.check(key, shared=True)
        if self.store.is_initialized():
            self.setup_code = None
            raise ConflictError("a password is already set: log in with POST /api/auth/login")
        self._check_setup_code(setup_code, client, key)
        check_password_strength(password)
        self.store.init_password(password, client=client)
        self.setup_code = None
        return self.token_object()

    def _check_setup_code(self, setup_code: str | None, client: str | None, key: str) -> None:
        if not setup_code:
            self.store.audit("bootstrap_refused", client=client, detail="no setup code")
            raise ForbiddenError("setting the first password needs the one-time setup code: `model-manager serve` "
                                 "printed it at startup, with a link that fills it in (see the server's output or log); "
                                 "or run `model-manager password init` on the server")
        if not self.setup_code or not hmac.compare_digest(_normalize_code(setup_code), _normalize_code(self.setup_code)):
            self.setup_throttle.failure(key)
            self.store.audit("bootstrap_refused", client=client, detail="wrong setup code")
            raise ForbiddenError("the setup code is wrong: use the one-time code printed by `model-manager serve` "
                                 "at startup of the running server")

    def login(self, password: str, client: str | None) -> dict[str, Any]:
        """Check the password (throttled per client) and return a token object."""
        key = client or "unknown"
        self.throttle.check(key, shared=True)
        if not self.store.is_initialized():
            raise ConflictError("no password is set yet: set one with POST /api/auth/bootstrap "
                                "or `model-manager password init`")
        self.throttle.attempt(key)  # counted before the hash is checked (see LoginThrottle.attempt)
        if not self.store.verify_password(password):
            self.store.audit("login_failed", client=client)
            raise AuthError("wrong password")
        self.throttle.success(key)
        self.store.audit("login", client=client)
        return self.token_object()

    def logout(self, token: str, client: str | None) -> None:
        """Revoke a session token (an API key is revoked by name, not by logging out)."""
        identity = self.tokens.identity(hash_token(token))
        if identity is not None and not identity.is_session:
            raise ValidationError(f"this is the API key {identity.client!r}, not a session: revoke it with "
                                  f"DELETE /api/keys/{identity.client} or `model-manager keys revoke {identity.client}`")
        self.store.revoke_token(token, client=client)
        self.tokens.forget(hash_token(token))
        self.changed()

    def change_password(self, token: str, current: str, new: str, client: str | None) -> None:
        """Replace the password; every token but `token` is revoked."""
        key = client or "unknown"
        self.throttle.attempt(key)  # counted before the hash is checked (see LoginThrottle.attempt)
        if not self.store.verify_password(current):
            self.store.audit("password_change_failed", client=client)
            raise AuthError("the current password is wrong")
        self.throttle.success(key)
        check_password_strength(new)
        self.store.set_password(new, keep_token=token, client=client)
        self.tokens.clear(keep=hash_token(token))
        self.changed()


def new_setup_code() -> str:
    chars = "".join(secrets.choice(SETUP_CODE_ALPHABET) for _ in range(8))
    return f"{chars[:4]}-{chars[4:]}"


def _normalize_code(code: str) -> bytes:
    return "".join(code.split()).replace("-", "").upper().encode()
