"""The HTTP protocol a connection starts with: payload polls answered without uvicorn, anything else
handed to uvicorn for good.

A trading engine polls its payload again and again on one keep-alive connection; most answers are
a 304. uvicorn spends more on each such request (an ASGI scope, per-message state, a keep-alive
timer armed and cancelled) than the answer itself costs, so a connection starts with `PollProtocol`:

- A read that is exactly one complete request head (nothing before it left over, nothing after it)
  is parsed with httptools; when it is a plain keep-alive HTTP/1.1 GET without a body or query and
  the app's `PayloadFastPath.direct` takes it (a payload poll with a known token), the answer is
  written here — the same bytes uvicorn would send for the route's answer.
- Anything else — a request the fast path declines (an error, a token due for its recheck in sqlite,
  a long poll, any other route), a body, pipelined requests, a parse error, an upgrade — and the
  connection is handed to uvicorn's protocol (`protocol.py`'s guarded subclass) together with every
  byte not yet answered. uvicorn hands it back once its response is complete and nothing of the next
  request has arrived (`take_back`); an upgraded connection stays with uvicorn's WebSocket protocol.

A gzip body, the whole of one immutable blob file, goes out with sendfile(2) as far as the socket
takes it at once (the rest through the transport): one copy less per answer, as nginx's gzip_static.

The request-head timeout and the 16 KiB head limit are the same as uvicorn's protocol has here
(`headguard.HeadGuard`), and an idle keep-alive connection is closed after uvicorn's `timeout_keep_alive`; both
by the once-a-second sweep, not a timer per request. While the transport's write buffer is full the
connection stops reading, and takes up what came meanwhile when it drains.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE
from uvicorn.protocols.utils import get_remote_addr

from model_manager.server.headguard import HeadGuard

HEAD_END = b"\r\n\r\n"
HEADS_KEPT = 4096  # encoded response heads kept (see `PollProtocol._head`)
_HEADS: dict[int, tuple[Any, Any, int, bytes]] = {}


class PollProtocol(HeadGuard, asyncio.Protocol):
    handoff_class: type  # uvicorn's (guarded) protocol: set by `protocol.http_protocol`

    def __init__(self, config, server_state, app_state: dict[str, Any], _loop=None) -> None:
        self._args = {"config": config, "server_state": server_state, "app_state": app_state, "_loop": _loop}
        if not config.loaded:
            config.load()
        self.loop = _loop or asyncio.get_event_loop()
        self.server_state = server_state
        self.fast = getattr(config.loaded_app, "fast_path", None)  # None behind uvicorn's proxy-headers middleware
        self.keep_alive = config.timeout_keep_alive
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self._socket: int | None = None  # its descriptor, for sendfile(2)
        self.client: tuple[str, int] | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self._complete = False      # the parser saw the whole request: a keep-alive HTTP/1.1 GET
        self._partial = b""         # a request head not complete yet
        self._stash = b""           # what arrived while writing was paused
        self._paused = False
        self._idle_since: float | None = None
        self._uvicorn: Any = None          # uvicorn's protocol, once a request was handed to it

    # -- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.client = get_remote_addr(transport)
        sock = transport.get_extra_info("socket")
        plain = transport.get_extra_info("sslcontext") is None and hasattr(os, "sendfile")
        self._socket = sock.fileno() if sock is not None and plain else None
        self.server_state.connections.add(self)
        self._guard_start()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        self._guard_end()

    def eof_received(self) -> None:
        return None  # the transport closes itself

    def pause_writing(self) -> None:
        self._paused = True
        self._idle_since = None  # not idle: the client is behind on reading what it asked for
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self.transport.is_closing():
            return
        self._idle_since = self.loop.time()
        self.transport.resume_reading()
        if self._stash:
            data, self._stash = self._stash, b""
            self.data_received(data)

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: nothing of this connection is ever in flight, so close it."""
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._paused:
            self._stash += data
            return
        self._idle_since = None
        if not self._guard_data(data):  # the head grew past 16 KiB: answered 431 and closed
            return
        buffer = self._partial + data if self._partial else data
        if buffer[:1] in (b"\r", b"\n"):  # blank lines before a request are ignored (RFC 9112 §2.2)
            buffer = buffer.lstrip(b"\r\n")
            if not buffer:
                self._partial = b""
                return
        end = buffer.find(HEAD_END)
        if end < 0:
            if b"\n\n" in buffer or b"\n\r\n" in buffer:  # a head ended by bare LFs: uvicorn's parser answers 400
                self._partial = b""
                self._hand_off(buffer)
            else:
                self._partial = buffer
            return
        self._partial = b""
        if end + 4 != len(buffer) or not self._answered(buffer):
            self._hand_off(buffer)

    # -- httptools callbacks -----------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_message_complete(self) -> None:
        # read here: once the parser is past the message, llhttp has reset what keep-alive depends on
        parser = self.parser
        self._complete = parser.get_method() == b"GET" and parser.get_http_version() == "1.1" \
            and parser.should_keep_alive()

    # -- answering, handing off --------------------------------------------------------------------

    def _answered(self, request: bytes) -> bool:
        """Parse `request` (one complete head) and answer it when the fast path takes it."""
        if self.fast is None:
            return False
        self.url, self.headers, self._complete = b"", [], False  # (one request per feed: no on_message_begin)
        try:
            self.parser.feed_data(request)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return False
        if not self._complete or b"?" in self.url or b"%" in self.url:
            return False
        answer = self.fast.direct({"type": "http", "method": "GET", "path": self.url.decode("latin-1"),
                                   "query_string": b"", "headers": self.headers, "client": self.client})
        if answer is None:
            return False
        status, headers, body, file = answer
        self.transport.write(self._head(status, headers))
        sent = self._send_file(file, len(body)) if file is not None else 0
        if sent < len(body):
            self.transport.write(body[sent:] if sent else body)
        self.server_state.total_requests += 1
        self._head_complete()
        self._next_head()
        if not self._paused:  # (a write that filled the buffer paused us: idle only once it drains)
            self._idle_since = self.loop.time()
        return True

    def _head(self, status: int, headers) -> bytes:
        """The encoded response head. The fast path gives every poll of one version the same header
        tuple, and uvicorn replaces `default_headers` (the Date) once a second, so a head is encoded
        once per version and second and kept in `_HEADS` (by the tuple's id, the tuple held there)."""
        defaults = self.server_state.default_headers
        kept = _HEADS.get(id(headers))
        if kept is not None and kept[0] is headers and kept[1] is defaults and kept[2] == status:
            return kept[3]
        parts = [STATUS_LINE[status]]
        for name, value in (*defaults, *headers):
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        if len(_HEADS) >= HEADS_KEPT:
            _HEADS.clear()
        _HEADS[id(headers)] = (headers, defaults, status, head)
        return head

    def _send_file(self, path: str, count: int) -> int:
        """Send the first `count` bytes of the file at `path` with sendfile(2) — straight from the page
        cache, as nginx's gzip_static does, instead of copying them through this process — as far as
        the socket takes them now; returns how many went (the caller writes the rest). Only when
        nothing of this connection is waiting in the transport's buffer, so the order holds."""
        if self._socket is None or self.transport.get_write_buffer_size():
            return 0
        try:
            source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:  # swept since it was mapped: the mapping still has the bytes
            return 0
        sent = 0
        try:
            while sent < count:
                done = os.sendfile(self._socket, source, sent, count - sent)
                if done == 0:
                    break
                sent += done
        except OSError:  # the socket is full (EAGAIN), or the peer is gone: the transport writes the rest, or finds out
            pass
        finally:
            os.close(source)
        return sent

    def _hand_off(self, data: bytes) -> None:
        """uvicorn's protocol serves this connection from `data` on, until it hands it back (`take_back`)."""
        protocol = self._uvicorn
        if protocol is None:
            protocol = self._uvicorn = self.handoff_class(**self._args)
            protocol.hand_back_to = self if self.fast is not None else None
        since = self._head_since
        self.server_state.connections.discard(self)
        self._guard_end()
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if since is not None:
            protocol._head_since = since  # the head's time limit runs from its first byte, as before
        protocol.data_received(data)

    def take_back(self) -> None:
        """uvicorn's protocol answered what was handed to it and nothing of the next request has
        arrived: serve the connection here again, with a fresh parser (the old one saw that request)."""
        self.parser = httptools.HttpRequestParser(self)
        self._paused = False
        self.server_state.connections.add(self)
        self.transport.set_protocol(self)
        self._guard_start()
        self._idle_since = self.loop.time()

    def _head_timed_out(self) -> None:
        self._idle_since = None
        super()._head_timed_out()

    def _overdue(self, now: float) -> bool:
        return super()._overdue(now) or (self._idle_since is not None and now - self._idle_since >= self.keep_alive)
