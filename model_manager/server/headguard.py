"""The request-head rules every HTTP protocol of `serve` keeps (see protocol.py): a time limit on
receiving a request head, checked by one sweep a second per event loop instead of a timer per
request, and a 16 KiB limit on its size (answered 431 without parsing it)."""
from __future__ import annotations

import weakref
from typing import Any

MAX_HEAD_BYTES = 16 * 1024

_TOO_LARGE_BODY = b'{"status_code":431,"detail":"request header fields too large: at most 16 KiB"}'
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
              b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_TOO_LARGE_BODY), _TOO_LARGE_BODY))


class _HeadSweeper:
    """The head timeouts of one event loop: every `interval` seconds it closes the connections whose
    request head is overdue. A request arms and disarms its timeout with an attribute write, not a
    timer of its own: a timer per request cost the payload polls several per cent."""

    def __init__(self, loop: Any, interval: float):
        self.loop = loop
        self.interval = interval
        self.guarded: weakref.WeakSet = weakref.WeakSet()  # weak: an upgraded connection never says it is gone
        loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for protocol in [p for p in self.guarded if p._overdue(now)]:
            protocol._head_timed_out()
        self.loop.call_later(self.interval, self._sweep)


_sweepers: dict[int, _HeadSweeper] = {}  # by id(loop): one server, one loop, in practice one entry


class HeadGuard:
    """The timeout and the byte count of the request head being received (mixed into a protocol)."""

    head_timeout: float = 10.0
    max_head_bytes: int = MAX_HEAD_BYTES
    transport: Any
    loop: Any

    def _guard_start(self) -> None:
        self._awaiting_head = True   # the next bytes belong to a request head
        self._head_bytes = 0
        self._head_tail = b""        # the last bytes seen, to find a head end split between reads
        self._head_since: float | None = None  # when the head being awaited started (the sweeper's clock)
        sweeper = _sweepers.get(id(self.loop))
        if sweeper is None or sweeper.loop is not self.loop:
            sweeper = _sweepers[id(self.loop)] = _HeadSweeper(self.loop, min(1.0, self.head_timeout / 4))
        self._sweeper = sweeper
        sweeper.guarded.add(self)

    def _arm_head_timer(self) -> None:
        if self._head_since is None:  # closed by the sweep between head_timeout and head_timeout + its interval
            self._head_since = self.loop.time()

    def _disarm_head_timer(self) -> None:
        self._head_since = None

    def _guard_end(self) -> None:
        self._head_since = None
        self._sweeper.guarded.discard(self)

    def _overdue(self, now: float) -> bool:
        return self._head_since is not None and now - self._head_since >= self.head_timeout

    def _head_timed_out(self) -> None:
        self._head_since = None
        if not self.transport.is_closing():
            self.transport.close()

    def _head_complete(self) -> None:
        self._disarm_head_timer()
        self._awaiting_head, self._head_bytes, self._head_tail = False, 0, b""

    def _next_head(self) -> None:
        """The request is done: what comes next is a new head (timed from its first byte)."""
        self._awaiting_head, self._head_bytes, self._head_tail = True, 0, b""

    def _head_too_large(self, data: bytes) -> bool:
        """Count the head bytes in `data` (not the body bytes after the head's end)."""
        buffer = self._head_tail + data if self._head_tail else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            self._head_bytes += len(data)
            self._head_tail = buffer[-3:]
        else:
            self._head_bytes += end + 4 - len(self._head_tail)
        return self._head_bytes > self.max_head_bytes

    def _guard_data(self, data: bytes) -> bool:
        """Called before the parser sees `data`; False when the connection was refused."""
        if not self._awaiting_head:
            return True
        if self._head_too_large(data):
            self._disarm_head_timer()
            self._awaiting_head = False
            self.transport.write(_TOO_LARGE)
            self.transport.close()
            return False
        self._arm_head_timer()
        return True
