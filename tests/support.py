"""What the tests share, in one place: the password, tiny model directories, the app behind a
`TestClient`, a real `model-manager serve` process, the CLI in a subprocess, and getting a token
from any of them.

    with make_client(tmp_path) as client:        # Settings + create_app + TestClient
        token = sign_in(client)                  # bootstrap (first time) or log in
    with ServerProcess(tmp_path / "data") as server:
        token = server.login()                   # password set with the CLI (first time), then log in

`sign_in` and `login` are the only places that know how a first password gets set; conftest.py's
fixtures are one-liners over these helpers.
"""
from __future__ import annotations

import fcntl
import json
import os
import pickle
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import xgboost as xgb
from litestar.testing import TestClient

from model_manager.demo import write_demo
from model_manager.server.app import create_app
from model_manager.settings import Settings

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "model_manager"]
PASSWORD = "correct horse battery"
N_FEATURES = 5
FACTORS = ["ofi_1m", "spread_bps", "depth_imb_5", "ret_lag_1m", "vol_5m"]


# -- tiny real models and model directories ---------------------------------------------------------

def training_data() -> tuple[np.ndarray, np.ndarray]:
    """80 rows of N_FEATURES float32 features and a target that depends on some of them."""
    rng = np.random.default_rng(42)
    x = rng.normal(size=(80, N_FEATURES)).astype(np.float32)
    y = x @ np.array([0.5, -0.2, 0.0, 0.3, 0.1]) + rng.normal(scale=0.1, size=80)
    return x, y


def train_models() -> dict:
    """One tiny model of each kind that real training jobs leave behind (a second or so)."""
    x, y = training_data()
    reg = xgb.XGBRegressor(n_estimators=5, max_depth=2, n_jobs=1).fit(x, y)
    clf = xgb.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(x, (y > 0).astype(int))
    booster = xgb.train({"max_depth": 2, "nthread": 1}, xgb.DMatrix(x, label=y), num_boost_round=5)
    named = xgb.XGBRegressor(n_estimators=5, max_depth=2, n_jobs=1).fit(pd.DataFrame(x, columns=FACTORS), y)
    return {"regressor": reg, "classifier": clf, "booster": booster, "named": named}


def write_group(directory: Path, group_key: str, *, model=None, model_json: bytes | None = None,
                factors: list[str] | None = None, ic: str | None = None, info: dict | None = None) -> None:
    """Write one group's files; pass exactly what the test needs."""
    directory.mkdir(parents=True, exist_ok=True)
    factors = FACTORS if factors is None else factors
    (directory / f"{group_key}_factors.txt").write_text("\n".join(factors) + "\n")
    if ic is None:
        ic = "factor,ic,rank_ic,kendall_tau\n" + "".join(f"{f},0.0{i + 1},0.02,0.0{i + 1}5\n" for i, f in enumerate(factors))
    if ic:
        (directory / f"{group_key}_ic.csv").write_text(ic)
    if info is not None:
        (directory / f"{group_key}_info.pkl").write_bytes(pickle.dumps(info))
    if model is not None:
        (directory / f"{group_key}_model.pkl").write_bytes(pickle.dumps(model))
    if model_json is not None:
        (directory / f"{group_key}_model.json").write_bytes(model_json)


def write_model_dir(directory: Path, models: dict) -> Path:
    """A clean directory: SOLUSDT (regressor pkl), BTCUSDT (raw Booster pkl), ETHUSDT (JSON only)."""
    info = {"symbol": "SOLUSDT", "return_name": "mid_chg_1m", "dim": np.int64(N_FEATURES),
            "train_start": pd.Timestamp("2026-10-01", tz="UTC"), "n_samples": np.int64(80)}
    write_group(directory, "SOLUSDT_mid_chg_1m", model=models["regressor"], info=info)
    write_group(directory, "BTCUSDT_mid_chg_1m", model=models["booster"])
    write_group(directory, "ETHUSDT_mid_chg_5m", model_json=bytes(models["booster"].save_raw(raw_format="json")))
    return directory


def demo_models(directory: Path) -> Path:
    """The demo model directory (`model-manager demo`) written to `directory`."""
    write_demo(directory)
    return directory


def copy_dir(source: Path, target: Path) -> Path:
    """A fresh copy of a model directory (the demo one is trained once per session)."""
    shutil.copytree(source, target)
    return target


# -- the app behind a TestClient ----------------------------------------------------------------------

def make_settings(tmp_path: Path, **overrides) -> Settings:
    """Settings on `tmp_path / "data"`, the watcher off unless asked for; `overrides` are Settings fields."""
    return Settings(**{"data_dir": Path(tmp_path) / "data", "watch_enabled": False, **overrides})


@contextmanager
def make_client(where: Path | Settings, **overrides) -> Iterator[TestClient]:
    """The real app (`create_app`) in a `TestClient`, lifespan started; `where` is a tmp_path (see
    `make_settings`) or ready Settings. Requests come from the address "testclient", which is not
    loopback: the server treats them as coming from another machine."""
    settings = where.replace(**overrides) if isinstance(where, Settings) else make_settings(where, **overrides)
    with TestClient(create_app(settings)) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def setup_code(client: TestClient) -> str | None:
    """The one-time setup code the app would print at startup (None once a password is set)."""
    return client.app.state.auth.setup_code


def bootstrap(client: TestClient, password: str = PASSWORD) -> str:
    """Set the first password through the API, with the setup code `serve` would print; returns the token."""
    r = client.post("/api/auth/bootstrap", json={"password": password, "setup_code": setup_code(client)})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def log_in(client: TestClient, password: str = PASSWORD) -> str:
    r = client.post("/api/auth/login", json={"password": password})
    assert r.status_code == 200, r.text
    return r.json()["token"]


def sign_in(client: TestClient, password: str = PASSWORD) -> str:
    """A bearer token: bootstrap when no password is set yet, else log in."""
    initialized = client.get("/api/auth/status").json()["initialized"]
    return log_in(client, password) if initialized else bootstrap(client, password)


def authorize(client: TestClient, password: str = PASSWORD) -> TestClient:
    """`client` with a token from `sign_in` sent on every request."""
    client.headers.update(bearer(sign_in(client, password)))
    return client


# -- the CLI and real server processes ----------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, input: str | None = None, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess; returns the CompletedProcess (text mode)."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}  # wide enough that rich does not wrap
    return subprocess.run([*CLI, *args], input=input, capture_output=True, text=True, env=full_env, timeout=timeout, cwd=REPO)


def http(method: str, url: str, *, token: str | None = None, body: dict | None = None, data: bytes | None = None,
         headers: dict | None = None, timeout: float = 30) -> tuple[int, httpx.Headers, bytes]:
    """A tiny HTTP client on urllib: returns (status, headers (case-insensitive), raw body) without
    raising on 4xx/5xx. The body is returned as sent (no gzip decoding). `body` is sent as JSON;
    `data` as raw bytes labelled JSON."""
    data = json.dumps(body).encode() if body is not None else data
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


def wait_for(check, timeout: float = 20, interval: float = 0.1, what: str = "the condition"):
    """Poll `check()` until it returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s (last: {value!r})")
        time.sleep(interval)


class ServerProcess:
    """A real `model-manager serve` on 127.0.0.1 and a free port (one worker process unless `workers`
    says otherwise), stopped with SIGINT on exit."""

    def __init__(self, data_dir: Path, port: int | None = None, extra_args: tuple[str, ...] = (),
                 env: dict | None = None, startup_timeout: float = 60, log_file: Path | None = None,
                 preexec_fn=None, workers: int | None = 1):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # one process unless a test asks for more (None: the default, one per core): most tests look
        # at one process; tests/test_workers.py runs several
        self.extra_args = (*(("--workers", str(workers)) if workers is not None else ()), *extra_args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.startup_timeout = startup_timeout
        self.preexec_fn = preexec_fn  # runs in the child before `serve` starts (e.g. to drop privileges)
        # the server's stdout and stderr; `log_file` puts them where a test wants them, else they go
        # beside the data dir (a test's tmp_path, which pytest clears after a few runs)
        beside = self.data_dir.parent if self.data_dir.parent.is_dir() else None
        self._log = open(log_file, "wb") if log_file else tempfile.NamedTemporaryFile(
            prefix="mm-serve-", suffix=".log", dir=beside, delete=False)
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self._log.closed:  # started again after a stop: the log goes on
            self._log = open(self._log.name, "ab")
        cmd = [*CLI, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra_args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
                                     preexec_fn=self.preexec_fn)
        deadline = time.monotonic() + self.startup_timeout
        answered: set[int] = set()  # the workers that answered: each listens only once it has started
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.close()
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                status, _, raw = http("GET", self.url + "/healthz", timeout=2)
                if status == 200:
                    health = json.loads(raw)
                    answered.add(health.get("worker", 0))
                    if len(answered) >= health.get("workers", 1):
                        return
                    time.sleep(0.02)  # a fresh connection may reach another worker
                    continue
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {self.startup_timeout}s:\n{self.output()}")

    def stop(self, timeout: float = 10) -> int | None:
        try:
            if self.proc is None or self.proc.poll() is not None:
                return None if self.proc is None else self.proc.returncode
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        finally:
            self._log.close()  # output() reads the file by name

    def output(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def get(self, path: str, **kw) -> tuple[int, dict, bytes]:
        return http("GET", self.url + path, **kw)

    def post(self, path: str, body: dict | None = None, **kw) -> tuple[int, dict, bytes]:
        return http("POST", self.url + path, body=body, **kw)

    def setup_code(self) -> str | None:
        """The one-time setup code `serve` printed at startup (None when a password was already set)."""
        found = re.findall(r"setup code: ([A-Z0-9]{4}-[A-Z0-9]{4})", self.output())
        return found[-1] if found else None

    def login(self, password: str = PASSWORD) -> str:
        """A bearer token (see `login`)."""
        return login(self.url, self.data_dir, password)


def init_password(data_dir: Path, password: str = PASSWORD) -> None:
    """Set the first password as an operator does: `model-manager password init --password-stdin`."""
    done = run_cli("password", "init", "--password-stdin", "--data-dir", str(data_dir), input=password + "\n")
    assert done.returncode == 0, done.stderr


def login(url: str, data_dir: Path, password: str = PASSWORD) -> str:
    """A bearer token from the server at `url` (data in `data_dir`): logs in, setting the password with
    the CLI first when none is set yet."""
    status, _, raw = http("POST", url + "/api/auth/login", body={"password": password})
    if status == 409:  # no password yet
        init_password(data_dir, password)
        status, _, raw = http("POST", url + "/api/auth/login", body={"password": password})
    assert status == 200, raw
    return json.loads(raw)["token"]


def prepare_data_dir(data_dir: Path, password: str, models: dict[str, Path] | None = None) -> None:
    """Set the password and register model directories with the CLI, before a server starts (the
    bootstrap route wants the setup code; `password init` has the data dir and needs none)."""
    init_password(data_dir, password)
    for name, path in (models or {}).items():
        done = run_cli("register", name, str(path), "--data-dir", str(data_dir))
        assert done.returncode == 0, done.stderr



def replace_file(path: Path, data: bytes) -> None:
    """Write a file the way a training job should: a temporary name, then one rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def run_in_terminal(command: str, answers: list[str], timeout: float = 120) -> str:
    """Run a shell command line on a pseudo-terminal of its own (its controlling terminal, as in an
    interactive shell) and type `answers`, one per prompt; returns what it printed."""
    master, slave = os.openpty()
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(["bash", "--norc", "--noprofile", "-c", command], stdin=slave, stdout=slave, stderr=slave,
                            env=env, start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    seen, pending, deadline = b"", list(answers), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break  # the command is done and its terminal closed
                if not chunk:
                    break
                seen += chunk
                # the prompt's last space is written after the terminal was switched to no-echo (and
                # its pending input flushed): only then may the answer be typed
                if pending and seen.endswith(b": "):
                    os.write(master, pending.pop(0).encode() + b"\n")
                    seen += b"\n"
            elif proc.poll() is not None:
                break
        proc.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert proc.returncode == 0, seen.decode(errors="replace")
    return seen.decode(errors="replace")
