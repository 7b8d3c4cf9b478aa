"""JSON-safe values: whatever a training job pickled into info.pkl becomes something `json.dumps`
accepts, without ever raising (SPEC §2 "JSON-safe").

numpy scalars → numbers, NaN/inf → null, datetimes → ISO-8601, Series → object (or list when its index
repeats), DataFrame → {"columns", "index", "data"}, ndarray → nested lists, anything unfamiliar → its
string form. Cycles and absurd nesting end in a string instead of a RecursionError.
"""
from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from enum import Enum
from pathlib import PurePath
from typing import Any

MAX_DEPTH = 64


def _float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _string(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # a hostile or broken __str__
        return f"<unprintable {type(value).__name__}>"


def json_safe(value: Any) -> Any:
    """Convert `value` into plain JSON types. Never raises."""
    try:
        return _convert(value, 0, set())
    except Exception:
        return _string(value)


def _convert(value: Any, depth: int, active: set[int]) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return _float(value)
    if depth > MAX_DEPTH:
        return _string(value)[:200]

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
            return _convert(pd.Timestamp(value) if isinstance(value, np.datetime64) else pd.Timedelta(value), depth + 1, active)
        if isinstance(value, (np.str_, np.bytes_)):
            return _convert(value.item(), depth + 1, active)
        return _string(value)
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, (dt.datetime, dt.date, dt.time)):  # pd.Timestamp is a datetime
        return value.isoformat()
    if isinstance(value, dt.timedelta):  # pd.Timedelta too
        return _string(value)
    if isinstance(value, decimal.Decimal):
        return _float(float(value)) if value.is_finite() else None
    if isinstance(value, complex):
        return _string(value)
    if isinstance(value, Enum):
        return _convert(value.value, depth + 1, active)
    if isinstance(value, (PurePath, uuid.UUID)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.hex()

    key = id(value)
    if key in active:
        return "<cycle>"
    active.add(key)
    try:
        if isinstance(value, dict):
            return {_key(k): _convert(v, depth + 1, active) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_convert(v, depth + 1, active) for v in value]
        if isinstance(value, (set, frozenset)):
            items = [_convert(v, depth + 1, active) for v in value]
            try:
                return sorted(items)
            except TypeError:
                return items
        if isinstance(value, np.ndarray):
            return _convert(value.tolist(), depth + 1, active)
        if isinstance(value, pd.DataFrame):
            return {
                "columns": [_key(c) for c in value.columns],
                "index": _convert(list(value.index), depth + 1, active),
                "data": _convert(value.to_numpy(dtype=object).tolist(), depth + 1, active),
            }
        if isinstance(value, pd.Series):
            if value.index.is_unique:
                return {_key(k): _convert(v, depth + 1, active) for k, v in value.items()}
            return _convert(value.tolist(), depth + 1, active)
        if isinstance(value, (pd.Index, pd.Categorical, pd.api.extensions.ExtensionArray)):
            return _convert(list(value), depth + 1, active)
        return _string(value)
    finally:
        active.discard(key)


def _key(k: Any) -> str:
    if isinstance(k, str):
        return k
    converted = json_safe(k)
    return converted if isinstance(converted, str) else json_dumps_key(converted)


def json_dumps_key(v: Any) -> str:
    import json

    try:
        return json.dumps(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else str(v)
    except (TypeError, ValueError):
        return _string(v)
