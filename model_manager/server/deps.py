"""What the route modules share: the service as a Litestar dependency, path parameters, and the wait
for the first load that every /api/models request makes."""
from __future__ import annotations

from typing import Annotated

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import PathParameter

from model_manager.service import ModelManager

Manager = NamedDependency[ModelManager]
Name = Annotated[str, PathParameter(description="Registered model name", max_length=64)]
Symbol = Annotated[str, PathParameter(description="Trading symbol, e.g. SOLUSDT", max_length=256)]


def provide_manager(state: State) -> ModelManager:
    return state.manager


async def wait_for_models(request: Request) -> None:
    """Hold model requests during the initial load instead of answering 404 for models not yet read."""
    await request.app.state.manager.serving.ready.wait()
