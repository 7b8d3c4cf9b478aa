"""The HTTP server: `app.create_app(settings)` builds the Litestar app; `auth` holds the token guard
and the /api/auth routes; `models` the /api/models routes; `keys` the /api/keys routes; `ui/` the
static web UI.

This package module only defines the error body shared by every route's OpenAPI description, so
route modules can import it without importing the app (which imports them).
"""
from __future__ import annotations

from dataclasses import dataclass

from litestar.openapi.datastructures import ResponseSpec

_DESCRIPTIONS = {
    400: "Bad request: the detail says what to fix",
    401: "Missing, invalid or expired bearer token, or wrong password",
    403: "Not allowed: a read API key outside GET /api/models/** (the detail names the scope), or no valid setup code",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Request body too large",
    422: "The model group has errors; the detail lists them",
    429: "Too many failed attempts; retry after the Retry-After header's seconds",
}


@dataclass
class ErrorBody:
    """Every error response: the HTTP status and a one-line message that says what to fix."""

    status_code: int
    detail: str


def error_responses(*status_codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI `responses=` entries documenting the given error statuses with `ErrorBody`."""
    return {
        code: ResponseSpec(data_container=ErrorBody, description=_DESCRIPTIONS.get(code, "Error"), generate_examples=False)
        for code in status_codes
    }
