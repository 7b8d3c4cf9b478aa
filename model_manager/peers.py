"""Read-your-writes across the workers of one server (see workers.py).

Every worker follows the sqlite store on its own every second, which is enough for changes made by
the CLI. A change made through the HTTP API must not take that long: a client that registers a model
and then asks for its symbols may be answered by another worker. So the worker that made a change
asks every other worker to follow the store at once and waits for each to confirm (`Peers.sync`)
before it answers the request that made the change. What to follow may be named: the groups the
primary re-read (`poke(model, groups)`), or the model being registered (`sync(model=...)`,
`poke(model, registered=True)`); the others then install that alone instead of looking at
everything (at 5,000 groups, a listing and 20,000 `stat`s).

A registering worker also leaves, beside its poke, the identities of the blobs it has just written
and hashed (`offer_fresh`): the others read them before installing (`fresh_from_others`), and skip
hashing those blobs again while each file is the one written (`BlobStore.trust`).

The workers talk over Unix datagram sockets in the server's private run directory (see
`workers.shared_dir`): a worker listens
on `peer-INDEX.sock` (a thread of its own); `sync` sends from a socket of its own and collects one
reply per worker. A worker that is not running (being restarted) is skipped: it loads everything
from the store when it starts. A worker that does not answer within SYNC_TIMEOUT (stuck, or killed
while following) is not waited for any longer: it follows the store on its own within a second of
coming back.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path

from model_manager.files import atomic_write
from model_manager.registration import NAME_RE

log = logging.getLogger(__name__)

SYNC_TIMEOUT = 10.0  # seconds a change waits for the other workers to serve it (then they do it on their own)
_SYNC, _DONE, _GROUPS = b"sync", b"done", b"groups"
MAX_NAMED_GROUPS = 200  # a poke names at most this many re-read groups (else: follow everything)


class Peers:
    """This worker's end: `start` listens for the others' requests (running `follow` for each), `sync`
    asks the others to follow now and waits for them."""

    def __init__(self, directory: Path, index: int, count: int, follow: Callable[[], None],
                 follow_groups: Callable[[str, set[str]], None] | None = None,
                 follow_model: Callable[[str], None] | None = None):
        self.directory = Path(directory)
        self.index = index
        self.count = count
        self.follow = follow
        self.follow_groups = follow_groups  # a poke that names the groups re-read (else `follow`)
        self.follow_model = follow_model    # a sync that names the model registered (else `follow`)
        self._sock: socket.socket | None = None
        self._ids = itertools.count()
        self._missed: set[int] = set()  # workers a message could not reach: their queue was full
        self._missed_lock = threading.Lock()

    def _path(self, index: int) -> str:
        return str(self.directory / f"peer-{index}.sock")

    def start(self) -> None:
        path = self._path(self.index)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by this worker's previous life
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(path)
        threading.Thread(target=self._serve, name="mm-peers", daemon=True).start()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path(self.index))
            sock.close()

    def _serve(self) -> None:
        while True:
            sock = self._sock
            if sock is None:
                return
            try:
                message, sender = sock.recvfrom(65536)
            except OSError:
                return  # closed: the worker is stopping
            if not message.startswith((_SYNC, _GROUPS)):
                continue
            try:
                named = _named_groups(message) if self.follow_groups is not None else None
                registered = _named_model(message) if self.follow_model is not None else None
                if named is not None:
                    self.follow_groups(*named)
                elif registered is not None:
                    self.follow_model(registered)
                else:
                    self.follow()
            except Exception:  # the request still gets its answer; the next look may do better
                if self._sock is not None:  # (not this worker stopping meanwhile)
                    log.exception("following a change made by another worker failed")
            if sender and message.startswith(_SYNC):  # a `poke` has no address to answer to
                with contextlib.suppress(OSError):
                    sock.sendto(_DONE + message[len(_SYNC):].partition(b"/")[0], sender)

    def poke(self, model: str | None = None, groups: set[str] | None = None, *, registered: bool = False) -> None:
        """Have every other running worker follow the store now, without waiting for them (after
        the primary installed what its watcher found: no request waits on it). Naming the `model`
        and the `groups` re-read lets them install those without looking at the rest of the directory
        (at 5,000 groups that look is a listing and 20,000 `stat`s); they still look every second.
        `registered`: the `model` being registered has its versions written (as `sync(model=...)`)."""
        message = _SYNC
        if model is not None and registered:
            message = _SYNC + _naming(model)
        elif model is not None and groups and len(groups) <= MAX_NAMED_GROUPS:
            message = _GROUPS + json.dumps({"model": model, "groups": sorted(groups)}).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            for index in range(self.count):
                if index != self.index:
                    self._send(sock, message, index)

    def offer_fresh(self, model: str, identities: dict[str, tuple[int, int, int]]) -> None:
        """Leave the identities of the blobs this worker has just written for `model`'s registration
        (`BlobStore.fresh`) for the others, who read them next (`fresh_from_others`). Best effort: a
        worker that finds none hashes what it reads."""
        if self.count < 2 or not identities:
            return
        with contextlib.suppress(OSError, ValueError):
            atomic_write(self._fresh_path(self.index, model), json.dumps(identities).encode(), durable=False)

    def fresh_from_others(self, model: str) -> dict:
        """What the other workers offered for `model` (`offer_fresh`): {blob digest: identity}."""
        found: dict = {}
        for index in range(self.count):
            if index == self.index:
                continue
            try:
                offered = json.loads(self._fresh_path(index, model).read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(offered, dict):
                found.update(offered)
        return found

    def withdraw_fresh(self, model: str) -> None:
        """Remove this worker's offer for `model` (the others have installed the registration)."""
        with contextlib.suppress(OSError):
            self._fresh_path(self.index, model).unlink()

    def _fresh_path(self, index: int, model: str) -> Path:
        return self.directory / f"fresh-{index}-{sha256(model.encode()).hexdigest()[:16]}.json"

    def retry_missed(self) -> None:
        """Ask the workers a poke or a sync could not reach (a full queue: busy following) to follow
        everything, now that they may have room. Their own look each second only sees new versions;
        a re-read that changed a group's status and made none would otherwise stay unseen there."""
        with self._missed_lock:
            if not self._missed:
                return
            missed, self._missed = self._missed, set()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            for index in missed:
                self._send(sock, _SYNC, index)

    def _send(self, sock: socket.socket, message: bytes, index: int) -> bool:
        """Send without waiting; a worker whose queue is full is remembered for `retry_missed`. One that
        is not running is not: it reads everything from the store when it starts."""
        try:
            sock.sendto(message, socket.MSG_DONTWAIT, self._path(index))
            return True
        except BlockingIOError:
            with self._missed_lock:
                self._missed.add(index)
        except OSError:
            pass
        return False

    def sync(self, timeout: float = SYNC_TIMEOUT, model: str | None = None) -> int:
        """Have every other running worker follow the store now; returns how many confirmed. Blocking:
        call it from a worker thread, after the change is committed. `model`: the change is that
        model's registration, and only it need be served (at 5,000 groups, following everything is
        a listing and 20,000 `stat`s of the new directory that the answer would wait for)."""
        if self.count < 2:
            return 0
        token = f":{os.getpid()}:{next(self._ids)}".encode()
        request = _SYNC + token + (_naming(model) if model is not None else b"")
        reply_path = str(self.directory / f"reply-{os.getpid()}-{threading.get_native_id()}.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(reply_path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(reply_path)
            try:
                # a worker not running now, or stuck with a full queue, is not waited for (see `_send`)
                waiting = sum(self._send(sock, request, index) for index in range(self.count) if index != self.index)
                return self._collect(sock, token, waiting, timeout)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(reply_path)

    @staticmethod
    def _collect(sock: socket.socket, token: bytes, waiting: int, timeout: float) -> int:
        confirmed, deadline = 0, time.monotonic() + timeout
        while confirmed < waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("%d of %d other workers did not confirm a change within %.0f s; they serve it "
                            "when they next look", waiting - confirmed, waiting, timeout)
                break
            sock.settimeout(left)
            try:
                message = sock.recv(64)
            except TimeoutError:
                continue
            if message == _DONE + token:
                confirmed += 1
        return confirmed


def _naming(model: str) -> bytes:
    """What a `sync` or `poke` adds to name the model being registered (`_named_model` reads it)."""
    return b"/" + model.encode()


def _named_model(message: bytes) -> str | None:
    """The model a `sync` names (`sync:PID:N/NAME`); None for any other message, or a name that is
    not a valid model name."""
    if not message.startswith(_SYNC):
        return None
    name = message[len(_SYNC):].partition(b"/")[2].decode("ascii", "replace")
    return name if NAME_RE.match(name) else None


def _named_groups(message: bytes) -> tuple[str, set[str]] | None:
    """(model, groups) of a poke that names them; None for any other message (or a malformed one)."""
    if not message.startswith(_GROUPS):
        return None
    try:
        named = json.loads(message[len(_GROUPS):])
        model, groups = named["model"], named["groups"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(model, str) or not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        return None
    return model, set(groups)
