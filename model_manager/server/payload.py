"""The payload response (`GET /api/models/{name}/model/{symbol}`), built by one function for both ways
a request reaches it: the Litestar route and `PayloadFastPath`.

`payload_response` decides status, headers and body from the prebuilt `PayloadBytes` and the request's
`If-None-Match` and `Accept-Encoding`: 304 when the ETag matches, the gzip bytes when the client takes
gzip, else the plain body — which it gets from `plain_body`, a callable that returns it only when it
is cheap (a cached file), else None; then the caller produces it in a worker thread and calls again.
"""
from __future__ import annotations

from collections.abc import Callable

from model_manager.auth import parse_bearer
from model_manager.errors import ModelManagerError
from model_manager.state import PayloadBytes
from model_manager.store import hash_token

Headers = list[tuple[bytes, bytes]]


def accepts_gzip(header: str | None) -> bool:
    """True when Accept-Encoding admits gzip (and does not set its q to 0)."""
    if not header:
        return False
    for part in header.lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() in ("gzip", "*"):
            q = params.strip()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False


def etag_matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


def payload_response(payload: PayloadBytes, if_none_match: str | None, accept_encoding: str | None,
                     plain_body: Callable[[PayloadBytes], bytes | None]) -> tuple[int, Headers, bytes] | None:
    """(status, headers, body) of the payload response; None when the plain body is not at hand."""
    etag = payload.etag.encode("latin-1")
    headers: Headers = [(b"etag", etag), (b"vary", b"Accept-Encoding"), (b"cache-control", b"no-cache")]
    if if_none_match and etag_matches(if_none_match, payload.etag):
        return 304, headers, b""
    if accepts_gzip(accept_encoding):
        body = payload.gzip
        headers.append((b"content-encoding", b"gzip"))
    else:
        body = plain_body(payload)
        if body is None:
            return None
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return 200, headers, body


class PayloadFastPath:
    """An ASGI wrapper that answers the common case of the payload route without entering Litestar.

    A trading engine's poll — GET /api/models/{name}/model/{symbol} with a token checked within the
    last `TOKEN_RECHECK_SECONDS`, a payload ready, and (without gzip) its plain body cached — costs
    a few dict lookups here instead of Litestar's routing, parameter parsing, guard and response
    building, which were most of the request's CPU time (see bench/README.md). Everything else
    (errors, a token not seen lately, CORS requests, query strings, repeated headers) goes on to
    the wrapped app, whose route answers byte for byte the same way through `payload_response`.
    """

    WANTED = {b"authorization": "authorization", b"if-none-match": "if-none-match",
              b"accept-encoding": "accept-encoding"}

    def __init__(self, app, registry, tokens) -> None:
        self.app = app
        self.registry = registry
        self.tokens = tokens

    async def __call__(self, scope, receive, send) -> None:
        answer = self.answer(scope) if scope["type"] == "http" else None
        if answer is None:
            await self.app(scope, receive, send)
            return
        status, headers, body = answer
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def answer(self, scope) -> tuple[int, Headers, bytes] | None:
        """The response for this request when it is the common case, else None."""
        if scope["method"] != "GET" or scope.get("query_string") or not self.registry.ready.is_set():
            return None
        parts = scope["path"].split("/")  # ["", "api", "models", name, "model", symbol]
        if len(parts) != 6 or parts[1:3] != ["api", "models"] or parts[4] != "model" \
                or not 0 < len(parts[3]) <= 64 or not 0 < len(parts[5]) <= 256:
            return None
        found: dict[str, str] = {}
        for key, value in scope["headers"]:
            if key == b"origin":
                return None  # CORS: let the middleware add its headers
            name = self.WANTED.get(key)
            if name is not None:
                if name in found:
                    return None
                found[name] = value.decode("latin-1")
        token = parse_bearer(found.get("authorization"))
        if token is None or not isinstance(self.tokens.fresh(hash_token(token), claim=False), float):
            return None
        try:
            payload = self.registry.payload(parts[3], parts[5])
        except ModelManagerError:
            return None
        return payload_response(payload, found.get("if-none-match"), found.get("accept-encoding"),
                                self.registry.plain_body_cached)
