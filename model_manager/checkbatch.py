"""Many files checked in one child process (see isolation.py), answered one by one as they are done.

A fork per file is most of the cost of checking a small model (the check itself is a few ms), so the
files of several groups go to one child, which checks them in order and streams each answer back. A
file's time and memory limits are its own, as with one child per file. Before each file the child
sends a start mark with the time, so when the child dies, the parent knows which file it was on:

- past that file's time limit: the file hung; it is reported `too_slow`, once (it is not checked again);
- sooner: a crash. The file is checked again alone in a child of its own, whose answer is the
  file's (a crash there names it; a pass means an earlier file of the batch left the process broken);
- the files after it go to a new child.

So a crash or a hang costs the batch one file's check, and the issue names the file that did it.
"""
from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from model_manager.conversion import ModelInfo
from model_manager.errors import ArtifactError
from model_manager.isolation import (
    _STARTED,
    CHECK_TIMEOUT,
    INFO_TIMEOUT,
    _CheckServer,
    _recv_exact,
    _recv_frame,
    _send_frame,
    _work,
)


@dataclass(frozen=True)
class CheckItem:
    """One file to check: an info.pkl (`kind` "info") or a model file ("model", with its `source`:
    "json", "ubj" or "pkl")."""

    kind: str
    name: str
    data: bytes
    source: str | None = None
    time_limit: int | None = None  # seconds; default INFO_TIMEOUT or CHECK_TIMEOUT

    @property
    def timeout(self) -> int:
        if self.time_limit is not None:
            return self.time_limit
        return INFO_TIMEOUT if self.kind == "info" else CHECK_TIMEOUT


@dataclass(frozen=True)
class _Died:
    """The child died on an item: `error` says how (a crash, or `too_slow`)."""

    error: ArtifactError
    timed_out: bool


def check_files(items: list[CheckItem]) -> Iterator[tuple[int, Any]]:
    """(index, answer) for each item, in order, as each is checked. An answer is the item's
    ArtifactError, or for an info.pkl its JSON-safe dict, for a model (ModelInfo, the JSON text to
    serve, verification) as `isolation.check_model` returns them."""
    rest = list(range(len(items)))
    while rest:
        batch, answered = rest, 0
        for pos, outcome in _run_batch([items[i] for i in batch]):
            answered = pos + 1
            if isinstance(outcome, _Died):
                alone = outcome.timed_out or len(batch) == 1
                yield batch[pos], outcome.error if alone else _answer_alone(items[batch[pos]])
                break
            yield batch[pos], outcome
        rest = batch[answered:]  # after a death, the files not reached go to a new child


def _answer_alone(item: CheckItem) -> Any:
    pos_outcome = next(_run_batch([item]))[1]
    return pos_outcome.error if isinstance(pos_outcome, _Died) else pos_outcome


def _run_batch(items: list[CheckItem]) -> Iterator[tuple[int, Any]]:
    """(position, answer or _Died) of the items, in order, checked in one child; stops after a _Died."""
    header = {"kind": "batch", "name": items[0].name,
              "items": [{"kind": i.kind, "name": i.name, "source": i.source, "size": len(i.data), "timeout": i.timeout}
                        for i in items]}
    data = b"".join(bytes(i.data) for i in items)
    for _attempt in range(2):  # a helper that died (or could not fork) gets replaced once
        server = _CheckServer.get()
        if server is None:  # no helper process can be started: check here rather than not at all
            for pos, item in enumerate(items):
                yield pos, _outcome(item, *_work({"kind": item.kind, "name": item.name, "source": item.source},
                                                 bytes(item.data)))
            return
        done = yield from _stream(server, header, data, items)
        if done is not None:
            return
    for pos, item in enumerate(items):
        yield pos, ArtifactError(f"{item.name} was not checked: no process to check it in could be started (see the "
                                 "server log); it is retried on the next change or refresh", code="check_unavailable")


def _stream(server: _CheckServer, header: dict, data: bytes, items: list[CheckItem]) -> Iterator[tuple[int, Any]]:
    """Yields what one child answers; returns None when no child took the request (then the helper
    is replaced and the caller tries again), else True."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    done, started = 0, None
    try:
        try:
            server.submit(theirs)
        finally:
            theirs.close()
        _send_frame(ours, {**header, "timeout": max(i.timeout for i in items)}, data)
        while done < len(items):
            item = items[done]
            ours.settimeout(item.timeout + 10)  # the child ends itself after the item's limit (SIGALRM); a backstop
            mark = _recv_exact(ours, 9)
            if mark[:1] != _STARTED:
                raise EOFError("bad start mark")
            started = struct.unpack("<d", mark[1:])[0]
            result, payload = _recv_frame(ours)
            started = None
            yield done, _outcome(item, result, bytes(payload))
            done += 1
        return True
    except (EOFError, OSError) as exc:
        if done == 0 and started is None:  # no child ever took the request: not the file's fault
            server.discard()
            return None
        if started is None:  # died between two files: the rest go to a new child
            return True
        item = items[done]
        timed_out = isinstance(exc, TimeoutError) or time.monotonic() - started >= item.timeout
        yield done, _Died(_died(item, timed_out), timed_out)
        return True
    finally:
        ours.close()


def _died(item: CheckItem, timed_out: bool) -> ArtifactError:
    what = "the unpickler" if item.kind == "info" else "the XGBoost loader"
    if timed_out:
        return ArtifactError(f"{item.name}: {what} did not finish with it within {item.timeout}s; the file is corrupt, "
                             "hostile or far too large", code="too_slow")
    return ArtifactError(f"{item.name} crashed {what} (the checking process died): the file is corrupt or was "
                         "cut off; export it again", code="corrupt")


def _outcome(item: CheckItem, result: dict, payload: bytes) -> Any:
    if result["status"] != "ok":
        return ArtifactError(result["message"], code=result["code"])
    if item.kind == "info":
        return json.loads(payload)
    return ModelInfo(**result["info"]), (payload or bytes(item.data)), result.get("verification")
