"""Helpers shared by the tests: free ports and a real `model-manager serve` process."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "model_manager"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, input: str | None = None, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess; returns the CompletedProcess (text mode)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}  # wide enough that rich does not wrap
    return subprocess.run([*CLI, *args], input=input, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO)


def http(method: str, url: str, *, token: str | None = None, body: dict | None = None,
         headers: dict | None = None, timeout: float = 30) -> tuple[int, httpx.Headers, bytes]:
    """A tiny HTTP client on urllib: returns (status, headers (case-insensitive), raw body) without
    raising on 4xx/5xx. The body is returned as sent (no gzip decoding)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, httpx.Headers(list(resp.headers.items())), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, httpx.Headers(list(exc.headers.items())), exc.read()


class ServerProcess:
    """A real `model-manager serve` on 127.0.0.1 and a free port, stopped with SIGINT on exit."""

    def __init__(self, data_dir: Path, port: int | None = None, extra_args: tuple[str, ...] = (),
                 env: dict | None = None, startup_timeout: float = 60):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = tuple(extra_args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.startup_timeout = startup_timeout
        self._log = tempfile.NamedTemporaryFile(prefix="mm-serve-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        cmd = [*CLI, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                status, _, _ = http("GET", self.url + "/healthz", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {self.startup_timeout}s:\n{self.output()}")

    def stop(self, timeout: float = 10) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def get(self, path: str, **kw) -> tuple[int, dict, bytes]:
        return http("GET", self.url + path, **kw)

    def post(self, path: str, body: dict | None = None, **kw) -> tuple[int, dict, bytes]:
        return http("POST", self.url + path, body=body, **kw)

    def login(self, password: str = "correct horse battery") -> str:
        """Bootstrap (first time) or log in; returns a bearer token."""
        status, _, raw = self.post("/api/auth/bootstrap", {"password": password})
        if status == 409:
            status, _, raw = self.post("/api/auth/login", {"password": password})
        assert status in (200, 201), raw
        return json.loads(raw)["token"]


def prepare_data_dir(data_dir: Path, password: str, models: dict[str, Path] | None = None) -> None:
    """Set the password and register model directories with the CLI, before a server starts (the
    bootstrap route wants the setup code; `password init` has the data dir and needs none)."""
    done = run_cli("password", "init", "--password-stdin", "--data-dir", str(data_dir), input=password + "\n")
    assert done.returncode == 0, done.stderr
    for name, path in (models or {}).items():
        done = run_cli("register", name, str(path), "--data-dir", str(data_dir))
        assert done.returncode == 0, done.stderr


def login(url: str, password: str) -> str:
    """POST /api/auth/login; returns the bearer token."""
    status, _, raw = http("POST", url + "/api/auth/login", body={"password": password})
    assert status == 200, raw
    return json.loads(raw)["token"]


def replace_file(path: Path, data: bytes) -> None:
    """Write a file the way a training job should: a temporary name, then one rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def wait_until(predicate, timeout: float = 30, interval: float = 0.1, message: str = "condition"):
    """Call `predicate` until it returns something truthy (returned) or `timeout` s pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
