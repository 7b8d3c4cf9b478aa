"""Giving freed memory back to the system after a big load, and keeping the cyclic garbage
collector out of big builds.

CPython hands the memory of a freed object back to the C allocator, which keeps it for later. After a
big load (thousands of groups parsed, the research index rebuilt) most of what was allocated on the
way is free again, but glibc's malloc keeps those pages in each thread's arena, so the process stays
at its peak resident size: about 30 MB per server process after loading 5,000 small groups.
`malloc_trim(0)` gives every whole free page back (a few milliseconds for a few hundred megabytes).
Where the C library is not glibc this does nothing.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
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


_paused = [0, False]  # builds in progress that paused the collector; whether it was enabled before


@contextlib.contextmanager
def cyclic_gc_paused():
    """Pause the cyclic garbage collector for a build that allocates many objects which all live
    until it ends (a research index: about a million numbers and lists at 5,000 groups). Each such
    build otherwise set off a full collection, which walks every object of the process (0.1-0.25 s
    at 5,000 groups, stopping every thread) and found nothing to free. Reference counting still frees
    everything as usual; only cycles wait until the last build ends. Nestable, from any thread."""
    with _lock:
        if _paused[0] == 0:
            _paused[1] = gc.isenabled()
            gc.disable()
        _paused[0] += 1
    try:
        yield
    finally:
        with _lock:
            _paused[0] -= 1
            if _paused[0] == 0 and _paused[1]:
                gc.enable()


FREEZE_MIN_GROUPS = 100  # a load of at least this many groups ends with `freeze_loaded`


def freeze_loaded() -> None:
    """After a big load (a start, the registration of many groups): collect cyclic garbage once, then
    move every object alive to the collector's permanent generation (`gc.freeze`). A full collection
    walks every object it tracks: with 5,000 groups loaded, 0.1-0.25 s that stopped every thread
    about once per refresh and found nothing to free. Frozen objects are still freed by reference
    counting when a refresh replaces them (the loaded state holds no cycles); later collections walk
    only what came after. What is alive at that moment and only later becomes cyclic garbage (a
    request in flight) is never reclaimed: a few objects per freeze, which happens at a start and
    after a large registration."""
    gc.collect()
    gc.freeze()
