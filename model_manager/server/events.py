"""The event stream (SPEC §8; the long poll is in payload.py).

`GET /api/models/{name}/events` is Server-Sent Events: `version`, `status` and `model`
events with ids, `Last-Event-ID` replay from the last 1,000 events, a comment every 15 s so proxies
keep the stream open. A server stop ends every stream at once.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from litestar import Request, get
from litestar.di import Provide
from litestar.params import HeaderParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from model_manager.server import error_responses
from model_manager.server.auth import BEARER_SECURITY, require_token
from model_manager.server.deps import Manager, Name, provide_manager, wait_for_models
from model_manager.service import ModelManager


@get("/api/models/{name:str}/events", tags=["models"], summary="Server-Sent Events: versions, statuses, refreshes",
     guards=[require_token], security=BEARER_SECURITY, before_request=wait_for_models, skip_compression=True,
     media_type="text/event-stream",
     dependencies={"manager": Provide(provide_manager, sync_to_thread=False)}, responses=error_responses(401, 404),
     description="`version` {symbol, group_key, version, etag, live}, `status` {symbol, group_key, status, issues}, "
                 "`model` {event: refreshed|held|released|unregistered}. Every event has an id; reconnect with "
                 "`Last-Event-ID` to receive what was missed (within the last 1,000 events). A comment line "
                 "every 15 s keeps proxies from closing the stream.")
async def model_events(request: Request, manager: Manager, name: Name,
                       last_event_id: Annotated[str | None, HeaderParameter(name="last-event-id", max_length=32)] = None
                       ) -> ServerSentEvent:
    manager.serving.get(name)  # 404 for an unknown model
    # (isdigit alone takes "²": only ASCII digits are an id)
    last = int(last_event_id) if last_event_id and last_event_id.isascii() and last_event_id.isdigit() else None
    return ServerSentEvent(_stream(manager, name, last), retry_duration=3000)


async def _stream(manager: ModelManager, name: str, last: int | None) -> AsyncIterator[ServerSentEventMessage]:
    async for event in manager.serving.events.subscribe(name, last):
        if event is None:
            yield ServerSentEventMessage(comment="keep-alive", data=None)  # (its default, "", adds an empty event)
        else:
            yield ServerSentEventMessage(data=json.dumps(event.data, separators=(",", ":")), event=event.kind, id=str(event.id))
            if event.kind == "model" and event.data.get("event") == "unregistered":
                return  # nothing more will come (a reconnect is answered 404)
