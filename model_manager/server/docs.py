"""The API docs at /schema (and /schema/swagger): Swagger UI served by this server, nothing from a CDN.

Litestar's render plugins load their scripts from public CDNs, unpinned and without integrity checks,
on the UI's origin, where a script could read a token the UI keeps; and the docs then need internet.
`LocalSwaggerPlugin` renders a page whose scripts all come from `/schema/assets/`: Swagger UI's files
from the installed `swagger-ui-py` package (found without importing it) and a small start-up script
of ours, so the docs pages get a `script-src 'self'` policy (server/hooks.py). Each asset is read and
gzipped once, in a worker thread, never on the event loop. The OpenAPI JSON stays at
`/schema/openapi.json`.
"""
from __future__ import annotations

import html
import importlib.util
from pathlib import Path
from typing import Annotated, Any

import anyio
from litestar import Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.params import PathParameter
from litestar.router import Router

from model_manager.gz import gzip_bytes

ASSETS = {  # name -> media type; what the page needs of the package, nothing else is served
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
    "start.js": "text/javascript",
}

_START_JS = b"""window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: document.body.dataset.openapi, dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset], layout: "BaseLayout",
  });
});
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<script src="{assets}/swagger-ui-bundle.js" defer></script>
<script src="{assets}/swagger-ui-standalone-preset.js" defer></script>
<script src="{assets}/start.js" defer></script>
</head>
<body data-openapi="{openapi}">
<div id="swagger-ui"></div>
<noscript>The API docs need JavaScript; the schema itself is at <a href="{openapi}">{openapi}</a>.</noscript>
</body>
</html>
"""

_MISSING = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>
<body><p>Swagger UI is not installed with this server (the <code>swagger-ui-py</code> package).
The OpenAPI schema is at <a href="{openapi}">{openapi}</a>.</p></body></html>
"""


def swagger_ui_dir() -> Path | None:
    """Where the installed swagger-ui-py package keeps Swagger UI's files (the package is not imported)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    static = Path(next(iter(spec.submodule_search_locations))) / "static"
    return static if (static / "swagger-ui-bundle.js").is_file() else None


class LocalSwaggerPlugin(OpenAPIRenderPlugin):
    """Swagger UI at /schema/swagger (and at /schema), every asset served by this server."""

    def __init__(self, path: str | list[str] = "/swagger") -> None:
        super().__init__(path=path)
        self._assets: dict[str, tuple[bytes, bytes]] = {}  # name -> (plain, gzip), filled on first request

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        title = html.escape(str(openapi_schema.get("info", {}).get("title", "API")))
        route = self.get_openapi_json_route(request)  # /schema/openapi.json, where the docs are mounted
        page = _PAGE if swagger_ui_dir() is not None else _MISSING
        assets = html.escape(route.rsplit("/", 1)[0] + "/assets")
        return page.format(title=title, openapi=html.escape(route), assets=assets).encode()

    def receive_router(self, router: Router) -> None:
        router.register(self._asset_route())

    def _asset_route(self):
        @get("/assets/{name:str}", include_in_schema=False, skip_compression=True, name="docs-asset")
        async def docs_asset(request: Request, name: Annotated[str, PathParameter(max_length=64)]) -> Response[bytes]:
            if name not in ASSETS:
                raise NotFoundException(detail=f"no docs asset {name!r}")
            if name not in self._assets:
                self._assets[name] = await anyio.to_thread.run_sync(_read_asset, name)
            plain, packed = self._assets[name]
            headers = {"Cache-Control": "public, max-age=86400", "Vary": "Accept-Encoding"}
            if "gzip" in request.headers.get("accept-encoding", ""):
                headers["Content-Encoding"] = "gzip"
                return Response(packed, media_type=ASSETS[name], headers=headers)
            return Response(plain, media_type=ASSETS[name], headers=headers)

        return docs_asset


def _read_asset(name: str) -> tuple[bytes, bytes]:
    if name == "start.js":
        data = _START_JS
    else:
        folder = swagger_ui_dir()
        if folder is None:
            raise NotFoundException(detail="Swagger UI is not installed with this server")
        data = (folder / name).read_bytes()
    return data, gzip_bytes(data)
