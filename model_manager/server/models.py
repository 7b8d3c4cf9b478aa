"""The /api/models routes (SPEC §2). Thin: read the request, call the service, return its answer.

Handlers that touch the file system or sqlite (register, refresh, unregister) run in worker threads;
the reads are in-memory lookups, and the payload route returns prebuilt bytes (gzip or plain) with a
strong ETag through `payload.payload_response`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from litestar import Request, Response, delete, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, QueryParameter
from msgspec import Meta, Struct

from model_manager.registration import NAME_RE, check_client_path
from model_manager.server import error_responses
from model_manager.server.auth import client_address, identity_of
from model_manager.server.deps import Manager, Name, Symbol, UnderModels, json_answer
from model_manager.server.payload import etag_matches, long_poll, payload_response, record_payload

GroupKey = Annotated[str | None, QueryParameter(description="Pick the group when a symbol is in several", max_length=512)]
MetricParam = Annotated[str, QueryParameter(description="An IC column (kendall_tau, ic, …) or gain, total_gain, cover, weight",
                                             min_length=1, max_length=128)]
TopParam = Annotated[int | None, QueryParameter(ge=0, description="Keep the first N factors (0: all)")]
VersionParam = Annotated[int | None, QueryParameter(ge=1, le=2**63 - 1, description="A kept version (default: the live one)")]


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


class ModelsController(UnderModels):
    tags = ["models"]

    @get("", summary="List registered models", skip_compression=True, responses=error_responses(401))
    async def list_models(self, request: Request, manager: Manager) -> Response[dict[str, Any]]:
        return await json_answer(request, lambda: {"models": manager.models()})

    @post("", summary="Register a model directory", sync_to_thread=True, status_code=201,
          responses=error_responses(400, 401, 403, 409))
    def register_model(self, request: Request, manager: Manager, data: JSONBody[RegisterBody]) -> Response[dict[str, Any]]:
        done = manager.register(data.name, check_client_path(data.path), client=client_address(request))
        return Response(done.model.to_dict(), status_code=201 if done.created else 200)

    @delete("/{name:str}", summary="Unregister a model", sync_to_thread=True, responses=error_responses(401, 403, 404))
    def unregister_model(self, request: Request, manager: Manager, name: Name) -> None:
        manager.unregister(name, client=client_address(request))

    @post("/{name:str}/refresh", summary="Re-read a model directory now", sync_to_thread=True, status_code=200,
          responses=error_responses(400, 401, 403, 404))
    def refresh_model(self, request: Request, manager: Manager, name: Name) -> dict[str, Any]:
        return manager.refresh(name, client=client_address(request))

    # The reads below can be megabytes of JSON (thousands of groups or factors): `json_answer` builds
    # and encodes them in a worker thread, never on the event loop; the symbols are prebuilt bytes.
    @get("/{name:str}/symbols", summary="Symbols of a model", skip_compression=True, responses=error_responses(401, 404))
    async def list_symbols(self, request: Request, manager: Manager, name: Name) -> Response[Any]:
        """The symbol objects of SPEC §2, from bytes prebuilt when the groups last changed."""
        return await json_answer(request, manager.symbols_json, name)

    @get("/{name:str}/factors", summary="All factors used by a model (deduplicated, sorted)", skip_compression=True,
         responses=error_responses(401, 404))
    async def list_factors(self, request: Request, manager: Manager, name: Name) -> Response[dict[str, Any]]:
        return await json_answer(request, manager.factors, name)

    @get("/{name:str}/matrix", summary="Each factor across every symbol, for one IC metric or importance type",
         skip_compression=True, responses=error_responses(400, 401, 404),
         description="`values[i][j]` is factor i in symbol j (null where absent); factors by mean |value|, largest "
                     "first. Metrics: the IC columns, and gain, total_gain, cover, weight (the served models' importance).")
    async def factor_matrix(self, request: Request, manager: Manager, name: Name, metric: MetricParam = "kendall_tau",
                            top: TopParam = None) -> Response[dict[str, Any]]:
        return await json_answer(request, manager.matrix, name, metric, top)

    @get("/{name:str}/fleet", summary="Which client runs which version of each symbol", skip_compression=True,
         responses=error_responses(401, 404))
    async def fleet(self, request: Request, manager: Manager, name: Name) -> Response[dict[str, Any]]:
        return await json_answer(request, manager.fleet_view, name)

    @get("/{name:str}/symbols/{symbol:str}", summary="One symbol: factors, IC, metadata, issues", skip_compression=True,
         responses=error_responses(401, 404))
    async def symbol_detail(self, request: Request, manager: Manager, name: Name, symbol: Symbol,
                            group_key: GroupKey = None) -> Response[dict[str, Any]]:
        return await json_answer(request, manager.detail, name, symbol, group_key)

    @get("/{name:str}/model/{symbol:str}", summary="The model payload a trading engine loads",
         skip_compression=True, media_type="application/json",
         responses={200: ResponseSpec(data_container=ModelPayload, generate_examples=False,
                                      description="The payload (gzip-encoded when accepted)"),
                    **error_responses(401, 404, 422)},
         description="XGBoost JSON model, metadata and the dimension→factor mapping of the live version (or of "
                     "`?version=N`). Strong ETag; `If-None-Match` answers 304. Gzip-encoded when the client accepts it.")
    async def model_payload(self, request: Request, manager: Manager, name: Name, symbol: Symbol,
                            version: VersionParam = None) -> Response[bytes]:
        inm, encodings = request.headers.get("if-none-match"), request.headers.get("accept-encoding")
        waited = None
        if version is None:
            payload = manager.payload(name, symbol)
            if manager.role.shared and inm and not etag_matches(inm, payload.etag):
                payload = await anyio.to_thread.run_sync(manager.caught_up_payload, name, symbol)
            payload, waited = await long_poll(manager, name, symbol, payload, inm, request.headers.get("prefer"))
        else:
            payload = await anyio.to_thread.run_sync(manager.version_payload, name, symbol, version)
        answer = payload_response(payload, inm, encodings, manager.serving.plain_body_cached)
        if answer is None:
            body = await anyio.to_thread.run_sync(manager.serving.plain_body, payload)
            answer = payload_response(payload, inm, encodings, lambda _: body)
        client = request.client.host if request.client else None
        record_payload(manager.fleet, manager.metrics, name, identity_of(request).client, client, payload, answer)
        status, headers, content = answer
        content = bytes(content)  # Litestar wants bytes; the payload may be mapped from its file
        shown = {k.decode(): v.decode("latin-1") for k, v in headers if k not in (b"content-type", b"content-length")}
        if waited is not None:
            shown["Preference-Applied"] = f"wait={waited}"
        return Response(content, status_code=status, media_type="application/json", headers=shown)
