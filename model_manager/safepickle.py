"""The allow-list unpickler for artifact pickles.

`pickle.loads` runs whatever a file asks for, and artifacts come from research boxes and
shared drives. This is the Python docs' "Restricting Globals" pattern, made strict enough
that the allowed names cannot be chained into code execution or global mutation:

* every global must be an exact `(module, name)` pair of `ALLOWED_GLOBALS`: no module
  wildcards, no dotted attribute paths, and the copyreg extension registry and persistent
  ids get no way around it;
* a few allowed names are swapped for stand-ins that accept only what real pickles pass
  (`getattr`, `_codecs.encode`, `defaultdict`, numpy's `_reconstruct`, ...);
* opcodes are checked too: BUILD only fills in an object this pickle just created and never
  sets a dunder attribute; models, frames, arrays and indexes are never *called* (only
  rebuilt the way their own pickles do); lengths a tiny pickle could blow up are capped.

numpy and pandas trust the states they unpickle, and some malformed ones crash the
interpreter (a segfault, not an exception). So dtypes are rebuilt through numpy's public
constructor, array states are checked against their shape, and pandas objects are checked
for the invariants their constructors enforce (see _rebuild_dtype, _check_pandas).
XGBoost's own model reader (Booster.__setstate__) is not hardened against damaged bytes;
that is out of reach here.

A refusal is `UnsafePickleError` naming the global; any other failure while reading the
untrusted bytes is `ArtifactError(code="corrupt")`. It runs on the pure-Python unpickler
because only its opcode table can be extended (about 5x slower than C: ~2 s for 200k objects,
milliseconds for a model, whose bulk is one bytes object).
"""
from __future__ import annotations

import _compat_pickle
import collections
import datetime
import functools
import importlib
import io
import math
import pickle
import struct
import sys
import zoneinfo
from typing import Any

import numpy as np

from .errors import ArtifactError, UnsafePickleError

__all__ = ["ALLOWED_GLOBALS", "safe_loads"]


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
_RULES = {"not_called": _NOT_CALLED, "not_newed": _NOT_NEWED, "needs_build": _NEEDS_BUILD,
          "block_manager": _BLOCK_MANAGER}
_RENAMED = {("pandas._libs.tslibs.nattype", "__nat_unpickle"): ("pandas._libs.tslibs.nattype", "_nat_unpickle"),
            ("pandas.core.internals.blocks", "new_block"): ("pandas._libs.internals", "_unpickle_block"),
            **{("pandas.core.indexes.numeric", n): ("pandas.core.indexes.base", "Index")
               for n in ("Int64Index", "UInt64Index", "Float64Index")}}
_STAND_INS = {("builtins", "getattr"): "_getattr", ("_codecs", "encode"): "_encode", ("builtins", "range"): "_range",
              ("builtins", "bytearray"): "_bytearray", ("collections", "defaultdict"): "_defaultdict",
              ("copyreg", "_reconstructor"): "_reconstructor", ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
              ("numpy._core.multiarray", "_reconstruct"): "_reconstruct", ("pandas.core.indexes.base", "_new_Index"): "_new_index",
              ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"): "_ndarray_backed",
              ("pytz", "_p"): "_pytz_zone", ("pytz", "_UTC"): "_pytz_utc", ("pytz", "FixedOffset"): "_pytz_fixed"}
_FACTORIES = (None, list, dict, set, frozenset, tuple, int, float, str, collections.OrderedDict)
_MIN_ITEM_CAP = 1_000_000
_NUMPY_2 = int(np.__version__.split(".")[0]) >= 2


_FOREIGN_ORDER = ">" if sys.byteorder == "little" else "<"


def _rebuild_dtype(spec: np.dtype, state: Any) -> np.dtype:
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


def _check_pandas(obj: Any) -> None:
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
            _check_pandas(level)
    elif isinstance(obj, pd.Index):
        if not isinstance(obj, pd.RangeIndex):  # a RangeIndex has no backing array
            _check_pandas(obj._data)
        return
    elif isinstance(obj, NDArrayBacked):
        data, dtype = obj._ndarray, obj._dtype
        if isinstance(obj, pd.Categorical):
            ok = (isinstance(dtype, pd.CategoricalDtype) and data.dtype.kind in "iu"
                  and (data.size == 0 or (data.min() >= -1 and data.max() < len(dtype.categories))))
        elif isinstance(obj, (pd.arrays.DatetimeArray, pd.arrays.TimedeltaArray)):
            ok = data.dtype.kind == obj.dtype.kind and (data.dtype == dtype or getattr(dtype, "unit", None)
                                                        == np.datetime_data(data.dtype)[0])
        elif isinstance(obj, pd.arrays.PeriodArray):
            ok = data.dtype == np.int64 and isinstance(dtype, pd.PeriodDtype)
        elif isinstance(obj, pd.arrays.StringArray):
            ok = data.dtype == object and all(type(v) is str or v is pd.NA or v is None or (type(v) is float and v != v)
                                              for v in data.ravel())
        else:
            ok = False
    elif isinstance(obj, pd.arrays.IntervalArray):
        ok = (type(obj._left) is type(obj._right) and len(obj._left) == len(obj._right)
              and isinstance(obj._left, (np.ndarray, BaseMaskedArray, NDArrayBacked)))
        _check_pandas(obj._left)
        _check_pandas(obj._right)
    elif isinstance(obj, BaseMaskedArray):
        ok = (isinstance(obj._data, np.ndarray) and isinstance(obj._mask, np.ndarray) and obj._mask.dtype == bool
              and obj._mask.shape == obj._data.shape)
    elif isinstance(obj, BaseBlockManager):
        rows = len(obj.axes[-1])
        if isinstance(obj, SingleBlockManager):
            ok = len(obj.axes) == 1 and len(obj.blocks) == 1 and obj.blocks[0].shape == (rows,)
        else:
            locs = [np.asarray(block.mgr_locs.as_array) for block in obj.blocks]
            ok = (len(obj.axes) == 2 and all(b.shape == (len(loc), rows) for b, loc in zip(obj.blocks, locs))
                  and np.array_equal(np.sort(np.concatenate(locs or [np.empty(0, int)])), np.arange(len(obj.axes[0]))))
        for block in obj.blocks:
            _check_pandas(block.values)
    elif isinstance(obj, (pd.DataFrame, pd.Series)):
        ok = isinstance(obj._mgr, BlockManager if isinstance(obj, pd.DataFrame) else SingleBlockManager)
    else:
        return
    if not ok:
        raise ArtifactError(f"corrupt pickle: an inconsistent {type(obj).__name__}", code="corrupt")


class _Pending:
    """Holds the place of a pandas array until its BUILD: pandas makes these empty first, and
    an empty one crashes the interpreter when touched. The real object is made at BUILD."""

    def __init__(self, make: Any):
        self.make = make


def _resolve(key: tuple[str, str]) -> Any:
    """The object an allowed (module, name) stands for in the installed libraries."""
    module, name = _RENAMED.get(key, key)
    if module.startswith("numpy.core.") and _NUMPY_2:  # numpy 2 warns on the old path
        module = "numpy._core." + module[len("numpy.core."):]
    return getattr(importlib.import_module(module), name)


def _short(value: Any) -> str:
    """A value for an error message: plain values only, never a repr of a pickled object."""
    return repr(value)[:60] if type(value) in (str, bytes, int, float, bool, type(None)) else f"<{type(value).__name__}>"


def _describe(obj: Any) -> str:
    kind = obj if isinstance(obj, type) or callable(obj) else type(obj)
    return f"{getattr(kind, '__module__', '?')}.{getattr(kind, '__qualname__', type(kind).__name__)}"


class _ExactReader(io.BytesIO):
    """The pure-Python unpickler accepts short reads (a truncated BINBYTES or GLOBAL line is
    silently cut); here they are errors, so a truncated file reads as truncated."""

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if size is not None and 0 <= size != len(data):
            raise EOFError("pickle data was truncated")
        return data

    def readline(self, size: int | None = -1) -> bytes:
        line = super().readline(size)
        if not line.endswith(b"\n"):
            raise EOFError("pickle data was truncated")
        return line


class _Memo(dict):
    """The unpickler's memo, remembering where the objects a BUILD may replace are kept."""

    def __init__(self) -> None:
        super().__init__()
        self.slots: dict[int, list[Any]] = {}

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        if isinstance(value, (np.dtype, _Pending)):
            self.slots.setdefault(id(value), []).append(key)


class _SafeUnpickler(pickle._Unpickler):
    dispatch = pickle._Unpickler.dispatch.copy()

    def __init__(self, data: bytes):
        super().__init__(_ExactReader(data))
        self.memo = _Memo()
        # Anything a few bytes can make huge (ranges, zero-itemsize arrays) is capped at the
        # number of items the file could really hold.
        self._max_items = max(_MIN_ITEM_CAP, len(data))
        self._fresh: dict[int, Any] = {}       # objects this pickle created (held: ids stay unique)
        self._unbuilt: dict[int, Any] = {}     # models and frames still waiting for their BUILD
        self._marked: dict[int, set[str]] = {}  # id of a resolved class -> its rules below

    # -- globals ------------------------------------------------------------------------
    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:  # Python 2 spellings (__builtin__, copy_reg), as pickle does
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        key = (module, name)
        if key not in ALLOWED_GLOBALS:
            raise UnsafePickleError(f"{module}.{name}")
        if key in _STAND_INS:
            return getattr(self, _STAND_INS[key])
        obj = _resolve(key)
        self._marked.setdefault(id(obj), set()).update(rule for rule, keys in _RULES.items() if key in keys)
        return obj

    def _is(self, obj: Any, rule: str) -> bool:
        return rule in self._marked.get(id(obj), ())

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"persistent id {_short(pid)}")

    def get_extension(self, code: int) -> None:
        # Always through find_class: copyreg's process-wide _extension_cache could hold
        # anything another pickle load put there.
        key = pickle._inverted_registry.get(code)
        if not key:
            raise ArtifactError(f"corrupt pickle: unregistered extension code {code}", code="corrupt")
        self.append(self.find_class(*key))

    # -- opcodes that call or mutate -----------------------------------------------------
    def _made(self, obj: Any) -> None:
        self._fresh[id(obj)] = obj
        if isinstance(obj, _Pending) or self._is(type(obj), "needs_build"):
            self._unbuilt[id(obj)] = obj

    def _check_call(self, func: Any) -> None:
        if self._is(func, "not_called"):
            raise UnsafePickleError(f"{_describe(func)}(...) (a direct call)")

    def _check_new(self, cls: Any) -> None:
        if self._is(cls, "not_newed"):
            raise UnsafePickleError(f"{_describe(cls)}.__new__")

    def load_reduce(self) -> None:
        func, args = self.stack[-2], self.stack[-1]
        self._check_call(func)
        if self._is(func, "block_manager") and len(args) != 2:  # a third argument turns off its checks
            raise UnsafePickleError(f"{_describe(func)}(...) with verify_integrity")
        pickle._Unpickler.load_reduce(self)
        if id(self.stack[-1]) not in self._fresh:  # an empty object made for BUILD is checked there
            _check_pandas(self.stack[-1])

    def load_newobj(self) -> None:
        self._check_new(self.stack[-2])
        pickle._Unpickler.load_newobj(self)
        self._made(self.stack[-1])

    def load_newobj_ex(self) -> None:
        self._check_new(self.stack[-3])
        pickle._Unpickler.load_newobj_ex(self)
        self._made(self.stack[-1])

    def _instantiate(self, klass: Any, args: tuple) -> None:  # INST / OBJ (protocol 0/1)
        self._check_call(klass)
        pickle._Unpickler._instantiate(self, klass, args)

    def load_build(self) -> None:
        inst, state = self.stack[-2], self.stack[-1]
        # a dtype is never modified in place (see _rebuild_dtype), so any dtype may be the target
        if id(inst) not in self._fresh and not isinstance(inst, np.dtype):
            raise UnsafePickleError(f"{_describe(inst)} (BUILD on an object the pickle did not create)")
        for part in state if isinstance(state, tuple) and len(state) == 2 else (state,):
            for key in part if isinstance(part, dict) else ():
                if isinstance(key, str) and key.startswith("__"):
                    raise UnsafePickleError(f"{_describe(inst)}.{key} (set by BUILD)")
        self._unbuilt.pop(id(inst), None)
        if isinstance(inst, np.ndarray):
            self._check_array_state(state)
        if isinstance(inst, np.dtype):
            self._replace(inst, _rebuild_dtype(inst, state))
        elif isinstance(inst, _Pending):
            self._replace(inst, inst.make(state))
        else:
            pickle._Unpickler.load_build(self)
            _check_pandas(inst)

    def _replace(self, old: Any, new: Any) -> None:
        """Finish a BUILD by swapping in `new` for `old` (on the stack and in the memo)."""
        self.stack.pop()
        self.stack[-1] = new
        for key in self.memo.slots.pop(id(old), ()):
            self.memo[key] = new

    def _check_array_state(self, state: Any) -> None:
        # (1, shape, dtype, is_fortran, data), as ndarray.__reduce__ writes it. numpy does not
        # check that an object array's list matches its shape, and reads past it (a crash).
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and isinstance(state[1], tuple)
                and all(type(n) is int and n >= 0 for n in state[1]) and isinstance(state[2], np.dtype)
                and isinstance(state[3], bool)):
            raise ArtifactError("corrupt pickle: malformed numpy array state", code="corrupt")
        size = math.prod(state[1])
        if size > self._max_items:
            raise UnsafePickleError(f"numpy.ndarray of {size} items")
        data, dtype = state[4], state[2]
        if dtype.hasobject:  # object arrays pickle their items as a list
            fits = isinstance(data, list) and len(data) == size
        else:
            fits = isinstance(data, (bytes, bytearray)) and len(data) == size * dtype.itemsize
        if not fits:
            raise ArtifactError("corrupt pickle: numpy array data does not match its shape and dtype", code="corrupt")

    def load_stop(self) -> None:
        if self._unbuilt:  # an empty model or frame would fail far from here
            raise ArtifactError(f"corrupt pickle: a {type(next(iter(self._unbuilt.values()))).__name__} without its state",
                                code="corrupt")
        pickle._Unpickler.load_stop(self)

    def load_bytearray8(self) -> None:
        # pickle allocates the declared size before reading: 8 bytes could ask for terabytes
        (size,) = struct.unpack("<Q", self.read(8))
        if size > self._max_items:
            raise ArtifactError(f"corrupt pickle: a bytearray declares {size} bytes, more than the file holds",
                                code="corrupt")
        self.append(bytearray(self.read(size)))

    for _op, _fn in [(pickle.REDUCE, load_reduce), (pickle.NEWOBJ, load_newobj), (pickle.NEWOBJ_EX, load_newobj_ex),
                     (pickle.BUILD, load_build), (pickle.BYTEARRAY8, load_bytearray8), (pickle.STOP, load_stop)]:
        dispatch[_op[0]] = _fn
    del _op, _fn

    # -- stand-ins: the real thing, for the arguments real pickles pass -------------------
    def _getattr(self, obj: Any, name: str, *default: Any) -> Any:
        if obj is zoneinfo.ZoneInfo and name == "_unpickle" and not default:
            return zoneinfo.ZoneInfo._unpickle
        raise UnsafePickleError(f"builtins.getattr({_describe(obj)}, {_short(name)})")

    def _encode(self, text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
        if isinstance(text, str) and encoding in ("latin1", "latin-1") and errors == "strict":
            return text.encode("latin1")
        raise UnsafePickleError(f"_codecs.encode(..., {_short(encoding)})")

    def _check_length(self, what: str, value: range) -> range:
        if len(value) > self._max_items:
            raise UnsafePickleError(f"{what} of {len(value)} items")
        return value

    def _range(self, *args: Any) -> range:
        return self._check_length("builtins.range", range(*args))

    def _bytearray(self, *args: Any) -> bytearray:
        if args and isinstance(args[0], int):  # bytearray(n) allocates n zero bytes
            raise UnsafePickleError(f"builtins.bytearray({args[0]})")
        return bytearray(*args)

    def _defaultdict(self, factory: Any = None, *args: Any) -> collections.defaultdict:
        if not any(factory is allowed for allowed in _FACTORIES):
            raise UnsafePickleError(f"collections.defaultdict({_describe(factory)})")
        return collections.defaultdict(factory, *args)

    def _reconstructor(self, cls: Any, base: Any, state: Any) -> Any:
        if base is not object or state is not None or not isinstance(cls, type):
            raise UnsafePickleError(f"copyreg._reconstructor({_describe(cls)}, {_describe(base)}, ...)")
        self._check_new(cls)
        obj = object.__new__(cls)
        self._made(obj)
        return obj

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if shape not in ((0,), 0):  # ndarray.__reduce__ always writes an empty array here
            ints = isinstance(shape, tuple) and all(type(n) is int for n in shape)
            raise UnsafePickleError(f"numpy._core.multiarray._reconstruct(shape={repr(shape)[:60] if ints else _short(shape)})")
        array = np.ndarray.__new__(subtype, (0,), dtype)
        self._made(array)
        return array

    def _new_index(self, cls: Any, d: Any) -> Any:
        from pandas.core.indexes.base import _new_Index
        if isinstance(d, dict) and "stop" in d:  # a RangeIndex stores only its bounds
            self._check_length("pandas.RangeIndex", range(d.get("start") or 0, d["stop"], d.get("step") or 1))
        return _new_Index(cls, d)

    def _ndarray_backed(self, cls: Any, checksum: Any, state: Any = None) -> _Pending:
        unpickle = getattr(importlib.import_module("pandas._libs.arrays"), "__pyx_unpickle_NDArrayBacked")

        def make(build_state: Any) -> Any:
            obj = unpickle(cls, checksum, None)
            obj.__setstate__(build_state)
            _check_pandas(obj)
            return obj

        if state is not None:  # Cython's own form: the state comes with the call
            return make(state)
        pending = _Pending(make)
        self._made(pending)
        return pending

    def _pytz_zone(self, zone: str, *_offsets: Any) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(zone)

    def _pytz_utc(self) -> datetime.timezone:
        return datetime.UTC

    def _pytz_fixed(self, minutes: int) -> datetime.timezone:
        return datetime.timezone(datetime.timedelta(minutes=minutes))


def safe_loads(data: bytes) -> Any:
    """Unpickle `data`, resolving only `ALLOWED_GLOBALS`; nothing in the file can run code.

    Raises `UnsafePickleError` (naming the global) for anything off the allow-list, and
    `ArtifactError(code="corrupt")` for truncated, malformed or unreadable data.
    """
    try:
        return _SafeUnpickler(bytes(data)).load()
    except ArtifactError:
        raise
    except Exception as exc:  # untrusted bytes: every other failure means the file is unusable
        try:  # the message of an exception from pickled objects may itself fail to render
            detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        except Exception:
            detail = ""
        raise ArtifactError(f"corrupt pickle ({type(exc).__name__}{': ' + detail if detail else ''}): "
                            "the file is truncated, damaged or was written by an incompatible library",
                            code="corrupt") from exc
