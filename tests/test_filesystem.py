"""File-system edge cases: what a shared drive or a research box can put where an artifact should be.

A symlinked model directory (`current -> v3`) is fine; an artifact link that leaves the directory,
a FIFO, a device, a socket, a directory, an unreadable file or a file above the size limit is refused
with an issue that names the file and says what to fix — quickly (nothing blocks on a FIFO, nothing
huge is read) and without taking the rest of the directory down. Names and contents that are not
UTF-8 never turn into a 500 or a traceback.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from model_manager.artifacts import load_directory, scan_directory
from model_manager.settings import Settings
from tests.support import FACTORS, REPO, run_cli, write_group

KEY = "SOLUSDT_mid_chg_1m"


def model_json(models) -> bytes:
    return bytes(models["booster"].save_raw(raw_format="json"))


@pytest.fixture
def good_dir(tmp_path, models) -> Path:
    """Two clean groups: SOLUSDT (JSON model) and BTCUSDT (pickled regressor)."""
    d = tmp_path / "models"
    write_group(d, KEY, model_json=model_json(models))
    write_group(d, "BTCUSDT_mid_chg_1m", model=models["regressor"])
    return d


def within(seconds: float, fn, *args, **kwargs):
    """Run `fn` in a thread; fail (instead of hanging the suite) if it takes longer than `seconds`."""
    result: dict = {}

    def run():
        try:
            result["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test thread
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{fn.__name__} blocked for more than {seconds}s"
    if "error" in result:
        raise result["error"]
    return result["value"]


def issue(group, filename: str) -> dict:
    """The one error issue of `group` that names `filename`."""
    found = [i for i in group.issues if i.severity == "error" and i.file == filename]
    assert len(found) == 1, group.issues
    return found[0].to_dict()


# -- symlinks --------------------------------------------------------------------------------------
def test_a_symlinked_model_directory_is_allowed_and_follows_the_link(api, tmp_path, models):
    v3, v4 = tmp_path / "v3", tmp_path / "v4"
    write_group(v3, KEY, model_json=model_json(models))
    write_group(v4, KEY, model=models["named"])  # a different model: trained with feature names
    current = tmp_path / "current"
    current.symlink_to(v3, target_is_directory=True)

    r = api.post("/api/models", json={"name": "prod", "path": str(current)})
    assert r.status_code == 201, r.text
    assert r.json()["path"] == str(current) and r.json()["status"] == "ok"  # the link, not its target
    first = api.get("/api/models/prod/model/SOLUSDT").json()["payload"]["metadata"]

    flipped = tmp_path / "current.new"
    flipped.symlink_to(v4, target_is_directory=True)
    os.replace(flipped, current)  # how deploy scripts flip a `current` link atomically
    assert api.post("/api/models/prod/refresh").status_code == 200
    second = api.get("/api/models/prod/model/SOLUSDT").json()["payload"]["metadata"]
    assert (first["model_source"], second["model_source"]) == ("json", "pkl")
    assert first["model_sha256"] != second["model_sha256"]


def test_artifact_links_inside_the_directory_are_followed(tmp_path, models):
    d = tmp_path / "models"
    write_group(d / "store", "real", model_json=model_json(models))
    for kind in ("factors.txt", "ic.csv", "model.json"):
        (d / f"{KEY}_{kind}").symlink_to(Path("store") / f"real_{kind}")
    group = load_directory(d).groups[KEY]
    assert group.status == "ok" and group.factors == FACTORS and group.ic is not None


def test_artifact_links_that_leave_the_directory_are_refused(tmp_path, models):
    outside = tmp_path / "elsewhere"
    write_group(outside, "x", model_json=model_json(models))
    d = tmp_path / "models"
    write_group(d, KEY, model_json=model_json(models))
    (d / f"{KEY}_model.json").unlink()
    (d / f"{KEY}_model.json").symlink_to(outside / "x_model.json")           # absolute
    (d / f"{KEY}_ic.csv").unlink()
    (d / f"{KEY}_ic.csv").symlink_to(Path("..") / "elsewhere" / "x_ic.csv")  # relative, via ..
    write_group(d, "ETHUSDT_mid_chg_1m", model_json=model_json(models))
    (d / "ETHUSDT_mid_chg_1m_factors.txt").unlink()
    (d / "ETHUSDT_mid_chg_1m_factors.txt").symlink_to("/etc/passwd")

    snap = load_directory(d)
    sol, eth = snap.groups[KEY], snap.groups["ETHUSDT_mid_chg_1m"]
    for group, name in [(sol, f"{KEY}_model.json"), (sol, f"{KEY}_ic.csv"), (eth, "ETHUSDT_mid_chg_1m_factors.txt")]:
        found = issue(group, name)
        assert found["code"] == "outside_root" and "outside the model directory" in found["message"]
    assert sol.status == eth.status == "error"
    assert "root:" not in json.dumps(eth.detail("m"))  # nothing of the linked file leaks out


def test_broken_and_looping_links_are_clear_issues(tmp_path, models):
    d = tmp_path / "models"
    write_group(d, KEY, model_json=model_json(models))
    (d / f"{KEY}_model.json").unlink()
    (d / f"{KEY}_model.json").symlink_to("gone.json")
    (d / f"{KEY}_ic.csv").unlink()
    (d / "loop_a").symlink_to("loop_b")
    (d / "loop_b").symlink_to("loop_a")
    (d / f"{KEY}_ic.csv").symlink_to("loop_a")
    group = within(20, load_directory, d).groups[KEY]
    broken = issue(group, f"{KEY}_model.json")
    assert broken["code"] == "broken_symlink" and "gone.json" in broken["message"]
    assert "symlink loop" in issue(group, f"{KEY}_ic.csv")["message"]


# -- things that are not files ---------------------------------------------------------------------
def test_fifos_sockets_and_directories_named_like_artifacts_are_refused_without_blocking(api, tmp_path, models):
    d = tmp_path / "models"
    write_group(d, KEY, model_json=model_json(models))
    write_group(d, "BTCUSDT_mid_chg_1m", model_json=model_json(models))
    write_group(d, "ETHUSDT_mid_chg_1m", model_json=model_json(models))
    for path in (d / f"{KEY}_model.json", d / "BTCUSDT_mid_chg_1m_factors.txt"):
        path.unlink()
        os.mkfifo(path)  # a reader that waited for a writer would block forever
    (d / "ETHUSDT_mid_chg_1m_ic.csv").unlink()
    (d / "ETHUSDT_mid_chg_1m_ic.csv").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    short = Path(tempfile.mkdtemp(prefix="mm-sock-"))  # a socket's path has at most 107 bytes; tmp_path's may not
    sock.bind(str(short / "s"))
    os.rename(short / "s", d / "XRPUSDT_mid_chg_1m_model.json")
    short.rmdir()
    write_group(d, "XRPUSDT_mid_chg_1m")
    write_group(d, "DOGEUSDT_mid_chg_1m", model_json=model_json(models))  # a clean group next to them
    try:
        snap = within(20, load_directory, d)
        expected = {KEY: f"{KEY}_model.json", "BTCUSDT_mid_chg_1m": "BTCUSDT_mid_chg_1m_factors.txt",
                    "ETHUSDT_mid_chg_1m": "ETHUSDT_mid_chg_1m_ic.csv", "XRPUSDT_mid_chg_1m": "XRPUSDT_mid_chg_1m_model.json"}
        for key, name in expected.items():
            found = issue(snap.groups[key], name)
            assert found["code"] in ("not_a_file", "unreadable"), found
            assert "not a regular file" in found["message"] or "cannot be opened" in found["message"]
        assert snap.groups["DOGEUSDT_mid_chg_1m"].status == "ok"

        # the same through the API: registered, the clean group served, the others 422 with the reason
        r = within(30, api.post, "/api/models", json={"name": "odd", "path": str(d)})
        assert r.status_code == 201, r.text
        assert api.get("/api/models/odd/model/DOGEUSDT").status_code == 200
        r = api.get("/api/models/odd/model/SOLUSDT")
        assert r.status_code == 422 and "not a regular file" in r.json()["detail"]
    finally:
        sock.close()


def test_a_fifo_named_like_a_pickle_does_not_hang_convert(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    os.mkfifo(d / f"{KEY}_model.pkl")
    result = run_cli("convert", str(d), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "not a regular file" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_devices_named_like_artifacts_are_refused(tmp_path, models):
    d = tmp_path / "models"
    write_group(d, KEY, model_json=model_json(models))
    for kind, minor in (("model.json", 5), ("ic.csv", 3)):  # /dev/zero (endless), /dev/null
        (d / f"{KEY}_{kind}").unlink()
        try:
            os.mknod(d / f"{KEY}_{kind}", stat.S_IFCHR | 0o644, os.makedev(1, minor))
        except PermissionError:
            pytest.skip("creating device nodes needs CAP_MKNOD, which this environment does not grant")
    group = within(20, load_directory, d).groups[KEY]
    for kind in ("model.json", "ic.csv"):
        found = issue(group, f"{KEY}_{kind}")
        assert found["code"] == "not_a_file" and "not a regular file" in found["message"]


# -- permissions -----------------------------------------------------------------------------------
UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]


def run_unprivileged(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI so that file permissions apply: as is, or — when the tests run as root, which
    reads anything — as root without the capabilities that bypass permission checks."""
    cmd = [sys.executable, "-m", "model_manager", *args]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a permission check fail")
        cmd = [*UNPRIVILEGED, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={**os.environ, "COLUMNS": "200"})


def test_unreadable_files_are_an_issue_naming_them(tmp_path, models):
    d = tmp_path / "models"
    write_group(d, KEY, model_json=model_json(models))
    write_group(d, "BTCUSDT_mid_chg_1m", model_json=model_json(models))
    (d / f"{KEY}_model.json").chmod(0)
    (d / "BTCUSDT_mid_chg_1m_factors.txt").chmod(0)
    result = run_unprivileged("inspect", str(d), "--json")
    assert result.returncode == 0, result.stderr
    groups = {g["group_key"]: g for g in json.loads(result.stdout)["symbols"]}
    for key, name in ((KEY, f"{KEY}_model.json"), ("BTCUSDT_mid_chg_1m", "BTCUSDT_mid_chg_1m_factors.txt")):
        errors = [i for i in groups[key]["issues"] if i["severity"] == "error" and i["file"] == name]
        assert errors and errors[0]["code"] == "unreadable" and "permission denied" in errors[0]["message"], groups[key]


def test_an_unreadable_directory_is_a_one_line_usage_error(tmp_path, models):
    d = tmp_path / "models"
    write_group(d, KEY, model_json=model_json(models))
    d.chmod(0)
    try:
        result = run_unprivileged("inspect", str(d))
    finally:
        d.chmod(0o755)
    assert result.returncode == 2 and "not readable" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


# -- size limit ------------------------------------------------------------------------------------
def _bytes_read() -> int:
    """Bytes this process has read through read() so far (/proc/self/io rchar)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_a_file_above_the_default_limit_is_refused_without_reading_it(tmp_path, models):
    d = tmp_path / "models"
    write_group(d, KEY, model_json=model_json(models))
    huge = d / "BTCUSDT_mid_chg_1m_model.json"
    write_group(d, "BTCUSDT_mid_chg_1m")
    with open(huge, "wb") as fh:
        fh.truncate(600 * 1024 * 1024)  # sparse: 600 MiB that take no disk space
    settings = Settings(data_dir=tmp_path / "data")
    assert settings.max_artifact_mb == 512

    process = psutil.Process()
    rss, read_before, started = process.memory_info().rss, _bytes_read(), time.monotonic()
    snap = within(30, load_directory, d, max_bytes=settings.max_artifact_bytes)
    assert time.monotonic() - started < 10
    assert _bytes_read() - read_before < 20 * 1024 * 1024, "the big file was read"
    assert process.memory_info().rss - rss < 100 * 1024 * 1024
    found = issue(snap.groups["BTCUSDT_mid_chg_1m"], huge.name)
    assert found["code"] == "too_large"
    assert "600.0 MiB" in found["message"] and "512 MiB" in found["message"]
    assert "MODEL_MANAGER_MAX_ARTIFACT_MB" in found["message"]
    assert snap.groups[KEY].status == "ok"


def test_the_limit_comes_from_settings_and_the_environment(api, tmp_path, models):
    d = tmp_path / "models"
    write_group(d, KEY, model_json=model_json(models), info={"note": "x" * 100_000})
    assert (d / f"{KEY}_model.json").stat().st_size < 40_000 < 60_000 < (d / f"{KEY}_info.pkl").stat().st_size
    small = Settings(data_dir=tmp_path / "data2", max_artifact_mb=0.05)  # ~51 KiB: only the info.pkl is above it
    group = load_directory(d, max_bytes=small.max_artifact_bytes).groups[KEY]
    assert issue(group, f"{KEY}_info.pkl")["code"] == "too_large"

    result = run_cli("inspect", str(d), "--json", env={"MODEL_MANAGER_MAX_ARTIFACT_MB": "0.05"})
    assert result.returncode == 0, result.stderr
    issues = json.loads(result.stdout)["symbols"][0]["issues"]
    assert [(i["code"], i["file"]) for i in issues if i["severity"] == "error"] == [("too_large", f"{KEY}_info.pkl")]
    assert load_directory(d).groups[KEY].status == "ok"  # the default limit takes it


# -- names and contents that are not UTF-8 -----------------------------------------------------------
def test_file_names_that_are_not_utf8_are_ignored_and_reported(api, good_dir, tmp_path):
    raw_dir = os.fsencode(good_dir)
    for name in (b"BAD\xff_mid_chg_1m_factors.txt", b"BAD\xff_mid_chg_1m_model.json", b"SOLUSDT_\xe9_ic.csv"):
        with open(os.path.join(raw_dir, name), "wb") as fh:
            fh.write(b"x\n")
    groups, ignored = scan_directory(good_dir)
    assert set(groups) == {KEY, "BTCUSDT_mid_chg_1m"} and len(ignored) == 3
    json.dumps(ignored, ensure_ascii=False).encode("utf-8")

    result = run_cli("inspect", str(good_dir), "--json")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert len(json.loads(result.stdout)["ignored_files"]) == 3
    r = api.post("/api/models", json={"name": "m", "path": str(good_dir)})
    assert r.status_code == 201 and r.json()["group_count"] == 2, r.text
    assert api.get("/api/models/m/symbols").status_code == 200


def test_utf8_names_that_are_not_ascii_are_served(api, tmp_path, models):
    d = tmp_path / "models"
    write_group(d, "币安USDT_mid_chg_1m", model_json=model_json(models))
    write_group(d, "ÄPFEL_ret_5m", model=models["regressor"])
    r = api.post("/api/models", json={"name": "intl", "path": str(d)})
    assert r.status_code == 201 and r.json()["status"] == "ok", r.text
    symbols = {s["symbol"] for s in api.get("/api/models/intl/symbols").json()["symbols"]}
    assert symbols == {"币安USDT", "ÄPFEL"}
    for symbol in symbols:
        r = api.get(f"/api/models/intl/model/{symbol}")
        assert r.status_code == 200 and r.json()["symbol"] == symbol


def test_a_directory_whose_path_is_not_utf8_is_refused_clearly_and_a_link_to_it_works(api, tmp_path, models):
    raw = os.path.join(os.fsencode(tmp_path), b"models-\xff")
    os.mkdir(raw)
    write_group(Path(os.fsdecode(raw)), KEY, model_json=model_json(models))
    path = os.fsdecode(raw)  # as the CLI receives it: the bad byte as a lone surrogate

    result = run_cli("register", "m", path, "--data-dir", str(tmp_path / "cli-data"))
    assert result.returncode == 2, result.stderr
    assert "not valid UTF-8" in result.stderr and "Traceback" not in result.stderr
    # JSON cannot carry such a path: a lone-surrogate escape is refused as malformed JSON, and raw
    # bytes as invalid UTF-8 — both a 400 with the reason, never a 500
    body = json.dumps({"name": "m", "path": path})
    r = api.post("/api/models", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "surrogate" in r.json()["detail"], r.text
    raw_body = b'{"name": "m", "path": "' + raw + b'"}'
    r = api.post("/api/models", content=raw_body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"], r.text

    link = tmp_path / "current"
    os.symlink(raw, os.fsencode(link))
    r = api.post("/api/models", json={"name": "m", "path": str(link)})
    assert r.status_code == 201 and r.json()["status"] == "ok", r.text
    assert api.get("/api/models/m/model/SOLUSDT").status_code == 200


@pytest.mark.parametrize("kind, content, needle", [
    ("factors.txt", "ofi_1m\nspread_bps\ndépth\n".encode("latin-1"), "not UTF-8"),
    ("factors.txt", "\n".join(FACTORS).encode("utf-16"), "not UTF-8"),
    ("ic.csv", "factor,kendall_tau\nofi_1m,0.1\n".encode("utf-16"), "not UTF-8"),
    ("ic.csv", b"factor,kendall_tau\nofi_\xe9,0.1\n", "not UTF-8"),
    ("model.json", b'{"learner": "\xff\xfe"}', "model.json"),
])
def test_contents_that_are_not_utf8_are_an_error_naming_the_file(api, tmp_path, models, kind, content, needle):
    d = tmp_path / "models"
    write_group(d, KEY, model_json=model_json(models))
    (d / f"{KEY}_{kind}").write_bytes(content)
    group = load_directory(d).groups[KEY]
    found = issue(group, f"{KEY}_{kind}")
    assert needle in found["message"], found
    r = api.post("/api/models", json={"name": "m", "path": str(d)})
    assert r.status_code == 201, r.text
    r = api.get("/api/models/m/model/SOLUSDT")
    assert r.status_code == 422 and f"{KEY}_{kind}" in r.json()["detail"]


def test_strings_a_pickle_cannot_encode_as_utf8_are_replaced_not_a_500(api, tmp_path, models):
    d = tmp_path / "models"
    info = {"symbol": "SOLUSDT", "note": "half a surrogate: \udcff", "\udcfe": "key", "b": b"\xff\x00"}
    write_group(d, KEY, model_json=model_json(models), info=info)
    r = api.post("/api/models", json={"name": "m", "path": str(d)})
    assert r.status_code == 201 and r.json()["status"] == "ok", r.text
    detail = api.get("/api/models/m/symbols/SOLUSDT").json()
    assert detail["info"]["note"].startswith("half a surrogate: \ufffd") and detail["info"]["b"] == "ff00"
    payload = api.get("/api/models/m/model/SOLUSDT")
    assert payload.status_code == 200 and payload.json()["payload"]["metadata"]["note"].endswith("\ufffd" * 3)
