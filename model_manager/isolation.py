"""Untrusted bytes, decoded in a throwaway process.

XGBoost's C++ loaders can crash the whole process on a corrupt file (a segfault, seen with fuzzed
JSON models and fuzzed Booster bytes inside pickles), and a tiny pickle can describe a value that
takes hours to build or hash. So model files and info.pkl from a model directory are decoded only in
a short-lived child forked from a small helper process (`check_model`, `check_info`; many files in one
child: checkbatch.py), with a time
limit and a memory limit (MODEL_MANAGER_CHECK_MEMORY_MB, on top of what the child starts with): a
crash, a hang or a memory bomb costs that child and becomes an issue on the group, never the server.
"""
from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from model_manager.conversion import ModelInfo
from model_manager.errors import ArtifactError, UsageError
from model_manager.settings import Settings

log = logging.getLogger(__name__)


# -- untrusted bytes, in a child process --------------------------------------------------------
CHECK_TIMEOUT = 120  # seconds one model may take to load, convert and predict
INFO_TIMEOUT = 30    # seconds one info.pkl may take to unpickle


def check_model(data: bytes, source: str, name: str, *, verify: bool = False,
                timeout: int = CHECK_TIMEOUT) -> tuple[ModelInfo, bytes, str | None]:
    """Load model bytes (`source` "json", "ubj" or "pkl") the way a trading engine will, in a child process.

    Returns (ModelInfo, the XGBoost JSON text to serve, verification). The child loads the file,
    converts a pickle or UBJSON to JSON, loads that JSON back and predicts a few rows with it, so a model we
    serve is one XGBoost can read and evaluate; with `verify`, it also proves the JSON predicts
    bit-identically to the pickle (the verification is its explanation; a mismatch is an
    ArtifactError). ArtifactError when the file is unusable, including when it crashes or hangs
    the loader.
    """
    header = {"kind": "model", "source": source, "name": name, "verify": verify}
    result, payload = _run_isolated(header, data, timeout, "the XGBoost loader")
    return ModelInfo(**result["info"]), (payload or bytes(data)), result.get("verification")


def _work(header: dict, data: bytes) -> tuple[dict, bytes]:
    """`checkwork.work`, imported only where a check runs (it needs numpy and the unpickler, which a
    server process never uses itself)."""
    from model_manager.checkwork import work

    return work(header, data)


_memory_mb: int | None = None  # set by start_checker; else read from the environment when first needed


def start_checker(memory_mb: int | None = None, *, wake: bool = True) -> None:
    """Start the model check process ahead of need, with `memory_mb` as the limit (see
    `set_check_memory`; default: MODEL_MANAGER_CHECK_MEMORY_MB). It imports xgboost (about a second
    of CPU) when woken, or at its first check: `wake=False` starts it without that, for a server
    whose workers are about to load (the first of them to finish wakes it)."""
    if memory_mb is not None:
        set_check_memory(memory_mb)
    server = _CheckServer.get()
    if server is not None and wake:
        server.wake()


def stop_checker() -> None:
    """End the model check process, if one runs (a process that forks servers must not keep it)."""
    with _CheckServer._lock:
        old, _CheckServer._instance = _CheckServer._instance, None
    if old is not None:
        old.close()


def set_check_memory(memory_mb: int) -> None:
    """What one check may allocate from now on, in MiB; a helper running with another limit is replaced."""
    global _memory_mb
    if memory_mb != _memory_mb:
        _memory_mb = memory_mb
        stop_checker()


def _check_memory_mb() -> int:
    if _memory_mb is not None:
        return _memory_mb
    try:
        return Settings.from_env().check_memory_mb
    except UsageError as exc:  # the commands report a bad setting themselves; checks stay limited
        log.warning("%s; checking with the default memory limit", exc)
        return Settings.check_memory_mb


def check_info(data: bytes, name: str, *, timeout: int = INFO_TIMEOUT) -> dict:
    """Unpickle an info.pkl (allow-list only) in a child process and return it JSON-safe.

    A pickle can be tiny and still describe an enormous or slow-to-hash value (shared references
    nested many levels deep); in a child, that costs a bounded wait, never the server.
    """
    _result, payload = _run_isolated({"kind": "info", "name": name}, data, timeout, "the unpickler")
    return json.loads(payload)


def compare_predictions(model_a: bytes, model_b: bytes, dim: int, name: str, *,
                        timeout: int = CHECK_TIMEOUT) -> dict:
    """Predictions of two XGBoost JSON models on the same fixed inputs, compared in a child process
    (see `versiondiff.compare_work`). ArtifactError when either cannot be loaded or evaluated."""
    data = struct.pack("<Q", len(model_a)) + bytes(model_a) + bytes(model_b)
    result, _payload = _run_isolated({"kind": "compare", "name": name, "dim": dim}, data, timeout, "the XGBoost loader")
    return result["comparison"]


def _run_isolated(header: dict, data: bytes, timeout: int, what: str) -> tuple[dict, bytes]:
    name = header["name"]
    for _attempt in range(2):  # a helper that died (or could not fork) gets replaced once
        server = _CheckServer.get()
        if server is None:  # no helper process can be started: do it here rather than not at all
            result, payload = _work(header, bytes(data))
            return _unpack(result), payload
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        started, running = time.monotonic(), False
        try:
            try:
                server.submit(theirs)
            finally:
                theirs.close()
            ours.settimeout(timeout + 10)  # the child ends itself after `timeout` (SIGALRM); this is a backstop
            _send_frame(ours, {**header, "timeout": timeout}, data)
            running = _recv_exact(ours, 1) == _STARTED
            result, payload = _recv_frame(ours)
            return _unpack(result), bytes(payload)
        except (EOFError, OSError) as exc:
            if not running:  # no child ever took the request: not the file's fault
                server.discard()
                continue
            if isinstance(exc, TimeoutError) or time.monotonic() - started >= timeout:
                raise ArtifactError(f"{name}: {what} did not finish with it within {timeout}s; the file is corrupt, "
                                    "hostile or far too large", code="too_slow") from None
            raise ArtifactError(f"{name} crashed {what} (the checking process died): the file is corrupt or was "
                                "cut off; export it again", code="corrupt") from None
        finally:
            ours.close()
    raise ArtifactError(f"{name} was not checked: no process to check it in could be started (see the server log); "
                        "it is retried on the next change or refresh", code="check_unavailable")


def _unpack(result: dict) -> dict:
    if result["status"] != "ok":
        raise ArtifactError(result["message"], code=result["code"])
    return result


def _send_frame(sock: socket.socket, header: dict, payload: bytes = b"") -> None:
    head = json.dumps({**header, "size": len(payload)}).encode()
    sock.sendall(struct.pack("<Q", len(head)) + head)
    sock.sendall(payload)


_STARTED = b"+"  # a child's first byte: it took the request (so a crash after it is the file's doing)


def _recv_exact(sock: socket.socket, size: int) -> bytearray:
    """Exactly `size` bytes, received into one buffer of that size (a model file of hundreds of MB
    is held once, not once per growth step)."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = sock.recv_into(view[got:], min(size - got, 1 << 20))
        if not n:
            raise EOFError("peer closed the connection")
        got += n
    return buf


def _recv_header(sock: socket.socket) -> dict:
    (size,) = struct.unpack("<Q", _recv_exact(sock, 8))
    if size > 1 << 20:
        raise EOFError("frame header too large")
    return json.loads(_recv_exact(sock, size))


def _recv_frame(sock: socket.socket) -> tuple[dict, bytearray]:
    header = _recv_header(sock)
    return header, _recv_exact(sock, int(header["size"]))


# A check child lives for one batch: giving freed pages back to the kernel (jemalloc's default, after
# 10 s) only makes it fault them in again for the next model. Kept, they are reused: 10-15 % fewer
# page faults and 2-9 % less CPU checking large models (bench/README.md, item 46).
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"


@functools.cache
def check_allocator() -> str | None:
    """The malloc the check process runs with: jemalloc when the system has it (Debian/Ubuntu:
    libjemalloc2, which ./setup.sh installs where it can), else None (glibc's). XGBoost builds a
    model's JSON document from many small allocations as it loads it; with jemalloc a check takes
    about 12-25 % less CPU (bench/README.md, item 38). Only the check process uses it: its children
    are short-lived, so how an allocator keeps memory does not matter there."""
    import ctypes.util

    name = ctypes.util.find_library("jemalloc") if sys.platform.startswith("linux") else None
    return name if name and name.startswith("libjemalloc.so") else None


class _CheckServer:
    """A helper process that imports xgboost once, then forks one child per check.

    Forking from a small single-threaded helper (never from a server full of threads) is cheap and
    safe, and no main module is re-imported. Requests arrive as socket ends passed over a control
    socket; the helper exits when that socket closes (its parent is gone).

    Server workers share one helper: the supervisor starts it before forking them, and the first
    worker done with its first load wakes it to import xgboost and pandas (about two CPU-seconds, so
    not while the workers load). So a worker's first check does not wait for a helper of its own,
    and the workers keep one copy of xgboost and pandas between them, not one each. A request on the
    SOCK_SEQPACKET control socket is one message, so workers never interleave. The helper is not a
    worker's child: a worker tells whether it still runs from a pidfd, and one that finds it gone
    (or failing) starts a helper of its own.
    """

    _instance: _CheckServer | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        allocator = check_allocator()
        if allocator is not None:
            env["LD_PRELOAD"] = " ".join(p for p in (os.environ.get("LD_PRELOAD"), allocator) if p)
            env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
        self.memory_mb = _check_memory_mb()
        code = f"from model_manager.isolation import _serve_checks; _serve_checks({theirs.fileno()}, {self.memory_mb})"
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=[theirs.fileno()], env=env,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        finally:
            theirs.close()
        self.owner = os.getpid()
        try:
            self.pidfd: int | None = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):  # no pidfd (Linux before 5.3): only the owner can tell
            self.pidfd = None
        self.send_lock = threading.Lock()
        self.close_lock = threading.Lock()
        atexit.register(self.close)

    def alive(self) -> bool:
        if os.getpid() == self.owner:
            return self.proc.poll() is None
        # a forked worker: the helper is its parent's child, so only its pidfd can say (readable = exited)
        return self.pidfd is not None and not select.select([self.pidfd], [], [], 0)[0]

    def close(self) -> None:
        """Closing the control socket ends the helper (once every process sharing it has closed it);
        its owner waits for it so no process is left behind. Several checks that found the helper
        failing may each discard it at once: the pidfd is closed once, never a number reused since."""
        with self.close_lock:
            self.control.close()
            pidfd, self.pidfd = self.pidfd, None
            if pidfd is not None:
                os.close(pidfd)
        if os.getpid() != self.owner:
            atexit.unregister(self.close)
            return
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        atexit.unregister(self.close)

    @classmethod
    def get(cls) -> _CheckServer | None:
        with cls._lock:
            server = cls._instance
            if server is None or not server.alive():
                if server is not None:
                    server.close()
                try:
                    server = cls._instance = cls()
                except OSError as exc:
                    log.warning("cannot start the model check process (%s); checking models in this process", exc)
                    return None
            return server

    def discard(self) -> None:
        """Forget this helper (it failed to take a request); the next `get` starts a new one."""
        log.warning("the model check process failed to take a request; starting a new one")
        with self._lock:
            if _CheckServer._instance is self:
                _CheckServer._instance = None
        self.close()

    def submit(self, sock: socket.socket) -> None:
        with self.send_lock:
            socket.send_fds(self.control, [b"c"], [sock.fileno()])

    def wake(self) -> None:
        """Have the helper import what checks need now, not at its first check."""
        try:
            with self.send_lock:
                self.control.send(b"w")
        except OSError:  # gone: the next check starts another
            pass


def _serve_checks(fd: int, memory_mb: int = 4096) -> None:
    """The helper's main loop (see `_CheckServer`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl+C is for the parent; we go when it goes
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    control = socket.socket(fileno=fd)
    loaded = False
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(control, 16, 4)
        except OSError:
            os._exit(0)
        if not msg:
            # the parent closed the control socket. Exit at once: tearing down the interpreter with
            # xgboost and pandas loaded takes seconds on a busy machine, and the parent waits for us
            os._exit(0)
        if not loaded:  # the first message (a wake-up or a check): children start with what they need loaded
            import pandas  # noqa: F401
            import xgboost  # noqa: F401

            import model_manager.checkwork  # noqa: F401
            import model_manager.jsonsafe  # noqa: F401
            loaded = True
        for extra in fds[1:]:
            os.close(extra)
        if not fds:
            continue
        try:
            pid = os.fork()
        except OSError:  # out of processes: the parent sees no child start, and retries
            os.close(fds[0])
            continue
        if pid == 0:  # the child: one check, then exit without cleanup
            status = 1
            try:
                control.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                _limit_memory(memory_mb)
                _answer(socket.socket(fileno=fds[0]), memory_mb)
                status = 0
            finally:
                os._exit(status)
        os.close(fds[0])


def _limit_memory(memory_mb: int) -> None:
    """Cap this child's address space at what it has now plus `memory_mb` MiB: an allocation past
    it fails (MemoryError in Python, std::bad_alloc in XGBoost) instead of growing without end."""
    import resource

    with open("/proc/self/statm") as fh:
        now = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = now + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def _answer(sock: socket.socket, memory_mb: int) -> None:
    header = _recv_header(sock)
    try:
        data = _recv_exact(sock, int(header["size"]))
    except MemoryError:  # the file alone is more than a check may hold: read it off the socket, refuse it
        data, left = None, int(header["size"])
        while left > 0:
            chunk = sock.recv(min(left, 1 << 20))
            if not chunk:
                raise EOFError("peer closed the connection") from None
            left -= len(chunk)
    if header["kind"] == "batch":
        _answer_batch(sock, header, data, memory_mb)
        return
    sock.sendall(_STARTED)
    signal.alarm(max(1, int(header.get("timeout") or CHECK_TIMEOUT)))  # a hang, even in C code, ends here
    try:
        if data is None:
            raise MemoryError
        result, payload = _work(header, data)
    except MemoryError:
        result, payload = _out_of_memory(header["name"], memory_mb), b""
    del data
    _send_frame(sock, result, payload)
    sock.close()


def _answer_batch(sock: socket.socket, header: dict, data: bytearray | None, memory_mb: int) -> None:
    """Check the files of a batch (see checkbatch.py) one after the other. Before each: its own time
    limit and memory limit, and a start mark with the time (CLOCK_MONOTONIC, the parent's clock too),
    so when this process dies the parent knows which file it was on and for how long."""
    offset = 0
    for item in header["items"]:
        size = int(item["size"])
        piece = memoryview(data)[offset:offset + size] if data is not None else None
        offset += size
        _limit_memory(memory_mb)
        sock.sendall(_STARTED + struct.pack("<d", time.monotonic()))
        signal.alarm(max(1, int(item["timeout"])))
        try:
            if piece is None:
                raise MemoryError
            result, payload = _work(item, bytes(piece))
        except MemoryError:
            result, payload = _out_of_memory(item["name"], memory_mb), b""
        signal.alarm(0)
        _send_frame(sock, result, payload)
    sock.close()


def _out_of_memory(name: str, memory_mb: int) -> dict:
    return {"status": "error", "code": "too_large",
            "message": f"{name} needs more than {memory_mb} MiB of memory to decode (MODEL_MANAGER_CHECK_MEMORY_MB); "
                       "the file is hostile or far too large"}
