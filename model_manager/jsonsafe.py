"""JSON-safe values: whatever a training job pickled into info.pkl becomes something `json.dumps`
accepts, without ever raising (SPEC §2 "JSON-safe").

numpy scalars → numbers, NaN/inf → null, datetimes → ISO-8601, Series → object (or list when its index
repeats), DataFrame → {"columns", "index", "data"}, ndarray → nested lists, anything unfamiliar → its
string form. Cycles and absurd nesting end in a string instead of a RecursionError.

A pickle can reference one list from many places, so a 200-byte info.pkl can describe a value
with billions of leaves (`x = [x, x]`, forty times). Conversion therefore stops after `MAX_NODES`
values (the rest becomes a marker string) and never calls `str()` on a container.
"""
from __future__ import annotations

import datetime as dt
import decimal
import math
import sys
import uuid
from enum import Enum
from pathlib import PurePath
from typing import Any

MAX_DEPTH = 64
MAX_NODES = 100_000
TRUNCATED = "<truncated: too many values>"


class _Budget:
    """How many more values one `json_safe` call may convert."""

    __slots__ = ("left",)

    def __init__(self, left: int):
        self.left = left


def _float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def scrub(text: str) -> str:
    """`text` with lone surrogates replaced by U+FFFD: a pickle can hold them, and they cannot be
    encoded as UTF-8 (a response or a terminal line holding one would fail)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _string(value: Any) -> str:
    try:
        return scrub(str(value))
    except Exception:  # a hostile or broken __str__
        return f"<unprintable {type(value).__name__}>"


def json_safe(value: Any) -> Any:
    """Convert `value` into plain JSON types. Never raises."""
    try:
        return _convert(value, 0, set(), _Budget(MAX_NODES))
    except Exception:
        return _string(value)


def _convert(value: Any, depth: int, active: set[int], budget: _Budget) -> Any:
    budget.left -= 1
    if budget.left < 0:
        return TRUNCATED
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return _float(value)
    if depth > MAX_DEPTH:  # str() of a deep container could be as costly as converting it
        return f"<{type(value).__name__} nested too deep>"
    scalar = _scalar(value, depth, active, budget)
    if scalar is not _NOT_SCALAR:
        return scalar
    key = id(value)
    if key in active:
        return "<cycle>"
    active.add(key)
    try:
        return _container(value, depth, active, budget)
    finally:
        active.discard(key)


_NOT_SCALAR = object()


def _scalar(value: Any, depth: int, active: set[int], budget: _Budget) -> Any:
    """numpy/pandas/stdlib scalars as JSON values; `_NOT_SCALAR` for anything else."""
    import numpy as np
    import pandas as pd

    if isinstance(value, np.generic):
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, np.floating):
            return _float(float(value))
        if isinstance(value, (np.datetime64, np.timedelta64)):
            return _convert(pd.Timestamp(value) if isinstance(value, np.datetime64) else pd.Timedelta(value), depth + 1, active, budget)
        if isinstance(value, (np.str_, np.bytes_)):
            return _convert(value.item(), depth + 1, active, budget)
        return _string(value)
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, (dt.datetime, dt.date, dt.time)):  # pd.Timestamp is a datetime
        return value.isoformat()
    if isinstance(value, (dt.timedelta, complex)):  # pd.Timedelta too
        return _string(value)
    if isinstance(value, decimal.Decimal):
        return _float(float(value)) if value.is_finite() else None
    if isinstance(value, Enum):
        return _convert(value.value, depth + 1, active, budget)
    if isinstance(value, (PurePath, uuid.UUID)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.hex()
    return _NOT_SCALAR


def _container(value: Any, depth: int, active: set[int], budget: _Budget) -> Any:
    """Containers, arrays, frames and estimators, converted item by item; anything else as a string."""
    import numpy as np
    import pandas as pd

    def each(items) -> list:
        return [_convert(v, depth + 1, active, budget) for v in items]

    if isinstance(value, dict):
        return {_key(k, budget): _convert(v, depth + 1, active, budget) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return each(value)
    if isinstance(value, (set, frozenset)):
        items = each(value)
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, np.ndarray):
        return _convert(value.tolist(), depth + 1, active, budget)
    if isinstance(value, pd.DataFrame):
        return {"columns": [_key(c, budget) for c in value.columns],
                "index": _convert(list(value.index), depth + 1, active, budget),
                "data": _convert(value.to_numpy(dtype=object).tolist(), depth + 1, active, budget)}
    if isinstance(value, pd.Series):
        if value.index.is_unique:
            return {_key(k, budget): _convert(v, depth + 1, active, budget) for k, v in value.items()}
        return _convert(value.tolist(), depth + 1, active, budget)
    if isinstance(value, (pd.Index, pd.Categorical, pd.api.extensions.ExtensionArray)):
        return _convert(list(value), depth + 1, active, budget)
    if isinstance(value, slice):  # its str() would print whatever the pickle put in it, in full
        return "slice(" + ", ".join(_short(p) for p in each((value.start, value.stop, value.step))) + ")"
    if _is_estimator(value):  # sklearn's repr pretty-prints every parameter, in full
        params = value.__dict__ if isinstance(getattr(value, "__dict__", None), dict) else {}
        return {"estimator": f"{type(value).__module__}.{type(value).__qualname__}",
                "params": _convert({k: v for k, v in params.items() if not str(k).startswith("_")}, depth + 1, active, budget)}
    return _string(value)


def _key(k: Any, budget: _Budget) -> str:
    if isinstance(k, str):
        return scrub(k)
    try:
        converted = _convert(k, 0, set(), budget)
    except Exception:
        return _string(k)
    return converted if isinstance(converted, str) else json_dumps_key(converted)


def _short(value: Any) -> str:
    return "None" if value is None else json_dumps_key(value)[:200]


def _is_estimator(value: Any) -> bool:
    xgb = sys.modules.get("xgboost")  # never imported here just to check
    return xgb is not None and isinstance(value, xgb.XGBModel)


def json_dumps_key(v: Any) -> str:
    import json

    try:
        return json.dumps(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else str(v)
    except (TypeError, ValueError):
        return _string(v)
