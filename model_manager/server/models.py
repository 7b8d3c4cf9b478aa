"""The /api/models routes (SPEC §2). Thin: read the request, ask the registry, shape the answer.

Handlers that touch the file system (register, refresh, unregister) run in worker threads; the
payload route is a dict lookup that returns prebuilt bytes (gzip or plain) with a strong ETag.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Request, Response, delete, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter
from msgspec import Meta, Struct

from model_manager.errors import ModelManagerError
from model_manager.registration import NAME_RE
from model_manager.registry import Registry
from model_manager.server import error_responses
from model_manager.server.auth import client_address, parse_bearer
from model_manager.store import hash_token

Name = Annotated[str, PathParameter(description="Registered model name", max_length=64)]
Symbol = Annotated[str, PathParameter(description="Trading symbol, e.g. SOLUSDT", max_length=256)]
GroupKey = Annotated[str | None, QueryParameter(description="Pick the group when a symbol is in several", max_length=512)]


class RegisterBody(Struct, forbid_unknown_fields=False):
    """A model directory to register under a name."""

    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=NAME_RE.pattern,
                              description="1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")]
    path: Annotated[str, Meta(min_length=1, max_length=4096, description="Absolute path of the model directory")]


# The payload route returns prebuilt bytes; these describe them in /schema (fields may be added).
@dataclass
class DimFactor:
    dim: int
    factor_name: str
    kendall_tau: float | None


@dataclass
class PayloadContent:
    model_json: str
    metadata: dict[str, Any]
    dim_factors: list[DimFactor]


@dataclass
class ModelPayload:
    """The model a trading engine loads: XGBoost JSON text, metadata, dimension→factor mapping."""

    model_name: str
    symbol: str
    group_key: str
    return_name: str
    payload: PayloadContent


def _registry(request: Request) -> Registry:
    return request.app.state.registry


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


@get("/api/models", tags=["models"], summary="List registered models", sync_to_thread=False, responses=error_responses(401))
def list_models(request: Request) -> dict[str, Any]:
    return {"models": [m.to_dict() for m in list(_registry(request).models.values())]}


@post("/api/models", tags=["models"], summary="Register a model directory", sync_to_thread=True,
      status_code=201, responses=error_responses(400, 401, 409))
def register_model(request: Request, data: JSONBody[RegisterBody]) -> Response[dict[str, Any]]:
    model, created = _registry(request).register(data.name, data.path, client=client_address(request))
    return Response(model.to_dict(), status_code=201 if created else 200)


@delete("/api/models/{name:str}", tags=["models"], summary="Unregister a model", sync_to_thread=True,
        responses=error_responses(401, 404))
def unregister_model(request: Request, name: Name) -> None:
    _registry(request).unregister(name, client=client_address(request))


@post("/api/models/{name:str}/refresh", tags=["models"], summary="Re-read a model directory now",
      sync_to_thread=True, status_code=200, responses=error_responses(400, 401, 404))
def refresh_model(request: Request, name: Name) -> dict[str, Any]:
    return _registry(request).refresh(name, client=client_address(request)).to_dict()


@get("/api/models/{name:str}/symbols", tags=["models"], summary="Symbols of a model", sync_to_thread=False, responses=error_responses(401, 404))
def list_symbols(request: Request, name: Name) -> dict[str, Any]:
    states = sorted(_registry(request).get(name).view.groups.values(), key=lambda s: (s.snapshot.symbol, s.snapshot.group_key))
    return {"model_name": name, "symbols": [{**s.snapshot.summary(), "stale": s.stale} for s in states]}


@get("/api/models/{name:str}/factors", tags=["models"], summary="All factors used by a model (deduplicated, sorted)",
     sync_to_thread=False, responses=error_responses(401, 404))
def list_factors(request: Request, name: Name) -> dict[str, Any]:
    view = _registry(request).get(name).view
    return {"model_name": name, "symbol_count": len(view.symbols), "group_count": len(view.groups),
            "factor_count": len(view.factor_union), "factors": view.factor_union}


@get("/api/models/{name:str}/symbols/{symbol:str}", tags=["models"], summary="One symbol: factors, IC, metadata, issues",
     sync_to_thread=False, responses=error_responses(401, 404))
def symbol_detail(request: Request, name: Name, symbol: Symbol,
                  group_key: GroupKey = None) -> dict[str, Any]:
    state = _registry(request).group(name, symbol, group_key)
    detail = state.snapshot.detail(name)
    detail.update({"stale": state.stale, "served_updated_at": state.served.updated_at if state.served else None,
                   "refresh": state.refresh_info()})
    return detail


@get("/api/models/{name:str}/model/{symbol:str}", tags=["models"], summary="The model payload a trading engine loads",
     skip_compression=True, media_type="application/json",
     responses={200: ResponseSpec(data_container=ModelPayload, generate_examples=False,
                                  description="The payload (gzip-encoded when accepted)"),
                **error_responses(401, 404, 422)},
     description="XGBoost JSON model, metadata and the dimension→factor mapping. Strong ETag; "
                 "`If-None-Match` answers 304. Gzip-encoded when the client accepts it.")
async def model_payload(request: Request, name: Name, symbol: Symbol) -> Response[bytes]:
    registry = _registry(request)
    prepared = registry.payload(name, symbol)
    headers = {"ETag": prepared.etag, "Vary": "Accept-Encoding", "Cache-Control": "no-cache"}
    inm = request.headers.get("if-none-match")
    if inm and etag_matches(inm, prepared.etag):
        return Response(b"", status_code=304, headers=headers)
    if accepts_gzip(request.headers.get("accept-encoding")):
        headers["Content-Encoding"] = "gzip"
        return Response(prepared.gzip, media_type="application/json", headers=headers)
    body = registry.raw_ready(prepared)
    if body is None:
        import anyio

        body = await anyio.to_thread.run_sync(registry.raw, prepared)
    return Response(body, media_type="application/json", headers=headers)


class PayloadFastPath:
    """The common case of `model_payload`, answered straight from the ASGI scope.

    A trading engine's poll — GET /api/models/{name}/model/{symbol} with a token checked within the
    last `TOKEN_RECHECK_SECONDS`, a payload ready, and (without gzip) its plain body cached — costs
    a few dict lookups here instead of Litestar's routing, parameter parsing, guard and response
    building, which were most of the request's CPU time (see bench/README.md). Everything else
    (errors, a token not seen lately, CORS requests, query strings, repeated headers) returns None
    and takes the full route, which answers byte for byte the same way.
    """

    WANTED = {b"authorization": "authorization", b"if-none-match": "if-none-match",
              b"accept-encoding": "accept-encoding"}

    def __init__(self, registry: Registry, tokens) -> None:
        self.registry = registry
        self.tokens = tokens

    def __call__(self, scope) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        if scope["method"] != "GET" or scope.get("query_string") or not self.registry.ready.is_set():
            return None
        parts = scope["path"].split("/")  # ["", "api", "models", name, "model", symbol]
        if len(parts) != 6 or parts[4] != "model" or not 0 < len(parts[3]) <= 64 or not 0 < len(parts[5]) <= 256:
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
            prepared = self.registry.payload(parts[3], parts[5])
        except ModelManagerError:
            return None
        etag = prepared.etag.encode("latin-1")
        headers = [(b"etag", etag), (b"vary", b"Accept-Encoding"), (b"cache-control", b"no-cache")]
        inm = found.get("if-none-match")
        if inm and etag_matches(inm, prepared.etag):
            return 304, headers, b""
        if accepts_gzip(found.get("accept-encoding")):
            body = prepared.gzip
            headers.append((b"content-encoding", b"gzip"))
        else:
            body = self.registry.raw_ready(prepared)
            if body is None:
                return None  # decompressed in a worker thread by the full route
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        return 200, headers, body


model_routes = [list_models, register_model, unregister_model, refresh_model, list_symbols, list_factors,
                symbol_detail, model_payload]
