"""Hostile model directories against a real `model-manager serve`: a symlink swapped in while the
server reads, memory bombs in a pickle or a text file, and the privacy of what the server writes.

Each test starts the server the way an operator does and attacks it only through the files it
watches and its HTTP API; the server must answer every request afterwards, without a 500.
"""
from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import psutil
import pytest

from model_manager.errors import ArtifactError
from model_manager.files import read_artifact
from tests import hostile_pickles as hp
from tests.support import FACTORS, ServerProcess, authorize, make_client, run_cli, write_group

PASSWORD = "correct horse battery"
KEY = "SOLUSDT_mid_chg_1m"
SECRET = "SECRET_FACTOR_do_not_serve"


def start(data: Path, env: dict | None = None, *args: str) -> tuple[ServerProcess, str]:
    """A server on a data dir whose password is set; returns it (running) and a token."""
    if not (data / "model-manager.sqlite3").exists():
        result = run_cli("password", "init", "--password-stdin", "--data-dir", str(data), input=PASSWORD + "\n")
        assert result.returncode == 0, result.stderr
    srv = ServerProcess(data, extra_args=("--no-watch", *args), env=env)
    srv.start()
    status, _, raw = srv.post("/api/auth/login", {"password": PASSWORD})
    assert status == 200, raw
    return srv, json.loads(raw)["token"]


def model_json(models) -> bytes:
    return bytes(models["booster"].save_raw(raw_format="json"))


def issues_of(srv: ServerProcess, token: str, model: str, symbol: str) -> list[dict]:
    status, _, raw = srv.get(f"/api/models/{model}/symbols/{symbol}", token=token)
    assert status == 200, raw
    return json.loads(raw)["issues"]


# -- a symlink swapped in between the check and the read ------------------------------------------
class Flipper:
    """Swap `target` between a plain file and a symlink to `secret`, atomically, until stopped."""

    def __init__(self, target: Path, secret: Path):
        self.target, self.secret, self.flips = target, secret, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        plain, link = self.target.with_name(".plain.tmp"), self.target.with_name(".link.tmp")
        while not self.stop.is_set():
            plain.write_text("\n".join(FACTORS) + "\n")
            os.replace(plain, self.target)
            link.unlink(missing_ok=True)
            link.symlink_to(self.secret)
            os.replace(link, self.target)
            self.flips += 1

    def __enter__(self) -> Flipper:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


@pytest.fixture
def race_dir(tmp_path, models) -> tuple[Path, Path]:
    d = tmp_path / "models"
    write_group(d, KEY, model_json=model_json(models))
    secret = tmp_path / "secret.txt"
    secret.write_text(f"{SECRET}\n")
    return d, secret


def test_a_symlink_swapped_in_while_reading_is_never_followed(race_dir):
    """Thousands of reads racing the swap: each is the plain file or a refusal, never the secret."""
    d, secret = race_dir
    seen: dict[str, int] = {}
    with Flipper(d / f"{KEY}_factors.txt", secret) as flipper:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sum(seen.values()) < 20_000:
            try:
                data = read_artifact(d / f"{KEY}_factors.txt", root=d.resolve(), max_bytes=1 << 20)
            except ArtifactError as exc:
                seen[exc.code] = seen.get(exc.code, 0) + 1
            else:
                assert SECRET.encode() not in data
                seen["read"] = seen.get("read", 0) + 1
    assert flipper.flips > 100 and seen.get("read") and seen.get("outside_root"), seen
    assert set(seen) <= {"read", "outside_root", "unreadable", "missing_file"}, seen


def test_refreshing_while_a_factor_file_flips_to_a_secret_never_serves_it(tmp_path, race_dir):
    d, secret = race_dir
    srv, token = start(tmp_path / "data")
    try:
        status, _, raw = srv.post("/api/models", {"name": "m", "path": str(d)}, token=token)
        assert status == 201, raw
        outcomes: dict[str, int] = {}
        with Flipper(d / f"{KEY}_factors.txt", secret):
            deadline = time.monotonic() + 90
            for _ in range(200):
                if time.monotonic() > deadline:
                    break
                status, _, raw = srv.post("/api/models/m/refresh", token=token)
                assert status == 200, raw
                status, _, raw = srv.get("/api/models/m/symbols/SOLUSDT", token=token)
                assert status == 200 and SECRET.encode() not in raw, raw[:500]
                codes = {i["code"] for i in json.loads(raw)["issues"] if i["severity"] == "error"}
                key = "error" if codes else "ok"
                outcomes[key] = outcomes.get(key, 0) + 1
        assert sum(outcomes.values()) >= 50, outcomes
        assert srv.get("/healthz")[0] == 200
    finally:
        srv.stop()
    assert "Traceback" not in srv.output()


# -- memory bombs ---------------------------------------------------------------------------------
def str_bomb(levels: int = 6) -> bytes:
    """About 140 bytes on the allow-list whose decoding builds a string of 3**levels * 8 MB."""
    exprs = [hp.let(0, hp.call(hp.g("builtins", "list"), hp.call(hp.g("builtins", "range"), hp.i(10**6))))]
    for level in range(1, levels + 1):
        exprs.append(hp.let(level, hp.lst(hp.get(level - 1), hp.get(level - 1), hp.get(level - 1))))
    return hp.dumps(*exprs, hp.call(hp.g("builtins", "str"), hp.get(levels)))


def rss_mb(srv: ServerProcess) -> float:
    return psutil.Process(srv.proc.pid).memory_info().rss / 2**20


def test_memory_bombs_are_group_errors_and_the_server_stays_well(tmp_path, models):
    d = tmp_path / "models"
    for key in ("SOLUSDT_mid_chg_1m", "NPBOMB_mid_chg_1m", "STRBOMB_mid_chg_1m", "BIGTXT_mid_chg_1m",
                "BIGIC_mid_chg_1m", "SPARSE_mid_chg_1m"):
        write_group(d, key, model_json=model_json(models))
    bomb = hp.numpy_scalar_bomb()
    assert len(bomb) <= 165
    (d / "NPBOMB_mid_chg_1m_info.pkl").write_bytes(bomb)
    (d / "STRBOMB_mid_chg_1m_info.pkl").write_bytes(str_bomb())
    with open(d / "BIGTXT_mid_chg_1m_factors.txt", "w") as fh:  # 44 MB of plausible factor names
        line = "\n".join(f"factor_{i:07d}" for i in range(100_000)) + "\n"
        while fh.tell() < 44_000_000:
            fh.write(line)
    with open(d / "BIGIC_mid_chg_1m_ic.csv", "wb") as fh:
        fh.truncate(17 * 2**20)
    with open(d / "SPARSE_mid_chg_1m_model.json", "wb") as fh:
        fh.truncate(500 * 2**20)  # sparse: 500 MB that take no disk space

    srv, token = start(tmp_path / "data", env={"MODEL_MANAGER_CHECK_MEMORY_MB": "256"})
    try:
        before = rss_mb(srv)
        status, _, raw = srv.post("/api/models", {"name": "m", "path": str(d)}, token=token, timeout=120)
        assert status == 201, raw
        after = rss_mb(srv)
        assert after - before < 150, (before, after)  # nothing big is kept (or parsed) in the server

        def error(symbol: str, suffix: str) -> dict:
            found = [i for i in issues_of(srv, token, "m", symbol) if i["severity"] == "error"]
            assert len(found) == 1 and found[0]["file"] == f"{symbol}_mid_chg_1m_{suffix}", found
            return found[0]

        assert error("NPBOMB", "info.pkl")["code"] == "unsafe_pickle"
        memory = error("STRBOMB", "info.pkl")
        assert memory["code"] == "too_large" and "MODEL_MANAGER_CHECK_MEMORY_MB" in memory["message"], memory
        big = error("BIGTXT", "factors.txt")
        assert big["code"] == "too_large" and "1 MiB limit for a factor list" in big["message"], big
        assert error("BIGIC", "ic.csv")["code"] == "too_large"
        sparse = error("SPARSE", "model.json")  # more than a check may hold (or, with room, not JSON)
        assert sparse["code"] == "too_large" and "256 MiB of memory" in sparse["message"], sparse
        status, _, raw = srv.get("/api/models/m/model/SOLUSDT", token=token)
        assert status == 200 and json.loads(raw)["symbol"] == "SOLUSDT"
        assert srv.get("/healthz")[0] == 200
    finally:
        srv.stop()
    assert "Traceback" not in srv.output()


def test_the_check_limit_comes_from_the_servers_settings(tmp_path, models, monkeypatch):
    """The app passes its own MODEL_MANAGER_CHECK_MEMORY_MB to the check process, whatever the
    environment of the process that runs it says."""
    from model_manager.isolation import set_check_memory
    from model_manager.settings import Settings

    monkeypatch.setenv("MODEL_MANAGER_CHECK_MEMORY_MB", "8192")
    d = tmp_path / "models"
    write_group(d, "STRBOMB_mid_chg_1m", model_json=model_json(models))
    (d / "STRBOMB_mid_chg_1m_info.pkl").write_bytes(str_bomb())
    try:
        with make_client(tmp_path, check_memory_mb=192) as client:
            authorize(client)
            assert client.post("/api/models", json={"name": "m", "path": str(d)}).status_code == 201
            issues = client.get("/api/models/m/symbols/STRBOMB").json()["issues"]
    finally:
        set_check_memory(Settings.check_memory_mb)  # the next tests check with the default limit
    memory = [i for i in issues if i["code"] == "too_large"]
    assert memory and "192 MiB" in memory[0]["message"], issues


# -- a private data dir ---------------------------------------------------------------------------
def test_everything_the_server_writes_under_the_data_dir_is_private(tmp_path, models):
    d = tmp_path / "models"
    write_group(d, KEY, model=models["regressor"])  # a pickle: its JSON conversion goes to the cache
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)  # an existing, world-readable data dir
    old = os.umask(0o022)
    try:
        srv, token = start(data)
        try:
            status, _, raw = srv.post("/api/models", {"name": "m", "path": str(d)}, token=token)
            assert status == 201, raw
            status, _, _ = srv.get("/api/models/m/model/SOLUSDT", token=token)  # the plain-body cache
            assert status == 200
        finally:
            srv.stop()
        srv, _ = start(data, None, "--demo")  # writes demo-models/ under the data dir
        srv.stop()
    finally:
        os.umask(old)
    created = list(data.rglob("*"))
    names = {p.name for p in created}
    assert {"cache", "snapshots", "demo-models", "model-manager.sqlite3"} <= names, names
    assert any(p.suffix == ".gz" for p in created) and any(p.name.startswith("raw-") for p in created), names
    wrong = {str(p.relative_to(data)): oct(stat.S_IMODE(p.lstat().st_mode)) for p in created
             if stat.S_IMODE(p.lstat().st_mode) != (0o700 if p.is_dir() else 0o600)}
    assert not wrong, wrong
