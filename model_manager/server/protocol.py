"""The HTTP connection rules uvicorn lacks: a request-head timeout and a request-head size limit.

uvicorn (0.54) waits forever for a request head and, with httptools, accepts heads of any size: a few
hundred idle or trickling connections use up the descriptors and `/healthz` stops answering. So
`serve` runs uvicorn with protocol classes of its own (`http_protocol(settings)`: payload polls are
answered by `pollprotocol.PollProtocol`, everything else by a subclass of uvicorn's) that

- closes a connection that has not sent a complete request head within `header_timeout` seconds of
  connecting, or of the first byte of its next request (an idle keep-alive connection between
  requests is uvicorn's `timeout_keep_alive`);
- answers 431 and closes when a request head grows past `MAX_HEAD_BYTES`, without parsing it.

A request whose head has arrived is never timed out, so long polls and event streams are not
affected. With httptools (the default) the parser's callbacks say when a head is complete; without
it the h11 protocol is used and its connection state says the same.

`raise_open_files_limit()` lifts the soft descriptor limit to the hard one at start.
"""
from __future__ import annotations

import logging
import resource
import weakref
from typing import Any

from model_manager.settings import Settings

log = logging.getLogger("model_manager.serve")

MAX_HEAD_BYTES = 16 * 1024
DEFAULT_OPEN_FILES = 65536  # the soft limit asked for when the hard limit is unlimited

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


def _httptools_class() -> type:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(HeadGuard, HttpToolsProtocol):
        hand_back_to: Any = None  # the PollProtocol that handed this connection over (see pollprotocol.py)
        _in_message = False       # the parser has taken bytes of a request it has not seen the end of

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._guard_start()
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            if self._guard_data(data):
                super().data_received(data)

        def on_message_begin(self) -> None:
            self._in_message = True
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._head_complete()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_message = False
            super().on_message_complete()
            self._next_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            poll = self.hand_back_to
            # back to the poll protocol only at a clean boundary: every request fully read and none of
            # the next one's bytes here yet, none in flight or pipelined, the transport open and not paused
            if poll is not None and not self._in_message and self._head_bytes == 0 and self.cycle.response_complete \
                    and not self.pipeline and not self.transport.is_closing() and not self.flow.write_paused and not self.flow.read_paused:
                self._unset_keepalive_if_required()
                self.connections.discard(self)
                self._guard_end()
                poll.take_back()

        def connection_lost(self, exc: Exception | None) -> None:
            self._guard_end()
            super().connection_lost(exc)

    return GuardedHttpToolsProtocol


def _h11_class() -> type:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(HeadGuard, H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._guard_start()
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE and not self._awaiting_head:
                self._next_head()
            if not self._guard_data(data):
                return
            super().data_received(data)
            if self._awaiting_head and self.conn.their_state is not h11.IDLE:
                self._head_complete()  # h11 took the request line and headers

        def connection_lost(self, exc: Exception | None) -> None:
            self._guard_end()
            super().connection_lost(exc)

    return GuardedH11Protocol


def http_protocol(settings: Settings) -> type:
    """The protocol class `serve` gives uvicorn: `PollProtocol` (server/pollprotocol.py), which answers
    payload polls itself and hands every other request to uvicorn's httptools protocol with the header
    timeout and the 431 limit of `settings`. Behind trusted proxies (the client address comes from
    their headers, which only uvicorn's middleware reads), and without httptools, uvicorn's guarded
    protocol serves every request itself."""
    try:
        guarded = type("GuardedHttpToolsProtocol", (_httptools_class(),), {"head_timeout": settings.header_timeout})
    except ImportError:
        log.warning("httptools is not installed: serving HTTP with h11 (slower; the header timeout and "
                    "the 16 KiB header limit still apply). Install httptools for the fast parser.")
        return type("GuardedH11Protocol", (_h11_class(),), {"head_timeout": settings.header_timeout})
    if settings.proxy_list:
        return guarded
    from model_manager.server.pollprotocol import PollProtocol

    return type("PollProtocol", (PollProtocol,), {"head_timeout": settings.header_timeout, "handoff_class": guarded})


def raise_open_files_limit() -> tuple[int, int]:
    """Lift the soft limit on open descriptors to the hard one (`DEFAULT_OPEN_FILES` when that is
    unlimited), so many clients do not exhaust the usual 1,024; returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = DEFAULT_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, wanted, exc)
            return soft, soft
        return soft, wanted
    return soft, soft
