"""The payload response (`GET /api/models/{name}/model/{symbol}`), built by one function for both ways
a request reaches it: the Litestar route and `PayloadFastPath`; and its long poll.

`payload_response` decides status, headers and body from the prebuilt `PayloadBytes` and the request's
`If-None-Match` and `Accept-Encoding`: 304 when the ETag matches, the gzip bytes when the client takes
gzip, else the plain body — which it gets from `plain_body`, a callable that returns it only when it
is cheap (a cached file), else None; then the caller produces it in a worker thread and calls again.

Long poll (SPEC §8): a request with `If-None-Match` (the ETag it has) and `Prefer: wait=N` parks until
the group's live payload changes or N seconds pass — an awaited future, no thread, no polling. The
fast path leaves such requests to the route.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from model_manager.auth import parse_bearer
from model_manager.errors import ModelManagerError
from model_manager.server.hooks import HEADERS_UI_AND_API
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
    if header == etag:  # what a polling engine sends: the one ETag it has
        return True
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


DIGESTS_REMEMBERED = 4096  # Authorization headers whose token digest the fast path keeps
HEADER_TUPLES_KEPT = 4096  # (version, status, encoding) header tuples the fast path keeps
MAX_WAIT = 60  # seconds a long poll may ask for (RFC 7240 `Prefer: wait=N`)
_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d{1,6})(?:$|[,;\s])", re.IGNORECASE)


def requested_wait(prefer: str | None) -> int | None:
    """The `wait` preference in seconds (capped at MAX_WAIT), or None."""
    match = _WAIT.search(prefer) if prefer else None
    return min(int(match.group(1)), MAX_WAIT) if match else None


async def long_poll(manager, name: str, symbol: str, payload: PayloadBytes,
                    if_none_match: str | None, prefer: str | None) -> tuple[PayloadBytes, int | None]:
    """Hold a request whose ETag is current until the live payload changes or its wait is over;
    returns the payload to answer with (the new one, or the same for a 304) and the wait applied."""
    wait = requested_wait(prefer)
    if not wait or not if_none_match or not etag_matches(if_none_match, payload.etag):
        return payload, None
    registry = manager.serving
    group_key = registry.group(name, symbol).snapshot.group_key

    def still_current() -> bool:
        try:
            return registry.payload(name, symbol).etag == payload.etag
        except Exception:  # the group went away or broke: answer now
            return False

    await registry.waiters.wait(name, group_key, wait, still_current)
    return manager.payload(name, symbol), wait


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
              b"accept-encoding": "accept-encoding", b"prefer": "prefer",
              b"content-length": "content-length", b"transfer-encoding": "transfer-encoding"}

    def __init__(self, registry, tokens, fleet, metrics, hooks, *, shared: bool = False) -> None:
        self.shared = shared  # one of several workers: an ETag it does not serve goes to the route
        self.registry = registry
        self.tokens = tokens
        self.fleet = fleet
        self.metrics = metrics
        self.hooks = hooks
        self._digests: dict[str, str | None] = {}  # Authorization value → token digest (or None: not a bearer)
        # (ETag, status, gzip?) → the complete header tuple of such an answer: one object for every
        # poll of a version, so the protocol can keep its encoded head (pollprotocol.py)
        self._headers: dict[tuple[str, int, bool], tuple[tuple[bytes, bytes], ...]] = {}

    async def handle(self, scope, send) -> bool:
        """Answer the request if it is the common case (True), else leave it alone (False)."""
        answer = self.direct(scope)
        if answer is None:
            return False
        status, headers, body, _ = answer
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return True

    def direct(self, scope) -> tuple[int, Sequence[tuple[bytes, bytes]], bytes, str | None] | None:
        """The complete answer to send — with the headers `ResponseHooks` adds to every API answer,
        and counted the way the hooks count the route's (metrics, the access log's payload summary) —
        or None. The HTTP protocol (server/pollprotocol.py) calls it before uvicorn makes an ASGI request
        of the bytes; `handle` for what reaches the app. The fourth item is the file the body is
        mapped from, when it is the whole of one (the gzip bytes), else None. The headers are a tuple
        shared by every answer of the same version, status and encoding: never to be changed."""
        found = self._answer(scope)
        if found is None:
            return None
        (status, headers, body), payload = found
        gzipped = body is payload.gzip
        key = (payload.etag, status, gzipped)
        kept = self._headers.get(key)
        if kept is None:
            if len(self._headers) >= HEADER_TUPLES_KEPT:
                self._headers.clear()
            kept = self._headers[key] = (*headers, *HEADERS_UI_AND_API)
        self.hooks.payload_answered(scope, status, len(body))
        return status, kept, body, payload.file if gzipped else None

    def answer(self, scope) -> tuple[int, Headers, bytes] | None:
        """The response for this request when it is the common case, else None."""
        found = self._answer(scope)
        return found[0] if found is not None else None

    def _answer(self, scope) -> tuple[tuple[int, Headers, bytes], PayloadBytes] | None:
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
        if "prefer" in found:
            return None  # a long poll: the route parks it
        if "transfer-encoding" in found or found.get("content-length", "0") != "0":
            return None  # a GET with a body: the route reads (and ignores) it
        digest = self._digest(found.get("authorization"))
        if digest is None or not isinstance(self.tokens.fresh(digest, claim=False), float):
            return None
        try:
            payload = self.registry.payload(parts[3], parts[5])
        except ModelManagerError:
            return None
        inm = found.get("if-none-match")
        if self.shared and inm and not etag_matches(inm, payload.etag):
            return None  # perhaps another worker's newer version: the route catches up first
        answer = payload_response(payload, inm, found.get("accept-encoding"), self.registry.plain_body_cached)
        if answer is None:
            return None
        client, identity = scope.get("client"), self.tokens.identity(digest)
        record_payload(self.fleet, self.metrics, parts[3], identity.client if identity else "session",
                       client[0] if client else None, payload, answer)
        return answer, payload

    def _digest(self, authorization: str | None) -> str | None:
        """The digest of the bearer token in `authorization`, remembered: an engine sends the same
        header with every poll, and the hash cost more than the rest of the lookup."""
        if authorization is None:
            return None
        digest = self._digests.get(authorization, False)
        if digest is False:
            token = parse_bearer(authorization)
            digest = hash_token(token) if token is not None else None
            if len(self._digests) >= DIGESTS_REMEMBERED:
                self._digests.clear()
            self._digests[authorization] = digest
        return digest  # type: ignore[return-value]


def record_payload(fleet, metrics, model: str, client: str, address: str | None, payload: PayloadBytes,
                   answer: tuple[int, Headers, bytes]) -> None:
    """Count a payload answer and note who got which version (the fleet): a dict update or two."""
    status, headers, _ = answer
    fleet.record(model, client, payload.group_key, payload.version, address, confirmed=status == 304)
    if metrics is not None:
        metrics.payload(model, "not_modified" if status == 304 else "gzip" if (b"content-encoding", b"gzip") in headers
                        else "identity")
