"""What the route modules share: the service as a Litestar dependency, path parameters, the wait
for the first load that every /api/models request makes, and answers built off the event loop."""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import anyio
from litestar import Controller, Request, Response
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import PathParameter
from litestar.serialization import encode_json

from model_manager.gz import gzip_bytes
from model_manager.server.auth import BEARER_SECURITY, require_token
from model_manager.service import ModelManager

Manager = NamedDependency[ModelManager]
Name = Annotated[str, PathParameter(description="Registered model name", max_length=64)]
Symbol = Annotated[str, PathParameter(description="Trading symbol, e.g. SOLUSDT", max_length=256)]


def provide_manager(state: State) -> ModelManager:
    return state.manager


async def wait_for_models(request: Request) -> None:
    """Hold model requests during the initial load instead of answering 404 for models not yet read."""
    await request.app.state.manager.serving.ready.wait()


GZIP_MIN_BYTES = 1024  # as the app's compression config


async def json_answer(request: Request, read: Callable[..., Any], *args: Any) -> Response[Any]:
    """`read(*args)` as a JSON response, built, encoded and (when the client accepts it) gzipped in a
    worker thread. A symbol detail with a 1 MiB factors.txt and its IC table is megabytes of JSON:
    encoded on the event loop it held every other request — /healthz and the payload polls included —
    for over 100 ms. Routes answered this way are marked `skip_compression=True`."""
    gzip_ok = "gzip" in request.headers.get("accept-encoding", "")

    def build() -> tuple[bytes, bool]:
        value = read(*args)
        body = value if isinstance(value, bytes) else encode_json(value)  # bytes: prebuilt JSON
        if gzip_ok and len(body) >= GZIP_MIN_BYTES:
            return gzip_bytes(body), True
        return body, False

    body, packed = await anyio.to_thread.run_sync(build)
    headers = {"Vary": "Accept-Encoding", **({"Content-Encoding": "gzip"} if packed else {})}
    return Response(body, media_type="application/json", headers=headers)


class UnderModels(Controller):
    """The base of the controllers under /api/models: a live token, the wait for the first load, and
    the service as the `manager` dependency."""

    path = "/api/models"
    guards = [require_token]
    security = BEARER_SECURITY
    before_request = wait_for_models
    dependencies = {"manager": Provide(provide_manager, sync_to_thread=False)}
