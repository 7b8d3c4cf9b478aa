"""The operating scripts, run for real: setup.sh, start.sh/stop.sh (under pm2 and as a background
process), the start_model_manager.sh shim. Every server here binds 127.0.0.1 on a free port, keeps its
data in a tmp dir, its run/ and logs/ under MODEL_MANAGER_RUN_DIR in tmp, and pm2 uses a private PM2_HOME."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import psutil
import pytest

from tests.support import REPO, ServerProcess, free_port, http, login

START = str(REPO / "start.sh")
STOP = str(REPO / "stop.sh")
SHIM = str(REPO / "start_model_manager.sh")
SETUP = str(REPO / "setup.sh")


def local_pm2() -> str | None:
    bundled = REPO / ".tools" / "node_modules" / ".bin" / "pm2"
    return str(bundled) if bundled.exists() else shutil.which("pm2")


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment minus any model-manager or pm2 settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_MANAGER_") and k != "PM2_HOME"}
    env["MODEL_MANAGER_WATCH_ENABLED"] = "0"  # nothing to watch here; keeps the servers light
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float = 150, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, input=input, cwd=REPO)


def port_is_free(port: int) -> bool:
    """True when a server could bind the port again (as uvicorn does, with SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def healthz(port: int) -> int | None:
    try:
        return http("GET", f"http://127.0.0.1:{port}/healthz", timeout=3)[0]
    except OSError:
        return None


def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def assert_all_gone(processes: list[psutil.Process], timeout: float = 5) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    assert not alive, f"processes left behind: {[p.pid for p in alive]}"


def processes_with(**variables: str) -> list[psutil.Process]:
    """Running model-manager processes whose environment has all these values (how a server started
    by start.sh is recognised; the pm2 daemon itself is not one of them)."""
    found = []
    for proc in psutil.process_iter():
        try:
            environ, cmdline = proc.environ(), " ".join(proc.cmdline())
        except (psutil.Error, OSError):
            continue
        if "model-manager" in cmdline and all(environ.get(k) == v for k, v in variables.items()):
            found.append(proc)
    return found


@pytest.fixture
def ops(tmp_path):
    """Environment for one start/stop scenario; whatever the test leaves running is stopped after it."""
    env = clean_env(
        MODEL_MANAGER_RUN_DIR=str(tmp_path / "rundir"),
        MODEL_MANAGER_DATA_DIR=str(tmp_path / "data"),
        MODEL_MANAGER_HTTP_HOST="127.0.0.1",
        MODEL_MANAGER_NO_PM2="1",
    )
    yield env
    run([STOP], env)


@pytest.fixture(scope="module")
def pm2_home():
    """A private pm2 daemon for this module (never the user's ~/.pm2), killed at the end."""
    if shutil.which("npm") is None and local_pm2() is None:
        pytest.skip("pm2 tests need npm (./setup.sh installs pm2 with it); npm is not installed")
    pm2 = local_pm2()
    assert pm2, "npm is installed but pm2 is not: run ./setup.sh (it installs pm2 into .tools/)"
    home = tempfile.mkdtemp(prefix="pm2-")  # short: pm2's unix sockets live here
    yield pm2, home
    subprocess.run([pm2, "kill"], env={**os.environ, "PM2_HOME": home}, capture_output=True, timeout=60)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def pm2_ops(ops, pm2_home):
    pm2, home = pm2_home
    env = {**ops, "PM2_HOME": home}
    del env["MODEL_MANAGER_NO_PM2"]
    yield pm2, env
    run([STOP], env)


def pm2_app(pm2: str, env: dict[str, str]) -> dict | None:
    out = run([pm2, "jlist"], env, timeout=60).stdout
    for line in out.splitlines():
        if line.startswith("["):
            apps = [a for a in json.loads(line) if a["name"] == "model-manager"]
            return apps[0] if apps else None
    raise AssertionError(f"pm2 jlist printed no list: {out!r}")


# --- background process (no pm2) -----------------------------------------------------------------

def test_background_start_demo_refuse_twice_stop(ops, tmp_path):
    env_port, port = free_port(), free_port()
    env = {**ops, "MODEL_MANAGER_HTTP_PORT": str(env_port)}

    started = run([START, "--web-port", str(port), "--demo"], env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"http://127.0.0.1:{port}/" in started.stdout
    assert "background" in started.stdout
    log_file = tmp_path / "rundir" / "logs" / "model-manager.log"
    assert str(log_file) in started.stdout
    assert "No password is set" in started.stdout  # first run: the setup hint
    # --web-port won over MODEL_MANAGER_HTTP_PORT
    assert healthz(port) == 200
    assert healthz(env_port) is None
    # the data dir came through the environment; --demo registered the demo model
    assert (tmp_path / "data").is_dir()
    token = login(f"http://127.0.0.1:{port}", tmp_path / "data")
    status, _, raw = http("GET", f"http://127.0.0.1:{port}/api/models", token=token)
    assert status == 200
    assert "demo" in [m["name"] for m in json.loads(raw)["models"]]

    pid_file = tmp_path / "rundir" / "run" / "model-manager.pid"
    pid = int(pid_file.read_text())
    tree = process_tree(pid)

    again = run([START, "--web-port", str(port)], env)
    assert again.returncode == 1
    assert "already running" in again.stderr and str(pid) in again.stderr
    assert psutil.pid_exists(pid)

    stopped = run([STOP], env)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped model-manager (pid {pid})" in stopped.stdout
    assert "SIGKILL" not in stopped.stdout  # it shut down on SIGINT
    assert_all_gone(tree)
    assert not pid_file.exists()
    assert port_is_free(port)
    assert healthz(port) is None

    nothing = run([STOP], env)
    assert nothing.returncode == 0
    assert "not running" in nothing.stdout


def test_start_refuses_a_taken_port(ops, tmp_path):
    port = free_port()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        result = run([START, "--web-port", str(port)], ops)
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "rundir" / "run" / "model-manager.pid").exists()


def test_start_failure_prints_log_lines_and_leaves_nothing(ops, tmp_path):
    not_a_dir = tmp_path / "data-file"
    not_a_dir.write_text("a file where the data dir should be\n")
    port = free_port()
    result = run([START, "--web-port", str(port), "--data-dir", str(not_a_dir)], ops)
    assert result.returncode == 1
    assert "last log lines" in result.stderr
    assert str(not_a_dir) in result.stderr  # the server's own message, from its log
    assert not (tmp_path / "rundir" / "run" / "model-manager.pid").exists()
    assert not processes_with(MODEL_MANAGER_DATA_DIR=str(not_a_dir))
    assert port_is_free(port)


def test_start_rejects_bad_options(ops):
    for args, message in [
        (["--web-port", "http"], "not a number"),
        (["--web-port", "70000"], "out of range"),
        (["--web-port"], "needs a value"),
        (["--frobnicate"], "unknown option --frobnicate"),
    ]:
        result = run([START, *args], ops)
        assert result.returncode == 2, args
        assert message in result.stderr, (args, result.stderr)
    helped = run([START, "--help"], ops)
    assert helped.returncode == 0 and "--web-port" in helped.stdout and "MODEL_MANAGER_NO_PM2" in helped.stdout


# --- pm2 -----------------------------------------------------------------------------------------

def test_pm2_start_refuse_twice_stop(pm2_ops, tmp_path):
    pm2, env = pm2_ops
    env_port, port = free_port(), free_port()
    env = {**env, "MODEL_MANAGER_HTTP_PORT": str(env_port)}

    started = run([START, "--web-port", str(port)], env)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "(pm2, pid" in started.stdout
    assert f"http://127.0.0.1:{port}/" in started.stdout
    assert healthz(port) == 200 and healthz(env_port) is None
    app = pm2_app(pm2, env)
    assert app and app["pm2_env"]["status"] == "online"
    pid = app["pid"]
    tree = process_tree(pid)
    # ecosystem.config.js passed the environment through: logs and data where this run asked
    assert app["pm2_env"]["pm_err_log_path"] == str(tmp_path / "rundir" / "logs" / "model-manager.err.log")
    assert (tmp_path / "data").is_dir()

    again = run([START, "--web-port", str(port)], env)
    assert again.returncode == 1
    assert "already running under pm2" in again.stderr

    stopped = run([STOP], env)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped model-manager" in stopped.stdout
    assert pm2_app(pm2, env) is None
    assert_all_gone(tree)
    assert port_is_free(port)

    nothing = run([STOP], env)
    assert nothing.returncode == 0 and "not running" in nothing.stdout


def test_pm2_start_failure_leaves_no_app(pm2_ops, tmp_path):
    pm2, env = pm2_ops
    not_a_dir = tmp_path / "data-file"
    not_a_dir.write_text("not a directory\n")
    result = run([START, "--web-port", str(free_port()), "--data-dir", str(not_a_dir)], env)
    assert result.returncode == 1
    assert "last log lines" in result.stderr and str(not_a_dir) in result.stderr
    assert pm2_app(pm2, env) is None  # no app left restarting in a loop
    assert not processes_with(MODEL_MANAGER_DATA_DIR=str(not_a_dir))


# --- the compatibility shim ----------------------------------------------------------------------

def test_shim_init_and_set_password(tmp_path):
    env = clean_env(MODEL_MANAGER_DATA_DIR=str(tmp_path / "data"))
    first = run([SHIM, "--init-password", "first-password-1"], env)
    assert first.returncode == 0, first.stderr

    twice = run([SHIM, "--init-password", "another-password"], env)
    assert twice.returncode == 1
    assert "Traceback" not in twice.stderr and twice.stderr.strip()

    with ServerProcess(tmp_path / "data", env={"MODEL_MANAGER_WATCH_ENABLED": "0"}) as server:
        status, _, raw = server.post("/api/auth/login", {"password": "first-password-1"})
        assert status == 200, raw
        old_token = json.loads(raw)["token"]
        assert server.get("/api/models", token=old_token)[0] == 200

        changed = run([SHIM, "--set-password=second-password-2"], env)
        assert changed.returncode == 0, changed.stderr

        assert server.get("/api/models", token=old_token)[0] == 401  # every old token revoked
        assert server.post("/api/auth/login", {"password": "first-password-1"})[0] == 401
        status, _, raw = server.post("/api/auth/login", {"password": "second-password-2"})
        assert status == 200
        assert server.get("/api/models", token=json.loads(raw)["token"])[0] == 200

    missing = run([SHIM, "--set-password"], env)
    assert missing.returncode == 2 and "needs the password" in missing.stderr


def test_shim_serves_in_the_foreground(tmp_path):
    port = free_port()
    env = clean_env()
    log = tmp_path / "shim.log"
    with log.open("wb") as out:  # a file, not a pipe nobody reads while the server runs
        proc = subprocess.Popen([SHIM, "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "data")],
                                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while healthz(port) != 200:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the shim's server did not answer /healthz"
            time.sleep(0.2)
        assert psutil.Process(proc.pid).name() != "bash"  # exec'd: signals reach the server itself
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            # generous: on a loaded machine the workers and the check process take a while to stop
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"the server did not stop within 60 s of SIGINT:\n{log.read_text()}") from None
    assert code == 0, log.read_text()
    assert port_is_free(port)


# --- setup.sh ------------------------------------------------------------------------------------

def _snapshot() -> dict[str, float]:
    """mtimes of what setup.sh manages: the venv's entry points and installed packages, pm2 in .tools."""
    paths = [REPO / ".venv" / ".model-manager-setup", REPO / ".venv" / "bin" / "model-manager", REPO / ".venv" / "pyvenv.cfg"]
    paths += sorted((REPO / ".venv" / "lib").glob("python3*/site-packages/*"))
    paths += sorted((REPO / ".tools" / "node_modules").glob("*"))
    return {str(p): p.stat().st_mtime for p in paths if p.exists()}


def test_setup_is_idempotent():
    env = clean_env()
    first = run([SETUP], env, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    before = _snapshot()
    started = time.monotonic()
    second = run([SETUP], env, timeout=120)
    elapsed = time.monotonic() - started
    assert second.returncode == 0, second.stdout + second.stderr
    assert "up to date" in second.stdout
    assert "installing" not in second.stdout
    assert elapsed < 15, f"a second setup.sh run took {elapsed:.1f}s; it should only check"
    assert _snapshot() == before


def test_setup_names_the_python_to_install(tmp_path):
    # setup.sh works from its own folder; a copy with no .venv must look for an interpreter.
    shutil.copy(SETUP, tmp_path / "setup.sh")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    old = tmp_path / "python3.9"
    old.write_text("#!/bin/sh\necho 3.9\n")  # answers the version query the way Python 3.9 would
    old.chmod(0o755)
    result = subprocess.run([str(tmp_path / "setup.sh")], env=clean_env(PYTHON=str(old)),
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    assert "needs Python >= 3.11" in result.stderr and "3.9" in result.stderr
    assert not (tmp_path / ".venv").exists()
