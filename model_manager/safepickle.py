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
for the invariants their constructors enforce (see pickle_checks).
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
import importlib
import io
import math
import pickle
import struct
import zoneinfo
from typing import Any

import numpy as np

from .errors import ArtifactError, UnsafePickleError
from .pickle_allowlist import ALLOWED_GLOBALS, FACTORIES, MIN_ITEM_CAP, RULES, STAND_INS, resolve
from .pickle_checks import check_pandas, check_zone_strings, describe, rebuild_dtype, short, zone_key

__all__ = ["ALLOWED_GLOBALS", "safe_loads"]
_STAND_INS, _resolve = STAND_INS, resolve  # the names the tests know
_PLAIN_SCALARS = (int, float, complex, str, bytes, bool, type(None))


class _Pending:
    """Holds the place of a pandas array until its BUILD: pandas makes these empty first, and
    an empty one crashes the interpreter when touched. The real object is made at BUILD."""

    def __init__(self, make: Any):
        self.make = make


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
        self._max_items = max(MIN_ITEM_CAP, len(data))
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
        if key in STAND_INS:
            return getattr(self, STAND_INS[key])
        obj = resolve(key)
        self._marked.setdefault(id(obj), set()).update(rule for rule, keys in RULES.items() if key in keys)
        return obj

    def _is(self, obj: Any, rule: str) -> bool:
        return rule in self._marked.get(id(obj), ())

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"persistent id {short(pid)}")

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

    def _check_call(self, func: Any, args: Any) -> None:
        if self._is(func, "not_called"):
            raise UnsafePickleError(f"{describe(func)}(...) (a direct call)")
        if self._is(func, "scalar_args") and not all(type(arg) in _PLAIN_SCALARS for arg in args):
            raise UnsafePickleError(f"{describe(func)}({', '.join(short(arg) for arg in args)[:80]}) (builds an array)")
        self._check_zones(func, args)

    def _check_new(self, cls: Any, args: Any) -> None:
        if self._is(cls, "not_newed"):
            raise UnsafePickleError(f"{describe(cls)}.__new__")
        self._check_zones(cls, args)

    def _check_zones(self, target: Any, args: Any) -> None:
        """No argument may make zoneinfo or pandas read a time zone from a file (see pickle_checks)."""
        if target is zoneinfo.ZoneInfo:  # ZoneInfo(key) and its __new__ read the key's file
            zone_key(next(iter(args), None), "zoneinfo.ZoneInfo")
        elif self._pandas_side(target):
            check_zone_strings(describe(target), args)
            if getattr(target, "__name__", "") == "DatetimeTZDtype" and isinstance(args, tuple) and len(args) > 1 \
                    and isinstance(args[1], str):
                zone_key(args[1], describe(target))

    def _pandas_side(self, target: Any) -> bool:
        """True for pandas callables and objects, and the stand-ins that hand their arguments to pandas."""
        if getattr(target, "__self__", None) is self:
            return target.__name__ in ("_new_index", "_ndarray_backed")
        module = getattr(target, "__module__", None)
        return isinstance(module, str) and module.startswith("pandas")

    def load_reduce(self) -> None:
        func, args = self.stack[-2], self.stack[-1]
        self._check_call(func, args)
        if self._is(func, "block_manager") and len(args) != 2:  # a third argument turns off its checks
            raise UnsafePickleError(f"{describe(func)}(...) with verify_integrity")
        pickle._Unpickler.load_reduce(self)
        if id(self.stack[-1]) not in self._fresh:  # an empty object made for BUILD is checked there
            check_pandas(self.stack[-1])

    def load_newobj(self) -> None:
        self._check_new(self.stack[-2], self.stack[-1])
        pickle._Unpickler.load_newobj(self)
        self._made(self.stack[-1])

    def load_newobj_ex(self) -> None:
        self._check_new(self.stack[-3], (self.stack[-2], self.stack[-1]))
        pickle._Unpickler.load_newobj_ex(self)
        self._made(self.stack[-1])

    def _instantiate(self, klass: Any, args: tuple) -> None:  # INST / OBJ (protocol 0/1)
        self._check_call(klass, args)
        pickle._Unpickler._instantiate(self, klass, args)

    def load_build(self) -> None:
        inst, state = self.stack[-2], self.stack[-1]
        # a dtype is never modified in place (see rebuild_dtype), so any dtype may be the target
        if id(inst) not in self._fresh and not isinstance(inst, np.dtype):
            raise UnsafePickleError(f"{describe(inst)} (BUILD on an object the pickle did not create)")
        for part in state if isinstance(state, tuple) and len(state) == 2 else (state,):
            for key in part if isinstance(part, dict) else ():
                if isinstance(key, str) and key.startswith("__"):
                    raise UnsafePickleError(f"{describe(inst)}.{key} (set by BUILD)")
        if isinstance(inst, _Pending) or self._pandas_side(type(inst)):
            check_zone_strings(describe(inst), state)
        self._unbuilt.pop(id(inst), None)
        if isinstance(inst, np.ndarray):
            self._check_array_state(state)
        if isinstance(inst, np.dtype):
            self._replace(inst, rebuild_dtype(inst, state))
        elif isinstance(inst, _Pending):
            self._replace(inst, inst.make(state))
        else:
            pickle._Unpickler.load_build(self)
            check_pandas(inst)

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
            return self._zoneinfo_unpickle
        raise UnsafePickleError(f"builtins.getattr({describe(obj)}, {short(name)})")

    def _encode(self, text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
        if isinstance(text, str) and encoding in ("latin1", "latin-1") and errors == "strict":
            return text.encode("latin1")
        raise UnsafePickleError(f"_codecs.encode(..., {short(encoding)})")

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
        if not any(factory is allowed for allowed in FACTORIES):
            raise UnsafePickleError(f"collections.defaultdict({describe(factory)})")
        return collections.defaultdict(factory, *args)

    def _reconstructor(self, cls: Any, base: Any, state: Any) -> Any:
        if base is not object or state is not None or not isinstance(cls, type):
            raise UnsafePickleError(f"copyreg._reconstructor({describe(cls)}, {describe(base)}, ...)")
        self._check_new(cls, ())
        obj = object.__new__(cls)
        self._made(obj)
        return obj

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if shape not in ((0,), 0):  # ndarray.__reduce__ always writes an empty array here
            ints = isinstance(shape, tuple) and all(type(n) is int for n in shape)
            raise UnsafePickleError(f"numpy._core.multiarray._reconstruct(shape={repr(shape)[:60] if ints else short(shape)})")
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
            check_pandas(obj)
            return obj

        if state is not None:  # Cython's own form: the state comes with the call
            return make(state)
        pending = _Pending(make)
        self._made(pending)
        return pending

    def _zoneinfo_unpickle(self, key: Any, *args: Any) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo._unpickle(zone_key(key, "zoneinfo.ZoneInfo._unpickle"), *args)

    def _pytz_zone(self, zone: str, *_offsets: Any) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(zone_key(zone, "pytz._p"))

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
    except (ArtifactError, MemoryError):  # running out of memory is the caller's to report (see isolation)
        raise
    except Exception as exc:  # untrusted bytes: every other failure means the file is unusable
        try:  # the message of an exception from pickled objects may itself fail to render
            detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        except Exception:
            detail = ""
        raise ArtifactError(f"corrupt pickle ({type(exc).__name__}{': ' + detail if detail else ''}): "
                            "the file is truncated, damaged or was written by an incompatible library",
                            code="corrupt") from exc
