"""The warnings a library raises while it reads an artifact, kept as notes on that artifact (pandas on
an odd ic.csv, xgboost on a model saved by an older release)."""
from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator

# `warnings.catch_warnings` swaps process-wide state (the filters and the function that shows a
# warning) and puts back what it found on the way out. Two threads inside it at once would leave one
# of them's recorder installed for good, swallowing every later warning of the process into a list
# nobody reads. So one block at a time.
_lock = threading.Lock()


@contextlib.contextmanager
def recorded_warnings() -> Iterator[list[str]]:
    """Yields a list that holds, once the block is over, the first line of each warning the block
    raised, in order. Only this thread's: a warning another thread raises meanwhile is shown as it
    would be without the block. A ResourceWarning is left out too: it is the garbage collector finding
    some other object's unclosed file while the block ran, and says nothing about what it read."""
    messages: list[str] = []
    caught: list[tuple[Warning | str, type[Warning]]] = []
    me = threading.get_ident()
    with _lock, warnings.catch_warnings():
        warnings.simplefilter("always")
        show = warnings.showwarning

        def record(message, category, filename, lineno, file=None, line=None):
            if threading.get_ident() == me:
                caught.append((message, category))
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = record
        try:
            yield messages
        finally:
            messages.extend(str(m).strip().splitlines()[0] for m, category in caught
                            if str(m).strip() and not issubclass(category, ResourceWarning))
