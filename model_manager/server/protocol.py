"""The HTTP connection rules uvicorn lacks: a request-head timeout and a request-head size limit.

uvicorn (0.54) waits forever for a request head and, with httptools, accepts heads of any size: a few
hundred idle or trickling connections use up the descriptors and `/healthz` stops answering. So
`serve` runs uvicorn with protocol classes of its own (`http_protocol(settings)`: payload polls are
answered by `pollprotocol.PollProtocol`, everything else by a subclass of uvicorn's) that

- closes a connection that has not sent a complete request head within `header_timeout` seconds of
  connecting, or of the first byte of its next request (an idle keep-alive connection between
  requests is uvicorn's `timeout_keep_alive`);
- answers 431 and closes when a request head grows past `headguard.MAX_HEAD_BYTES`, without parsing it.

A request whose head has arrived is never timed out, so long polls and event streams are not
affected. With httptools (the default) the parser's callbacks say when a head is complete; without
it the h11 protocol is used and its connection state says the same.

`raise_open_files_limit()` lifts the soft descriptor limit to the hard one at start.
"""
from __future__ import annotations

import logging
import resource
from typing import Any

from model_manager.server.headguard import HeadGuard
from model_manager.settings import Settings

log = logging.getLogger("model_manager.serve")

DEFAULT_OPEN_FILES = 65536  # the soft limit asked for when the hard limit is unlimited


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
