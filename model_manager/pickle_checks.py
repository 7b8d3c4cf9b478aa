"""Checks the allow-list unpickler runs on what it builds: numpy dtypes rebuilt through their public
constructor, pandas objects held to the invariants their constructors enforce, and time zone names
held to the installed zones (so no pickle makes the check process open a file). Each raises
`ArtifactError` (corrupt) or `UnsafePickleError` (refused); see `model_manager.safepickle`.
"""
from __future__ import annotations

import functools
import re
import sys
import zoneinfo
from typing import Any

import numpy as np

from .errors import ArtifactError, UnsafePickleError

_FOREIGN_ORDER = ">" if sys.byteorder == "little" else "<"


def rebuild_dtype(spec: np.dtype, state: Any) -> np.dtype:
    """numpy.dtype.__setstate__ trusts its input: some states crash the interpreter (e.g.
    (3, '<', None, -1, -1, 0), or object flags on a plain dtype). So a pickled dtype is built
    again from its state with the public constructor, which validates everything."""
    if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] == len(state) - 5):
        raise ValueError("malformed numpy dtype state")
    _, endian, subarray, names, fields, elsize, _, flags = state[:8]
    meta = state[8] if len(state) == 9 else None
    extra, unit = meta if isinstance(meta, tuple) else (meta, None)  # datetimes: (metadata, unit)
    if subarray is not None:
        dtype = np.dtype((subarray[0], subarray[1]))
    elif names is not None:
        items = [fields[name] for name in names]
        dtype = np.dtype({"names": list(names), "formats": [f[0] for f in items], "offsets": [f[1] for f in items],
                          "titles": [f[2] if len(f) > 2 else None for f in items], "itemsize": elsize},
                         align=bool(flags & 0x80))  # NPY_ALIGNED_STRUCT
    elif spec.kind in "mM":  # the unit travels in the state: (b"ns", multiplier, 1, 1)
        name, count = unit[0].decode("ascii"), int(unit[1])
        dtype = np.dtype(f"{spec.char}8" + ("" if name == "generic" else f"[{count}{name}]"))
    else:
        dtype = spec
    if endian == _FOREIGN_ORDER and dtype.byteorder != "|":
        dtype = dtype.newbyteorder(endian)
    return np.dtype(dtype, metadata=extra) if extra else dtype


@functools.cache
def _pandas_types() -> tuple[type, ...]:
    import pandas as pd
    from pandas._libs.arrays import NDArrayBacked
    from pandas.core.arrays.masked import BaseMaskedArray
    from pandas.core.internals.managers import BaseBlockManager

    return pd.Index, NDArrayBacked, BaseMaskedArray, pd.arrays.IntervalArray, BaseBlockManager, pd.DataFrame, pd.Series


def check_pandas(obj: Any) -> None:
    """Invariants pandas' constructors enforce but unpickling skips. Its compiled code indexes
    without bounds checks, so a pickle that breaks one could crash the interpreter later."""
    if not type(obj).__module__.startswith("pandas") or not isinstance(obj, _pandas_types()):
        return
    import pandas as pd
    from pandas._libs.arrays import NDArrayBacked
    from pandas.core.arrays.masked import BaseMaskedArray
    from pandas.core.internals.managers import BaseBlockManager, BlockManager, SingleBlockManager

    if isinstance(obj, pd.MultiIndex):  # pandas unpickles these with verify_integrity=False
        levels, codes = obj.levels, obj.codes
        ok = (len(levels) == len(codes) and len({len(c) for c in codes}) <= 1
              and all(len(c) == 0 or (c.min() >= -1 and c.max() < len(level)) for level, c in zip(levels, codes)))
        for level in levels:
            check_pandas(level)
    elif isinstance(obj, pd.Index):
        if not isinstance(obj, pd.RangeIndex):  # a RangeIndex has no backing array
            check_pandas(obj._data)
        return
    elif isinstance(obj, NDArrayBacked):
        ok = _ndarray_backed_ok(obj)
    elif isinstance(obj, pd.arrays.IntervalArray):
        ok = (type(obj._left) is type(obj._right) and len(obj._left) == len(obj._right)
              and isinstance(obj._left, (np.ndarray, BaseMaskedArray, NDArrayBacked)))
        check_pandas(obj._left)
        check_pandas(obj._right)
    elif isinstance(obj, BaseMaskedArray):
        ok = (isinstance(obj._data, np.ndarray) and isinstance(obj._mask, np.ndarray) and obj._mask.dtype == bool
              and obj._mask.shape == obj._data.shape)
    elif isinstance(obj, BaseBlockManager):
        ok = _block_manager_ok(obj)
    elif isinstance(obj, (pd.DataFrame, pd.Series)):
        ok = isinstance(obj._mgr, BlockManager if isinstance(obj, pd.DataFrame) else SingleBlockManager)
    else:
        return
    if not ok:
        raise ArtifactError(f"corrupt pickle: an inconsistent {type(obj).__name__}", code="corrupt")


def _ndarray_backed_ok(obj: Any) -> bool:
    import pandas as pd

    data, dtype = obj._ndarray, obj._dtype
    if isinstance(obj, pd.Categorical):
        return (isinstance(dtype, pd.CategoricalDtype) and data.dtype.kind in "iu"
                and (data.size == 0 or (data.min() >= -1 and data.max() < len(dtype.categories))))
    if isinstance(obj, (pd.arrays.DatetimeArray, pd.arrays.TimedeltaArray)):
        return data.dtype.kind == obj.dtype.kind and (data.dtype == dtype or getattr(dtype, "unit", None)
                                                      == np.datetime_data(data.dtype)[0])
    if isinstance(obj, pd.arrays.PeriodArray):
        return data.dtype == np.int64 and isinstance(dtype, pd.PeriodDtype)
    if isinstance(obj, pd.arrays.StringArray):
        return data.dtype == object and all(type(v) is str or v is pd.NA or v is None or (type(v) is float and v != v)
                                            for v in data.ravel())
    return False


def _block_manager_ok(obj: Any) -> bool:
    from pandas.core.internals.managers import SingleBlockManager

    rows = len(obj.axes[-1])
    if isinstance(obj, SingleBlockManager):
        ok = len(obj.axes) == 1 and len(obj.blocks) == 1 and obj.blocks[0].shape == (rows,)
    else:
        locs = [np.asarray(block.mgr_locs.as_array) for block in obj.blocks]
        ok = (len(obj.axes) == 2 and all(b.shape == (len(loc), rows) for b, loc in zip(obj.blocks, locs))
              and np.array_equal(np.sort(np.concatenate(locs or [np.empty(0, int)])), np.arange(len(obj.axes[0]))))
    for block in obj.blocks:
        check_pandas(block.values)
    return ok


# -- time zones ---------------------------------------------------------------------------------
# pandas reads a zone from any path for "dateutil/<path>" ("dateutil//etc/passwd"), and zoneinfo opens
# whatever file under its search path a key names: a pickle could make the check process open files
# and tell, by its error, whether they exist. Zone names must be known zones; nothing names a file.
_FILE_ZONE_WORDS = ("dateutil", "tzlocal", "tzfile")
_ZONE_IN_DTYPE = re.compile(r"\[[^,\]]*,([^\]]*)\]")  # datetime64[ns, Europe/Paris]


@functools.cache
def known_zones() -> frozenset[str]:
    """The IANA zone names installed here (read once; the check process reads it before forking)."""
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


def zone_key(key: Any, where: str) -> str:
    """`key` if it names a known time zone; else refused, the same way whatever is on the disk."""
    if type(key) is not str or key not in known_zones():
        raise UnsafePickleError(f"{where}({short(key)}) (not a known time zone name)")
    return key


def check_zone_strings(where: str, args: Any, depth: int = 4) -> None:
    """Refuse strings in the arguments or state of a pandas object that pandas could read as a time
    zone stored in a file; time zones inside dtype strings, and under a "tz" key, must be known zones."""
    if depth < 0:
        return
    if isinstance(args, str):
        if any(word in args.lower() for word in _FILE_ZONE_WORDS):
            raise UnsafePickleError(f"{where}(..., {short(args)}) (a time zone read from a file)")
        for zone in _ZONE_IN_DTYPE.findall(args) if "[" in args else ():
            zone_key(zone.strip(), where)
    elif isinstance(args, dict):
        for key, value in args.items():
            check_zone_strings(where, key, depth - 1)
            check_zone_strings(where, value, depth - 1)
            if key == "tz" and isinstance(value, str):
                zone_key(value, where)
    elif isinstance(args, (tuple, list, set, frozenset)):
        for item in args:
            check_zone_strings(where, item, depth - 1)


def short(value: Any) -> str:
    """A value for an error message: plain values only, never a repr of a pickled object."""
    return repr(value)[:60] if type(value) in (str, bytes, int, float, bool, type(None)) else f"<{type(value).__name__}>"


def describe(obj: Any) -> str:
    kind = obj if isinstance(obj, type) or callable(obj) else type(obj)
    return f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', type(kind).__name__)}"
