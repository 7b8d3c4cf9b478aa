"""What the allow-list unpickler (`model_manager.safepickle`) lets a pickle name, and how.

`ALLOWED_GLOBALS` is the exact list of `(module, name)` pairs a pickle may reference; `RULES` says how
the pickle may make objects of some of them (called, made empty, filled in by BUILD); `STAND_INS`
names the unpickler's methods that replace a few allowed names with checked versions. Checked
against real pickles written by numpy 1.x/2.x, pandas 1.x-3.x and xgboost 1.7-3.x.
"""
from __future__ import annotations

import collections
import importlib
from typing import Any

import numpy as np

__all__ = ["ALLOWED_GLOBALS", "FACTORIES", "RULES", "STAND_INS", "resolve"]


def _pairs(module: str, names: str) -> set[tuple[str, str]]:
    return {(module, name) for name in names.split()}


# xgboost: the models. A Booster pickles as its raw model bytes, the sklearn wrappers as
# their params plus the Booster.
_XGB_CLASSES = _pairs("xgboost.core", "Booster") | _pairs(
    "xgboost.sklearn", "XGBModel XGBRegressor XGBClassifier XGBRanker XGBRFRegressor XGBRFClassifier")

# numpy: arrays (_reconstruct + __setstate__, or _frombuffer at protocol 5), dtypes, scalars.
# numpy 1.x writes numpy.core.*, numpy 2.x numpy._core.*. Scalar types appear when an info
# dict stores a dtype such as np.float32 itself.
_NUMPY = {(f"{core}.{mod}", name) for core in ("numpy.core", "numpy._core")
          for mod, name in [("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")]}
_NUMPY |= _pairs("numpy", "ndarray dtype bool bool_ str_ bytes_ object_ float16 float32 float64 int8 int16 "
                 "int32 int64 uint8 uint16 uint32 uint64 complex64 complex128 datetime64 timedelta64")

# pandas: what info dicts hold. pandas 3 spells these `pandas.X` / `pandas.arrays.X`; 1.x and
# 2.x used the defining module, listed here (checked against real pickles of each).
_PD_INDEXES = {"Index": "base", "RangeIndex": "range", "DatetimeIndex": "datetimes", "TimedeltaIndex": "timedeltas",
               "PeriodIndex": "period", "CategoricalIndex": "category", "IntervalIndex": "interval", "MultiIndex": "multi"}
_PD_ARRAYS = {"Categorical": "categorical", "DatetimeArray": "datetimes", "TimedeltaArray": "timedeltas",
              "PeriodArray": "period", "IntervalArray": "interval", "IntegerArray": "integer",
              "FloatingArray": "floating", "BooleanArray": "boolean", "StringArray": "string_"}
_PD_VALUES = {"Period": "pandas._libs.tslibs.period", "Interval": "pandas._libs.interval", "NA": "pandas._libs.missing",
              **{n: "pandas.core.dtypes.dtypes" for n in "CategoricalDtype DatetimeTZDtype PeriodDtype IntervalDtype".split()},
              **{f"{s}Int{b}Dtype": "pandas.core.arrays.integer" for s in ("", "U") for b in (8, 16, 32, 64)},
              "Float32Dtype": "pandas.core.arrays.floating", "Float64Dtype": "pandas.core.arrays.floating",
              "BooleanDtype": "pandas.core.arrays.boolean", "StringDtype": "pandas.core.arrays.string_"}
_PD_FRAMES = {("pandas", "DataFrame"), ("pandas.core.frame", "DataFrame"), ("pandas", "Series"), ("pandas.core.series", "Series")}
_PD_INDEX_CLASSES = ({("pandas", n) for n in _PD_INDEXES} | {(f"pandas.core.indexes.{m}", n) for n, m in _PD_INDEXES.items()}
                     | _pairs("pandas.core.indexes.numeric", "Int64Index UInt64Index Float64Index"))
_PD_ARRAY_CLASSES = ({("pandas", "Categorical")} | {("pandas.arrays", n) for n in _PD_ARRAYS}
                     | {(f"pandas.core.arrays.{m}", n) for n, m in _PD_ARRAYS.items()})
_PANDAS = (_PD_FRAMES | _PD_INDEX_CLASSES | _PD_ARRAY_CLASSES | {("pandas", n) for n in _PD_VALUES}
           | {(m, n) for n, m in _PD_VALUES.items()}
           # the reconstruction helpers pandas pickles call
           | _pairs("pandas.core.indexes.base", "_new_Index") | _pairs("pandas.core.indexes.period", "_new_PeriodIndex")
           | _pairs("pandas.core.indexes.datetimes", "_new_DatetimeIndex")
           | _pairs("pandas.core.indexes.timedeltas", "_new_TimedeltaIndex")
           | _pairs("pandas.core.indexes.interval", "_new_IntervalIndex")
           | _pairs("pandas.core.internals.managers", "BlockManager SingleBlockManager")
           | _pairs("pandas._libs.internals", "_unpickle_block") | _pairs("pandas.core.internals.blocks", "new_block")
           | _pairs("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked")
           | _pairs("pandas._libs.tslibs.timestamps", "_unpickle_timestamp")
           | _pairs("pandas._libs.tslibs.timedeltas", "_timedelta_unpickle")
           | _pairs("pandas._libs.tslibs.nattype", "_nat_unpickle __nat_unpickle")
           # frequencies of DatetimeIndex / Period values
           | _pairs("pandas._libs.tslibs.offsets", "DateOffset Day Hour Minute Second Milli Micro Nano BusinessDay Week "
                    "MonthEnd MonthBegin BusinessMonthEnd BusinessMonthBegin QuarterEnd QuarterBegin YearEnd YearBegin"))

# datetime values and zones. A ZoneInfo pickles as getattr(ZoneInfo, "_unpickle")(key, ...);
# pandas 1.x/2.x pickled named zones as pytz, which is rebuilt here as zoneinfo (no pytz needed).
_DATETIME = _pairs("datetime", "date datetime time timedelta timezone") | _pairs("zoneinfo", "ZoneInfo") \
    | _pairs("pytz", "_p _UTC FixedOffset")

# Plain containers and values. Protocol <= 2 spells bytes as _codecs.encode(text, "latin1");
# protocol 0/1 rebuilds plain objects with copyreg._reconstructor(cls, object, None).
_BASICS = _pairs("builtins", "set frozenset slice bytearray complex range list dict tuple int float str bool "
                 "object getattr") | _pairs("collections", "OrderedDict defaultdict") \
    | _pairs("_codecs", "encode") | _pairs("copyreg", "_reconstructor")

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(_XGB_CLASSES | _NUMPY | _PANDAS | _DATETIME | _BASICS)

# How the pickle may make objects of the classes it names (models, frames, arrays and
# indexes are only ever rebuilt the way their own pickles do it):
_BLOCK_MANAGER = _pairs("pandas.core.internals.managers", "BlockManager")
# pandas arrays on a compiled base: an empty one, as __new__ makes it, crashes when touched.
_PD_NDARRAY_BACKED = {key for key in _PD_ARRAY_CLASSES if key[1] in
                      ("Categorical", "DatetimeArray", "TimedeltaArray", "PeriodArray", "StringArray")}
# not called (REDUCE): a call could read a file (Booster(model_file=...)) or build a huge
# frame from a scalar and a long index;
_NOT_CALLED = (_XGB_CLASSES | _PD_FRAMES | _PD_ARRAY_CLASSES | _PD_INDEX_CLASSES | {("numpy", "ndarray")}
               | _pairs("pandas.core.internals.managers", "SingleBlockManager"))
# not made empty (NEWOBJ, copyreg._reconstructor): they are passed to a helper or called.
_NOT_NEWED = _PD_INDEX_CLASSES | _PD_NDARRAY_BACKED | _BLOCK_MANAGER | {("numpy", "ndarray")}
# made empty, then filled in by BUILD, which must come
_NEEDS_BUILD = _XGB_CLASSES | _PD_FRAMES | _PD_ARRAY_CLASSES | _pairs("pandas.core.internals.managers", "SingleBlockManager")
# numpy scalar types are never called with a container: np.float64(nested lists) builds an array,
# and a few memo references nested a few levels deep make it gigabytes.
_SCALAR_TYPES = {key for key in _NUMPY if key[0] == "numpy" and key[1] not in ("ndarray", "dtype")}
RULES = {"not_called": _NOT_CALLED, "not_newed": _NOT_NEWED, "needs_build": _NEEDS_BUILD,
         "block_manager": _BLOCK_MANAGER, "scalar_args": _SCALAR_TYPES}
RENAMED = {("pandas._libs.tslibs.nattype", "__nat_unpickle"): ("pandas._libs.tslibs.nattype", "_nat_unpickle"),
            ("pandas.core.internals.blocks", "new_block"): ("pandas._libs.internals", "_unpickle_block"),
            **{("pandas.core.indexes.numeric", n): ("pandas.core.indexes.base", "Index")
               for n in ("Int64Index", "UInt64Index", "Float64Index")}}
STAND_INS = {("builtins", "getattr"): "_getattr", ("_codecs", "encode"): "_encode", ("builtins", "range"): "_range",
              ("builtins", "bytearray"): "_bytearray", ("collections", "defaultdict"): "_defaultdict",
              ("copyreg", "_reconstructor"): "_reconstructor", ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
              ("numpy._core.multiarray", "_reconstruct"): "_reconstruct", ("pandas.core.indexes.base", "_new_Index"): "_new_index",
              ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"): "_ndarray_backed",
              ("pytz", "_p"): "_pytz_zone", ("pytz", "_UTC"): "_pytz_utc", ("pytz", "FixedOffset"): "_pytz_fixed"}
FACTORIES = (None, list, dict, set, frozenset, tuple, int, float, str, collections.OrderedDict)
MIN_ITEM_CAP = 1_000_000
_NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


def resolve(key: tuple[str, str]) -> Any:
    """The object an allowed (module, name) stands for in the installed libraries."""
    module, name = RENAMED.get(key, key)
    if module.startswith("numpy.core.") and _NUMPY_2:  # numpy 2 warns on the old path
        module = "numpy._core." + module[len("numpy.core."):]
    return getattr(importlib.import_module(module), name)
