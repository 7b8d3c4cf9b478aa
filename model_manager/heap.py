"""Giving freed memory back to the system after a big load.

CPython hands the memory of a freed object back to the C allocator, which keeps it for later. After a
big load (thousands of groups parsed, the research index rebuilt) most of what was allocated on the
way is free again, but glibc's malloc keeps those pages in each thread's arena, so the process stays
at its peak resident size: about 30 MB per server process after loading 5,000 small groups.
`malloc_trim(0)` gives every whole free page back (a few milliseconds for a few hundred megabytes).
Where the C library is not glibc this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
import threading

log = logging.getLogger(__name__)

_lock = threading.Lock()
_trim: list = []  # [the C function, or None where there is none], looked up on first use


def _malloc_trim():
    with _lock:
        if not _trim:
            function = None
            if sys.platform.startswith("linux"):
                try:
                    function = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
                    function.argtypes, function.restype = [ctypes.c_size_t], ctypes.c_int
                except (OSError, AttributeError):  # musl and others: no malloc_trim
                    function = None
            _trim.append(function)
        return _trim[0]


def release_free_memory() -> bool:
    """Return the C allocator's free pages to the system; False where that cannot be done."""
    function = _malloc_trim()
    if function is None:
        return False
    try:
        function(0)
    except Exception:  # never worth failing a load for
        log.debug("malloc_trim failed", exc_info=True)
        return False
    return True
