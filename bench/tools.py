"""The processes the bench drives: wrk, nginx and `model-manager serve`, plus small HTTP helpers.

wrk and nginx come from Debian packages. When missing they are installed with apt-get (as root, or
through `sudo -n`); otherwise the bench stops with a message that says what to install.
"""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
LUA_SCRIPT = BENCH_DIR / "payload.lua"
NGINX_TEMPLATE = BENCH_DIR / "nginx.conf.template"
APT_PACKAGES = {"wrk": "wrk", "nginx": "nginx"}  # Debian builds nginx with gzip_static


class BenchError(RuntimeError):
    """A problem the person running the bench has to fix; shown as one line."""


def _log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def find_tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in ("/usr/sbin", "/usr/local/sbin", "/sbin"):  # nginx lives in sbin, often off PATH
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_tools(install: bool = True) -> dict[str, str]:
    """Paths of wrk and nginx, installing the Debian packages when they are missing."""
    missing = [t for t in APT_PACKAGES if find_tool(t) is None]
    if missing and install:
        _apt_install([APT_PACKAGES[t] for t in missing])
    paths = {t: find_tool(t) for t in APT_PACKAGES}
    still = [t for t, p in paths.items() if p is None]
    if still:
        packages = " ".join(APT_PACKAGES[t] for t in still)
        raise BenchError(f"{', '.join(still)} not found and not installable here: run `sudo apt-get install {packages}` "
                         "(Debian/Ubuntu packages), then run the bench again")
    return paths  # type: ignore[return-value]


def compile_package() -> None:
    """The package's bytecode, as a user's installation has it after its first start (or pip's
    compile at install). Python writes it at first import unless PYTHONDONTWRITEBYTECODE is set; where
    it is, every server start would compile ~90 modules from source (0.2 CPU-s before it can fork)."""
    done = subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "model_manager")],
                          capture_output=True, text=True)
    if done.returncode:
        raise BenchError(f"model_manager does not compile:\n{done.stdout}{done.stderr}")


def _apt_install(packages: list[str]) -> None:
    if shutil.which("apt-get") is None:
        return
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        prefix = ["sudo", "-n"]
    else:
        return
    _log(f"installing {' '.join(packages)} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
        done = subprocess.run([*prefix, *cmd], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            _log(f"apt-get failed: {' | '.join(tail)}")
            return


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in bytes, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def pss_bytes(pid: int) -> int:
    """The proportional set size of a process in bytes (shared pages divided among their sharers)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- HTTP ---------------------------------------------------------------------------------------
class Client:
    """One keep-alive HTTP/1.1 connection (http.client), reconnecting when the server closed it."""

    def __init__(self, port: int, token: str | None = None, timeout: float = 600):
        self.port, self.token, self.timeout = port, token, timeout
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method: str, path: str, body: dict | None = None, headers: dict | None = None):
        """Returns (status, headers dict with lower-case names, raw body)."""
        h = dict(headers or {})
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=data, headers=h)
                resp = self.conn.getresponse()
                raw = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, raw
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: dict | None = None, expect: tuple[int, ...] = (200,)) -> dict:
        status, _, raw = self.request(method, path, body)
        if status not in expect:
            raise BenchError(f"{method} {path} answered {status}: {raw[:300]!r}")
        return json.loads(raw) if raw else {}

    def close(self) -> None:
        self.conn.close()


# -- model-manager serve ------------------------------------------------------------------------
class Server:
    """A real `model-manager serve` process on 127.0.0.1.

    By default it runs as `./start.sh` runs it: every setting at its default (log level `info`, the
    watcher on); `log_level` and `watch` add the flags. `release` is a source tree of another release
    (see `previous_release`) to run instead of this one, with the same interpreter and packages."""

    def __init__(self, data_dir: Path, log_path: Path, *, watch: bool | None = None, debounce: float | None = None,
                 log_level: str | None = None, release: Path | None = None, extra: tuple[str, ...] = ()):
        self.data_dir, self.log_path, self.release = data_dir, log_path, release
        self.port = free_port()
        self.args = [] if watch is None else ["--watch" if watch else "--no-watch"]
        if debounce is not None:
            self.args += ["--watch-debounce", str(debounce)]
        if log_level is not None:
            self.args += ["--log-level", log_level]
        self.args += list(extra)
        self.proc: subprocess.Popen | None = None
        self.started_at = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 900) -> float:
        """Start and wait until /healthz says `models_loaded` (every registered model loaded and its
        payloads prebuilt) from every worker process; returns the seconds from spawn to then."""
        cmd = [sys.executable, "-m", "model_manager", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.data_dir), *self.args]
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.release is not None:  # its own package first on the path, the same site-packages after it
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.release), env.get("PYTHONPATH")) if p)
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.release or REPO)
        log.close()
        deadline = self.started_at + timeout
        loaded: set[int] = set()  # the workers that said `models_loaded` (each connection may reach another)
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"model-manager serve exited with {self.proc.returncode}; see {self.log_path}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                health = json.loads(body) if resp.status == 200 else {}
                if health.get("models_loaded", resp.status == 200):
                    loaded.add(health.get("worker", 0))
                    if len(loaded) >= health.get("workers", 1):
                        return time.perf_counter() - self.started_at
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise BenchError(f"model-manager serve did not become healthy in {timeout:.0f} s; see {self.log_path}")

    def setup_code(self) -> str | None:
        """The one-time setup code this server printed (None once a password is set)."""
        found = re.findall(r"One-time setup code: (?:\[bold\])?([A-Z0-9-]+)", self.log_path.read_text(errors="replace"))
        return found[-1] if found else None

    def pids(self) -> list[int]:
        """The server's processes: `serve` and, with several workers, each worker (its children that
        run `serve`; not the model check helpers, whose work is counted apart)."""
        assert self.proc is not None
        found = [self.proc.pid]
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return found
        for child in map(int, children):
            try:
                if b" serve " in Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" "):
                    found.append(child)
            except OSError:
                pass
        return found

    def cpu(self) -> float:
        """CPU-seconds used so far by the server's processes (see `pids`)."""
        return sum(cpu_seconds(pid) for pid in self.pids())

    def rss(self) -> tuple[int, int]:
        """(memory, peak) of the server in bytes: one process's VmRSS and VmHWM; with several workers,
        the sum of their proportional set sizes (PSS: pages the workers share counted once) and the
        sum of their peaks."""
        pids = self.pids()
        if len(pids) == 1:
            return rss_bytes(pids[0])
        return sum(pss_bytes(pid) for pid in pids), sum(rss_bytes(pid)[1] for pid in pids)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def built_before(directory: Path, spec: str) -> bool:
    """True when `directory` holds a complete build of `spec` (reuse it); otherwise it is made anew,
    empty, for the caller to fill and then `mark_built`."""
    stamp = directory / ".bench-complete"
    if stamp.exists() and stamp.read_text() == spec:
        return True
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    return False


def mark_built(directory: Path, spec: str) -> None:
    (directory / ".bench-complete").write_text(spec)


def previous_release(commit: str, target: Path) -> Path:
    """The source tree of `commit` under `target` (`git archive`, extracted once; no worktree, nothing
    committed), to run that release's server with this interpreter. BenchError when git cannot."""
    if built_before(target, commit):
        return target
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit], capture_output=True)
    if archive.returncode != 0:
        raise BenchError(f"git archive {commit} failed: {archive.stderr.decode(errors='replace').strip()[-300:]}")
    done = subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, capture_output=True)
    if done.returncode != 0:
        raise BenchError(f"extracting release {commit} failed: {done.stderr.decode(errors='replace').strip()[-300:]}")
    mark_built(target, commit)
    return target


def raise_open_files(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit towards `wanted` (children inherit it); returns it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def bootstrap(server: Server, password: str = "bench-password-123") -> str:
    """Set the first password (with the one-time setup code the server printed) or log in; returns a token."""
    client = Client(server.port)
    try:
        status, _, raw = client.request("POST", "/api/auth/bootstrap",
                                        {"password": password, "setup_code": server.setup_code()})
        if status == 409:
            status, _, raw = client.request("POST", "/api/auth/login", {"password": password})
        if status not in (200, 201):
            raise BenchError(f"could not get a token: {status} {raw[:200]!r}")
        return json.loads(raw)["token"]
    finally:
        client.close()


# -- nginx --------------------------------------------------------------------------------------
class Nginx:
    """nginx serving `root` (files under root/p/) on a free port, from a private prefix directory, with
    as many worker processes as the model-manager server it is compared with."""

    def __init__(self, binary: str, root: Path, work: Path, workers: int = 1):
        self.binary, self.root, self.work, self.workers = binary, root, work, workers
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.work / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        user_line = f"user {_user_name()};" if os.geteuid() == 0 else ""
        conf = NGINX_TEMPLATE.read_text()
        for key, value in {"user_line": user_line, "work": str(self.work), "root": str(self.root),
                           "port": str(self.port), "workers": str(self.workers)}.items():
            conf = conf.replace("{" + key + "}", value)
        conf_path = self.work / "nginx.conf"
        conf_path.write_text(conf)
        log = open(self.work / "nginx-stdout.log", "ab")
        self.proc = subprocess.Popen([self.binary, "-p", str(self.work), "-c", str(conf_path)], stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                error_log = (self.work / "nginx-error.log")
                tail = error_log.read_text()[-500:] if error_log.exists() else ""
                raise BenchError(f"nginx exited with {self.proc.returncode}: {tail.strip()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BenchError("nginx did not start listening within 20 s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, master exits
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _user_name() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


# -- wrk ----------------------------------------------------------------------------------------
@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mbytes_per_s: float
    errors: dict

    def to_dict(self) -> dict:
        return {"req_per_s": round(self.rps, 1), "p50_ms": round(self.p50_ms, 3), "p90_ms": round(self.p90_ms, 3),
                "p99_ms": round(self.p99_ms, 3), "mb_per_s": round(self.mbytes_per_s, 1), "requests": self.requests,
                "errors": self.errors}


def run_wrk(binary: str, url: str, requests_file: Path, *, seconds: float, connections: int, threads: int = 2) -> WrkResult:
    cmd = [binary, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s",
           "-s", str(LUA_SCRIPT), url, "--", str(requests_file)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-400:]}")
    data = json.loads(line[len("BENCH_JSON "):])
    secs = data["duration_us"] / 1e6
    return WrkResult(data["requests"], secs, data["requests"] / secs, data["p50_us"] / 1000, data["p90_us"] / 1000,
                     data["p99_us"] / 1000, data["bytes"] / secs / 1e6, data["errors"])


def write_requests(path: Path, headers: dict[str, str], requests: list[tuple[str, str]]) -> Path:
    lines = [f"H\t{k}\t{v}" for k, v in headers.items()] + [f"R\t{p}\t{etag}" for p, etag in requests]
    path.write_text("\n".join(lines) + "\n")
    return path
