"""Request bodies the JSON decoder must not see: nesting deeper than `MAX_JSON_DEPTH` levels.

msgspec decodes nested arrays and objects recursively without a depth limit of its own: 60 KB of
`[` posted to any JSON route (the login needs no credentials) ended in a `RecursionError`, a 500
and a traceback per request. `BoundedRequest` (the app's request class) measures the nesting
before decoding — strings are skipped, so brackets inside them do not count — and answers 400.
"""
from __future__ import annotations

import re
from itertools import accumulate
from typing import Any

from litestar import Request
from litestar.exceptions import ValidationException

MAX_JSON_DEPTH = 64

# a string, or an unterminated one up to the end: one pass, never a rescan from each later quote
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+"?')
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _STEP)


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (valid or not), in C-speed passes."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(_STEP[b] for b in brackets), default=0)


class BoundedRequest(Request):
    """A request whose JSON body is refused (400) when nested deeper than `MAX_JSON_DEPTH`."""

    async def json(self) -> Any:
        body = await self.body()
        if body and json_depth(body) > MAX_JSON_DEPTH:
            raise ValidationException(detail=f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels")
        return await super().json()
