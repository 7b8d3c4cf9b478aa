"""Fields kept packed in memory: the parts of a group's parse that are read only now and then.

A server holds every group's parse in each worker process, thousands of groups at a desk. The IC
table, the info.pkl metadata, the model's importance and summary, the file names and their
signature are read only to answer a detail request, to build a payload or a version, to rebuild the
research index or to compare files. As Python objects they cost about four times their packed size
(a float is 24 bytes plus its slot in a list, every row a list, every key a string of its own).

`Packed` is a data descriptor for such a dataclass field: setting it stores the value as `marshal`
bytes, and each read builds a fresh copy from them (a few microseconds for an IC table), so a
caller may change what it read without touching the stored value. marshal writes exactly the
built-in types these fields hold (dicts, lists, tuples, strings, numbers, booleans, None; floats
bit for bit), so what is read equals what was stored. A value marshal cannot write (an object of
another type) is kept as it is. The bytes are made here, in this process, and never read from
anywhere else, so loading them trusts nothing from outside.
"""
from __future__ import annotations

import marshal
from typing import Any

_REQUIRED = object()


class _Marshalled(bytes):
    """Bytes that `Packed` wrote (a field holding bytes of its own is told apart by the type)."""

    __slots__ = ()


def pack(value: Any) -> Any:
    """`value` as marshal bytes, or `value` itself when marshal cannot write it (or it is None)."""
    if value is None:
        return None
    try:
        return _Marshalled(marshal.dumps(value))
    except ValueError:  # an object of a type marshal does not know
        return value


def unpack(stored: Any) -> Any:
    """The value `pack` stored: a fresh copy."""
    return marshal.loads(stored) if type(stored) is _Marshalled else stored


class Packed:
    """A dataclass field stored with `pack` and read with `unpack`. `default` is the field's default
    (none: the field is required)."""

    def __init__(self, default: Any = _REQUIRED) -> None:
        if isinstance(default, (list, dict, set)):
            raise TypeError("a mutable default would be shared between instances")
        self.default = default
        self.slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_packed_" + name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:  # the dataclass asks the class for the field's default
            if self.default is _REQUIRED:
                raise AttributeError(self.slot)
            return self.default
        return unpack(obj.__dict__[self.slot])

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self.slot] = pack(value)
