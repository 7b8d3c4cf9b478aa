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
    raised, in order. A ResourceWarning is left out: it is the garbage collector finding some other
    object's unclosed file while the block ran, and says nothing about what the block read."""
    messages: list[str] = []
    with _lock, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield messages
        finally:
            messages.extend(str(w.message).strip().splitlines()[0] for w in caught
                            if str(w.message).strip() and not issubclass(w.category, ResourceWarning))
