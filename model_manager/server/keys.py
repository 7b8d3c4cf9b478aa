"""The /api/keys routes (SPEC §7): create, list and revoke API keys. Thin: each calls the service in a
worker thread (sqlite). Read keys never reach them (the guard's scope rule answers 403), so only
password sessions and admin keys manage keys.
"""
from __future__ import annotations

from typing import Annotated, Literal

from litestar import Controller, Request, delete, get, post
from litestar.di import Provide
from litestar.params import JSONBody, PathParameter
from msgspec import Meta, Struct

from model_manager.keys import MAX_EXPIRES_IN_DAYS
from model_manager.registration import NAME_RE
from model_manager.server import error_responses
from model_manager.server.auth import BEARER_SECURITY, client_address, identity_of, require_token
from model_manager.server.deps import Manager, provide_manager

KeyName = Annotated[str, PathParameter(description="The API key's name", max_length=64)]


class KeyBody(Struct, forbid_unknown_fields=False):
    """A new API key: its name, scope and optional lifetime."""

    name: Annotated[str, Meta(min_length=1, max_length=64, pattern=NAME_RE.pattern,
                              description="1-64 letters, digits, '.', '_' or '-', starting with a letter or digit; "
                                          "unique among keys that are not revoked")]
    scope: Annotated[Literal["read", "admin"],
                     Meta(description="read (the default): GET /api/models/** only, for trading engines; admin: everything")] = "read"
    expires_in_days: Annotated[int, Meta(ge=1, le=MAX_EXPIRES_IN_DAYS,
                                         description="Lifetime in days; leave out (or null) for a key that does not expire")] | None = None


class NewKey(Struct):
    """The key is in this answer only: it is stored hashed and never shown again."""

    name: str
    scope: str
    key: str
    created_at: str
    expires_at: str | None


class KeyInfo(Struct):
    name: str
    scope: str
    created_at: str
    expires_at: str | None
    last_used_at: str | None
    revoked: bool
    revoked_at: str | None
    expired: bool


class KeyList(Struct):
    keys: list[KeyInfo]


class KeysController(Controller):
    path = "/api/keys"
    tags = ["keys"]
    guards = [require_token]
    security = BEARER_SECURITY
    dependencies = {"manager": Provide(provide_manager, sync_to_thread=False)}

    @post("", summary="Create an API key (shown this once)", status_code=201, sync_to_thread=True,
          responses=error_responses(400, 401, 403, 409))
    def create_key(self, request: Request, manager: Manager, data: JSONBody[KeyBody]) -> NewKey:
        created = manager.create_key(data.name, data.scope, data.expires_in_days,
                                     client=client_address(request), by=identity_of(request).client)
        return NewKey(**created)

    @get("", summary="List API keys (never the keys themselves)", sync_to_thread=True,
         responses=error_responses(401, 403))
    def list_keys(self, manager: Manager) -> KeyList:
        return KeyList(keys=[KeyInfo(**key) for key in manager.list_keys()])

    @delete("/{name:str}", summary="Revoke an API key, at once on every server process", sync_to_thread=True,
            responses=error_responses(400, 401, 403, 404))
    def revoke_key(self, request: Request, manager: Manager, name: KeyName) -> None:
        manager.revoke_key(name, client=client_address(request), by=identity_of(request).client)
