"""The versions routes (SPEC §6): history, pin, unpin, rollback, hold, release and diff.

Every handler reads or writes sqlite (and a diff runs both models in a check process), so each runs in
a worker thread; the service applies a change of what is live to what this server serves at once.
"""
from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, delete, get, post
from litestar.params import Body, JSONBody, QueryParameter
from msgspec import Meta, Struct

from model_manager.server import error_responses
from model_manager.server.auth import client_address
from model_manager.server.deps import Manager, Name, Symbol, UnderModels

Reason = Annotated[str, Meta(max_length=1000, description="Why: kept in the audit trail")]


class PinBody(Struct, forbid_unknown_fields=False):
    """The version to serve until unpinned."""

    version: Annotated[int, Meta(ge=1, le=2**63 - 1, description="A kept version number")]
    reason: Reason = ""


class ReasonBody(Struct, forbid_unknown_fields=False):
    reason: Reason = ""


OptionalReason = Annotated[ReasonBody | None, Body(description="An optional reason, kept in the audit trail")]
QueryReason = Annotated[str, QueryParameter(name="reason", max_length=1000, description="Why: kept in the audit trail")]


class VersionsController(UnderModels):
    tags = ["versions"]

    @get("/{name:str}/symbols/{symbol:str}/versions", summary="Every version of a symbol's model, newest first",
         sync_to_thread=True, responses=error_responses(401, 404))
    def versions(self, manager: Manager, name: Name, symbol: Symbol) -> dict[str, Any]:
        return manager.version_history(name, symbol)

    @post("/{name:str}/symbols/{symbol:str}/pin", summary="Serve one version until unpinned", status_code=200,
          sync_to_thread=True, responses=error_responses(400, 401, 403, 404, 409))
    def pin(self, request: Request, manager: Manager, name: Name, symbol: Symbol, data: JSONBody[PinBody]) -> dict[str, Any]:
        return manager.pin(name, symbol, data.version, reason=data.reason, client=client_address(request))

    @delete("/{name:str}/symbols/{symbol:str}/pin", summary="Drop the pin: serve the latest (or held) version",
            status_code=200, sync_to_thread=True, responses=error_responses(401, 403, 404))
    def unpin(self, request: Request, manager: Manager, name: Name, symbol: Symbol, reason: QueryReason = "") -> dict[str, Any]:
        return manager.unpin(name, symbol, reason=reason, client=client_address(request))

    @post("/{name:str}/symbols/{symbol:str}/rollback", summary="Pin the version that was live before the current one",
          status_code=200, sync_to_thread=True, responses=error_responses(400, 401, 403, 404, 409))
    def rollback(self, request: Request, manager: Manager, name: Name, symbol: Symbol, data: OptionalReason = None) -> dict[str, Any]:
        return manager.rollback(name, symbol, reason=data.reason if data else "", client=client_address(request))

    @post("/{name:str}/hold", summary="Hold a model: new versions are recorded but not served", status_code=200,
          sync_to_thread=True, responses=error_responses(400, 401, 403, 404))
    def hold(self, request: Request, manager: Manager, name: Name, data: OptionalReason = None) -> dict[str, Any]:
        return manager.hold(name, reason=data.reason if data else "", client=client_address(request))

    @delete("/{name:str}/hold", summary="Release a hold: serve each group's latest version again", status_code=200,
            sync_to_thread=True, responses=error_responses(401, 403, 404))
    def release(self, request: Request, manager: Manager, name: Name, reason: QueryReason = "") -> dict[str, Any]:
        return manager.release(name, reason=reason, client=client_address(request))

    @get("/{name:str}/symbols/{symbol:str}/diff", summary="What changed between two versions", sync_to_thread=True,
         responses=error_responses(400, 401, 404))
    def diff(self, manager: Manager, name: Name, symbol: Symbol,
             from_: Annotated[int | None, QueryParameter(name="from", ge=1, le=2**63 - 1, description="Default: the version before `to`")] = None,
             to: Annotated[int | None, QueryParameter(ge=1, le=2**63 - 1, description="Default: the latest version")] = None) -> dict[str, Any]:
        return manager.diff(name, symbol, from_, to)
