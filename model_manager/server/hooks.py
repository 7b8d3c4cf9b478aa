"""What every HTTP response gets on its way out: security headers, the `Allow` fix, metrics and the
access log (a Litestar `before_send` hook, so it also covers 404/405/413 answered before any route
handler). The payload fast path, which answers in front of Litestar, adds the same headers itself and
counts its answers through `ResponseHooks.payload_answered`.

The access log is one JSON line per request (method, path, status, duration, client; never headers,
query strings or bodies, so no token or password can reach it) — except payload answers (200 and
304), the polls of trading engines, which would cost a third of the server's throughput at one line
each: they are counted per client and status and written as one summary line every
`PAYLOAD_SUMMARY_SECONDS` (the fleet view and the metrics carry the detail).
"""
from __future__ import annotations

import json
import logging
import re
import time

from litestar.routes import HTTPRoute
from litestar.types import Message, Scope

access_log = logging.getLogger("model_manager.access")

PAYLOAD_ROUTE = "/api/models/{name}/model/{symbol}"
PAYLOAD_SUMMARY_SECONDS = 10.0

_COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
_STRICT_CSP = (b"content-security-policy",
               b"default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
               b"form-action 'self'; frame-ancestors 'none'")
# The API docs under /schema: Swagger UI's scripts come from this server (server/docs.py); it sets
# inline styles, so only styles may be inline.
_DOCS_CSP = (b"content-security-policy",
             b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
             b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
_NO_STORE = (b"cache-control", b"no-store")  # token responses must not sit in any cache

HEADERS_UI_AND_API = [*_COMMON_HEADERS, _STRICT_CSP]
HEADERS_AUTH = [*_COMMON_HEADERS, _STRICT_CSP, _NO_STORE]
HEADERS_DOCS = [*_COMMON_HEADERS, _DOCS_CSP]


def headers_for(path: str) -> list[tuple[bytes, bytes]]:
    """The security headers every answer on `path` carries."""
    return HEADERS_DOCS if path.startswith("/schema") else HEADERS_AUTH if path.startswith("/api/auth/") \
        else HEADERS_UI_AND_API


class ResponseHooks:
    """A `before_send` hook for every HTTP response Litestar gives, including 404/405/413 answered
    before any route handler runs: security headers, the `Allow` fix, metrics and the access log."""

    def __init__(self, metrics=None) -> None:
        self.metrics = metrics
        self.access = AccessLog()
        self._allow_by_path: dict[str, bytes] | None = None
        self._labels: dict[str, str] = {}

    async def __call__(self, message: Message, scope: Scope) -> None:
        if scope["type"] != "http":
            return
        if message["type"] == "http.response.start":
            extra = headers_for(scope["path"])
            headers = message.get("headers", ())
            if scope["method"] == "OPTIONS" and message["status"] == 204:
                headers = self._fix_allow(scope, headers)
            message["headers"] = [*headers, *extra]  # type: ignore[typeddict-item]
            # (a request answered 503 at a stop: what its handler sends later never reaches the client)
            scope["mm_status"] = 503 if scope.get("mm_answered_at_stop") else message["status"]  # type: ignore[typeddict-unknown-key]
            return
        if message["type"] != "http.response.body":
            return
        scope["mm_bytes"] = scope.get("mm_bytes", 0) + len(message.get("body", b""))  # type: ignore[typeddict-unknown-key]
        if message.get("more_body"):
            return
        if self.metrics is not None:
            route = self._route(scope.get("path_template"))  # type: ignore[typeddict-item]
            self.metrics.request(route, scope.get("mm_status", 0), scope["mm_bytes"])  # type: ignore[typeddict-item]
        if access_log.isEnabledFor(logging.INFO):
            self.access.record(scope)

    def payload_answered(self, scope: Scope, status: int, body_bytes: int) -> None:
        """What `__call__` does for an answer of the payload fast path, which bypasses Litestar."""
        if self.metrics is not None:
            self.metrics.request(PAYLOAD_ROUTE, status, body_bytes)
        if access_log.isEnabledFor(logging.INFO):
            client = scope.get("client")
            self.access.payload(client[0] if client else None, scope["path"].split("/")[3], status)

    def _route(self, template: str | None) -> str:
        """A route's label in metrics: its path template without parameter types ("unmatched": no route)."""
        if not template:
            return "unmatched"
        label = self._labels.get(template)
        if label is None:
            label = self._labels[template] = re.sub(r":[a-z]+}", "}", template)
        return label

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


class AccessLog:
    """Writes the access log: a line per request, payload answers summarised per interval."""

    def __init__(self, interval: float = PAYLOAD_SUMMARY_SECONDS) -> None:
        self.interval = interval
        self._counts: dict[tuple[str | None, str, int], int] = {}
        self._since = time.monotonic()

    def record(self, scope: Scope) -> None:
        status = scope.get("mm_status")  # type: ignore[typeddict-item]
        client = scope.get("client")
        address = client[0] if client else None
        if status in (200, 304) and _is_payload(scope):
            self.payload(address, scope["path"].split("/")[3], status)
            return
        started = scope.get("mm_started")  # type: ignore[typeddict-item]
        access_log.info(json.dumps({
            "method": scope["method"], "path": scope["path"], "status": status,
            "ms": round((time.perf_counter() - started) * 1000, 2) if started else None, "client": address,
        }))

    def payload(self, address: str | None, model: str, status: int) -> None:
        """Count a payload answer; the counts are written every `interval` seconds."""
        key = (address, model, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        if time.monotonic() - self._since >= self.interval:
            self.flush()

    def flush(self) -> None:
        """One line per client and model: how many payloads it got (200) and confirmed (304)."""
        counts, self._counts = self._counts, {}
        now = time.monotonic()
        seconds, self._since = round(now - self._since, 1), now
        merged: dict[tuple[str | None, str], dict[str, int]] = {}
        for (address, model, status), n in counts.items():
            merged.setdefault((address, model), {})[str(status)] = n
        for (address, model), by_status in sorted(merged.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
            access_log.info(json.dumps({"payloads": by_status, "model": model, "client": address, "seconds": seconds}))


def _is_payload(scope: Scope) -> bool:
    parts = scope["path"].split("/")
    return scope["method"] == "GET" and len(parts) == 6 and parts[1:3] == ["api", "models"] and parts[4] == "model"
