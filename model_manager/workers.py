"""Several server processes on one port (`serve --workers N`, one per core by default).

One Python process answers payload polls on one core; a second core doubles what the machine can
answer. `supervise` forks N workers from the `serve` process. Each one is a whole server — the API,
the UI, long polls, event streams — listening on its own `SO_REUSEPORT` socket bound to the same
address, so the kernel spreads connections across them. The supervisor only starts them, forwards a
stop signal, and restarts a worker that dies.

The workers agree through the sqlite store, which is the single source of truth for registrations,
versions, pins, holds, keys, tokens, revocations, the fleet and login throttling (each worker follows
it within about a second: see `service.ModelManager`); a change made through the HTTP API is
served by every worker before the request that made it is answered (`peers.Peers`). Worker 0, the *primary*, is the only one that
watches the model directories and checks new files; the others serve what it recorded (see
`Registry.follow_live`). Metrics are summed across workers at scrape time (`metrics.SharedMetrics`).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_manager.errors import UsageError

log = logging.getLogger("model_manager.workers")

RESTART_DELAY = 1.0        # seconds before a dead worker is started again (doubling while it keeps dying)
MAX_RESTART_DELAY = 30.0
FAST_DEATHS_ALLOWED = 5    # a worker that dies this many times in a row within STABLE_SECONDS of its start
STABLE_SECONDS = 10.0      # stops the whole server (exit 1), so pm2 or the operator sees it
PRIMARY_WAIT_SECONDS = 900  # how long another worker waits for the primary's first load (then it serves what is recorded)


@dataclass(frozen=True)
class WorkerRole:
    """Which worker of how many this process is, and what the workers share from their supervisor."""

    index: int = 0
    count: int = 1
    setup_code: str | None = None       # the one-time setup code the banner printed (every worker accepts it)
    primary_ready: Any = None           # a multiprocessing Event the primary sets after its first load
    shared_dir: Path | None = None      # where workers leave their metrics and meet (peers.py)

    @property
    def primary(self) -> bool:
        """The worker that watches the directories (the only one when there is one)."""
        return self.index == 0

    @property
    def shared(self) -> bool:
        return self.count > 1

    def wait_for_primary(self) -> None:
        """Wait for the primary's first load (a secondary worker, for the models it could not restore
        at once: it serves them from the parse records the primary writes as it checks their files,
        instead of checking any file a second time; see `ModelManager._first_load`)."""
        if self.shared and not self.primary and self.primary_ready is not None:
            if not self.primary_ready.wait(PRIMARY_WAIT_SECONDS):
                log.warning("worker 0 has not finished loading after %d s; serving what it has recorded so far", PRIMARY_WAIT_SECONDS)

    def primary_loaded(self) -> None:
        if self.primary and self.primary_ready is not None:
            self.primary_ready.set()


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A socket bound to host:port (not yet listening: the server listens on it). A taken port, an
    unknown host or a refused address is one clear UsageError, before anything starts. `reuse_port`
    (a worker's socket) shares the address with the other workers' sockets."""
    host = host.strip("[]")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise UsageError(f"cannot listen on {host!r} ({exc.strerror}): check --host or MODEL_MANAGER_HTTP_HOST") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart right after a stop (TIME_WAIT)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is already in use: stop the other server or choose another --port") from None
        raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}): check --host and --port") from None
    return sock


def probe_port(host: str, port: int) -> None:
    """Check that nothing listens on host:port. The probe binds without SO_REUSEPORT, so it fails
    against another server's reuse-port sockets too: a second `serve` on a taken port is a clear
    error, never a silent share of the traffic."""
    bind_socket(host, port).close()


def shared_dir() -> Path:
    """A new private directory for what the workers of one `serve` exchange (their metrics, the
    sockets they sync through). It is in the temporary directory (or /tmp when that path is long), not
    the data dir, because a Unix socket's path may not be longer than about 100 bytes. The supervisor
    removes it when it stops; what a killed supervisor left is removed by the next one."""
    base = Path(tempfile.gettempdir())
    if len(str(base)) > 40:
        base = Path("/tmp")
    for stale in base.glob("model-manager-*-*"):
        pid = stale.name.split("-")[2]
        try:
            if pid.isdigit() and not Path(f"/proc/{pid}").exists() and stale.owner() == _user():
                shutil.rmtree(stale, ignore_errors=True)
        except (OSError, KeyError):  # gone meanwhile, or an owner without a name
            continue
    return Path(tempfile.mkdtemp(prefix=f"model-manager-{os.getpid()}-", dir=base))


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def worker_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """The workers' sockets, bound at once after checking that nothing listens on the port (so a
    second server started at the same moment cannot slip in between and share the port)."""
    probe_port(host, port)
    return [bind_socket(host, port, reuse_port=True) for _ in range(count)]


def supervise(sockets: list[socket.socket], host: str, port: int,
              run_worker: Callable[[WorkerRole, socket.socket], int], role: WorkerRole) -> tuple[int, int | None]:
    """Run a worker per socket of `worker_sockets` (forked; `run_worker(role, sock)` returns its exit
    status) until a SIGINT, SIGTERM or SIGHUP, which is passed on to them; a worker that dies is
    started again on a new socket. Returns the server's exit status (0, or 1 when a worker kept dying
    at start) and the stop signal."""
    count = len(sockets)
    ready = multiprocessing.get_context("fork").Event()
    roles = [WorkerRole(i, count, role.setup_code, ready, role.shared_dir) for i in range(count)]
    stopping: list[int] = []
    children: dict[int, int] = {}  # pid -> worker index

    def stop(signum: int, _frame: object = None) -> None:
        stopping.append(signum)
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    started: dict[int, float] = {}
    deaths = [0] * count

    def start(index: int, sock: socket.socket | None = None) -> None:
        children[_fork(roles[index], sock or bind_socket(host, port, reuse_port=True), run_worker)] = index
        started[index] = time.monotonic()

    try:
        for index, sock in enumerate(sockets):
            start(index, sock)
        while children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            index = children.pop(pid, None)
            if index is None or stopping:
                continue
            code = os.waitstatus_to_exitcode(status)
            deaths[index] = deaths[index] + 1 if time.monotonic() - started[index] < STABLE_SECONDS else 1
            if deaths[index] >= FAST_DEATHS_ALLOWED:
                log.error("worker %d keeps dying at start (%d times, last exit status %s); stopping the server",
                          index, deaths[index], code)
                stop(signal.SIGTERM)
                _reap(children)
                return 1, None
            delay = min(RESTART_DELAY * 2 ** (deaths[index] - 1), MAX_RESTART_DELAY)
            log.error("worker %d (pid %d) exited with status %s; starting it again in %.0f s", index, pid, code, delay)
            deadline = time.monotonic() + delay
            while not stopping and time.monotonic() < deadline:
                time.sleep(0.1)
            if not stopping:
                start(index)
        return 0, stopping[0] if stopping else None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if role.shared_dir is not None:
            shutil.rmtree(role.shared_dir, ignore_errors=True)


def _reap(children: dict[int, int]) -> None:
    while children:
        try:
            pid, _status = os.waitpid(-1, 0)
        except ChildProcessError:
            return
        children.pop(pid, None)


def _fork(role: WorkerRole, sock: socket.socket, run_worker: Callable[[WorkerRole, socket.socket], int]) -> int:
    pid = os.fork()
    if pid:
        sock.close()
        return pid
    status = 1
    try:  # the worker: its own signal handlers (uvicorn's), its socket, then exit without the parent's cleanup
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        _end_with_parent()
        status = run_worker(role, sock)
    except BaseException:  # noqa: BLE001 - anything escaping a worker is logged, then the worker exits
        log.exception("worker %d failed", role.index)
    finally:
        logging.shutdown()
        os._exit(status)
    return 0  # pragma: no cover - never reached


def _end_with_parent() -> None:
    """Have the kernel send this worker SIGTERM when the supervisor dies (even by SIGKILL), so no
    worker is left serving the port on its own."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() == 1:  # the supervisor is already gone
        os.kill(os.getpid(), signal.SIGTERM)
