"""Versions through a real `model-manager serve` process (SPEC §6): a retrain makes version 2,
`?version=1` serves the first bytes exactly, rollback / unpin / hold / release decide what is live,
a pin set with the CLI reaches the running server, a restart keeps all of it, retention prunes
bytes but keeps records. And the `versions`, `pin`, `unpin`, `rollback`, `hold`, `release` and
`diff` commands against the same data dir."""
from __future__ import annotations

import gzip
import json
import pickle
import shutil
from pathlib import Path

import pytest
import xgboost as xgb

from .support import ServerProcess, init_password, run_cli, wait_for

PASSWORD = "correct horse battery"
KEY = "SOLUSDT_mid_chg_1m"
FACTORS = ["ofi_1m", "spread_bps", "depth_imb_5", "ret_lag_1m", "vol_5m"]
FAST_WATCH = ("--watch-debounce", "0.2", "--watch-interval", "0.5")


@pytest.fixture(scope="module")
def trainings():
    """Successive trainings of one group (different seeds and tree counts), trained once."""
    import numpy as np

    rng = np.random.default_rng(7)
    x = rng.normal(size=(80, len(FACTORS))).astype(np.float32)
    y = x @ np.array([0.5, -0.2, 0.0, 0.3, 0.1]) + rng.normal(scale=0.1, size=80)
    return [xgb.XGBRegressor(n_estimators=3 + i, max_depth=2, n_jobs=1, random_state=i).fit(x, y) for i in range(5)]


def write_training(directory: Path, model, *, tau: float = 0.05, info: dict | None = None) -> None:
    """Write (or retrain in place) the SOLUSDT group; the pickle is replaced atomically, as a careful
    training job does."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{KEY}_factors.txt").write_text("\n".join(FACTORS) + "\n")
    (directory / f"{KEY}_ic.csv").write_text("factor,ic,kendall_tau\n" + "".join(
        f"{f},0.0{i + 1},{tau * (i + 1):.4f}\n" for i, f in enumerate(FACTORS)))
    (directory / f"{KEY}_info.pkl").write_bytes(pickle.dumps(info or {"n_estimators": model.n_estimators}))
    tmp = directory / f".{KEY}_model.pkl.tmp"
    tmp.write_bytes(pickle.dumps(model))
    tmp.replace(directory / f"{KEY}_model.pkl")


class Client:
    """The server and a token, with the few calls these tests make."""

    def __init__(self, server: ServerProcess, token: str):
        self.server, self.token = server, token

    def call(self, method: str, path: str, body: dict | None = None, **kw) -> tuple[int, dict, bytes]:
        from .support import http

        return http(method, self.server.url + path, token=self.token, body=body, **kw)

    def json(self, method: str, path: str, body: dict | None = None, expect: int = 200) -> dict:
        status, _, raw = self.call(method, path, body)
        assert status == expect, (status, raw[:500])
        return json.loads(raw) if raw else {}

    def payload(self, query: str = "", **headers) -> tuple[int, str, bytes]:
        """(status, ETag, plain body) of SOLUSDT's payload."""
        status, got, raw = self.call("GET", f"/api/models/m/model/SOLUSDT{query}", headers=headers)
        return status, got.get("etag", ""), raw

    def versions(self) -> dict:
        return self.json("GET", "/api/models/m/symbols/SOLUSDT/versions")


def version_of(body: bytes) -> int:
    return json.loads(body)["payload"]["metadata"]["version"]


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    init_password(d, PASSWORD)
    return d


def start(data_dir: Path, *args: str, env: dict | None = None) -> tuple[ServerProcess, Client]:
    server = ServerProcess(data_dir, extra_args=args, env=env)
    server.start()
    status, _, raw = server.post("/api/auth/login", {"password": PASSWORD})
    assert status == 200, raw
    return server, Client(server, json.loads(raw)["token"])


def audit_details(data_dir: Path, event: str) -> list[str]:
    done = run_cli("audit", "-e", event, "--json", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    return [e["detail"] for e in json.loads(done.stdout)["events"]]


def test_retrain_rollback_hold_release_and_restart(tmp_path, data_dir, trainings):
    models = tmp_path / "models"
    write_training(models, trainings[0])
    server, api = start(data_dir, "--no-watch")
    try:
        api.json("POST", "/api/models", {"name": "m", "path": str(models)}, expect=201)
        state = api.versions()
        assert (state["live_version"], state["latest_version"], state["pinned_version"], state["held"]) == (1, 1, None, False)
        assert [v["version"] for v in state["versions"]] == [1] and state["versions"][0]["live"]
        status, etag1, body1 = api.payload()
        assert status == 200 and version_of(body1) == 1
        api.json("POST", "/api/models/m/symbols/SOLUSDT/rollback", {"reason": "nothing before"}, expect=409)

        # a retrain makes version 2, served at once; the same files again make none
        write_training(models, trainings[1])
        api.json("POST", "/api/models/m/refresh")
        api.json("POST", "/api/models/m/refresh")
        state = api.versions()
        assert (state["live_version"], state["latest_version"]) == (2, 2)
        assert [v["version"] for v in state["versions"]] == [2, 1]
        old = state["versions"][1]
        assert old["live_from"] and old["live_until"] and not old["live"]
        status, etag2, body2 = api.payload()
        assert status == 200 and version_of(body2) == 2 and etag2 != etag1

        # ?version=1: exactly the first bytes, their ETag, and 304 on it
        status, etag, body = api.payload("?version=1")
        assert (status, etag, body) == (200, etag1, body1)
        status, headers, raw = api.call("GET", "/api/models/m/model/SOLUSDT?version=1", headers={"Accept-Encoding": "gzip"})
        assert status == 200 and headers["content-encoding"] == "gzip" and gzip.decompress(raw) == body1
        assert api.payload("?version=1", **{"If-None-Match": etag1})[0] == 304
        assert api.payload("", **{"If-None-Match": etag1})[0] == 200  # the live one is v2
        assert api.payload("", **{"If-None-Match": etag2})[0] == 304

        # rollback serves v1's bytes again; a second rollback has nowhere to go; unpin returns to v2
        state = api.json("POST", "/api/models/m/symbols/SOLUSDT/rollback", {"reason": "v2 trades badly"})
        assert (state["live_version"], state["pinned_version"]) == (1, 1)
        assert api.payload() == (200, etag1, body1)
        conflict = api.json("POST", "/api/models/m/symbols/SOLUSDT/rollback", None, expect=409)
        assert "nothing to roll back" in conflict["detail"]
        state = api.json("DELETE", "/api/models/m/symbols/SOLUSDT/pin?reason=fixed")
        assert (state["live_version"], state["pinned_version"]) == (2, None)
        assert api.payload() == (200, etag2, body2)

        # a hold keeps v2 live while v3 is recorded; release serves v3
        model = api.json("POST", "/api/models/m/hold", {"reason": "look first"})
        assert model["held"] is True
        write_training(models, trainings[2])
        api.json("POST", "/api/models/m/refresh")
        state = api.versions()
        assert (state["live_version"], state["latest_version"], state["held"]) == (2, 3, True)
        assert api.payload() == (200, etag2, body2)
        assert version_of(api.payload("?version=3")[2]) == 3
        model = api.json("DELETE", "/api/models/m/hold?reason=looked")
        assert model["held"] is False
        status, etag3, body3 = api.payload()
        assert status == 200 and version_of(body3) == 3
        assert api.versions()["live_version"] == 3

        # a pin set with the CLI reaches the running server (it polls the store), within seconds
        pinned = run_cli("pin", "m", "SOLUSDT", "1", "--reason", "from the shell", "--data-dir", str(data_dir))
        assert pinned.returncode == 0, pinned.stderr
        assert pinned.stdout.strip() == "SOLUSDT now serves v1 (pinned; was v3)"
        wait_for(lambda: api.payload()[1] == etag1, timeout=15, what="the CLI pin being served")
        assert api.payload()[2] == body1
        api.json("POST", "/api/models/m/hold", {"reason": "before the restart"})

        # the diff between the latest two versions
        diff = api.json("GET", "/api/models/m/symbols/SOLUSDT/diff")
        assert (diff["from"]["version"], diff["to"]["version"]) == (2, 3)
        history = {v["version"]: v for v in api.json("GET", "/api/models/m/symbols/SOLUSDT/versions")["versions"]}
        assert diff["from"] == history[2] and diff["to"] == history[3]  # live periods included
        assert diff["from"]["live_periods"]
        assert diff["model"]["num_trees"] == {"from": 4, "to": 5}
        assert diff["predictions"]["rows"] > 0 and diff["predictions"]["correlation"] is not None
        assert diff["info"]["changed"]["n_estimators"] == {"from": 4, "to": 5}
    finally:
        server.stop()

    reasons = {"rollback": "v2 trades badly", "unpin": "fixed", "hold": "look first", "release": "looked", "pin": "from the shell"}
    for event, reason in reasons.items():
        assert any(reason in detail for detail in audit_details(data_dir, event)), event

    # a restart keeps the versions, the pin and the hold
    server, api = start(data_dir, "--no-watch")
    try:
        state = api.versions()
        assert [v["version"] for v in state["versions"]] == [3, 2, 1]
        assert (state["live_version"], state["pinned_version"], state["held"]) == (1, 1, True)
        assert state["pin"]["reason"] == "from the shell" and state["hold"]["reason"] == "before the restart"
        assert api.payload() == (200, etag1, body1)
        assert api.payload("?version=2") == (200, etag2, body2)
        assert api.payload("?version=3") == (200, etag3, body3)
        assert api.json("GET", "/api/models")["models"][0]["held"] is True

        # unknown things are 404s
        assert api.payload("?version=4")[0] == 404
        assert api.call("POST", "/api/models/m/symbols/SOLUSDT/pin", {"version": 9})[0] == 404
        assert api.call("GET", "/api/models/m/symbols/NOPE/versions")[0] == 404
        assert api.call("GET", "/api/models/nope/symbols/SOLUSDT/versions")[0] == 404
        assert api.call("POST", "/api/models/nope/hold", {})[0] == 404
        assert api.call("DELETE", "/api/models/nope/hold")[0] == 404
        assert api.call("GET", "/api/models/m/symbols/SOLUSDT/diff?from=9")[0] == 404
        assert api.call("POST", "/api/models/m/symbols/SOLUSDT/pin", {"version": 0})[0] == 400
        status, _, raw = api.call("GET", "/api/models/m/symbols/SOLUSDT/diff?from=abc")
        assert status == 400 and "from:" in json.loads(raw)["detail"] and "from_" not in json.loads(raw)["detail"]
        assert "Traceback" not in server.output()
    finally:
        server.stop()


def test_retention_prunes_bytes_and_keeps_records(tmp_path, data_dir, trainings):
    """MODEL_MANAGER_KEEP_VERSIONS=2; retrains arrive through the watcher."""
    models = tmp_path / "models"
    write_training(models, trainings[0])
    server, api = start(data_dir, *FAST_WATCH, env={"MODEL_MANAGER_KEEP_VERSIONS": "2"})
    try:
        api.json("POST", "/api/models", {"name": "m", "path": str(models)}, expect=201)
        for number, model in enumerate(trainings[1:4], start=2):
            write_training(models, model)
            wait_for(lambda n=number: api.versions()["latest_version"] == n, timeout=30, what=f"version {number}")
        state = api.versions()
        pruned = {v["version"]: v["pruned"] for v in state["versions"]}
        # kept: the newest two (4, 3); 3 is also the rollback target; 1 and 2 lose their bytes
        assert pruned == {4: False, 3: False, 2: True, 1: True}
        assert state["live_version"] == 4
        assert api.payload("?version=1")[0] == 404
        assert "pruned" in json.loads(api.payload("?version=2")[2])["detail"]
        assert api.payload("?version=3")[0] == 200
        conflict = api.json("POST", "/api/models/m/symbols/SOLUSDT/pin", {"version": 1}, expect=409)
        assert "pruned" in conflict["detail"]
        # a diff with a pruned version still compares what its record keeps
        diff = api.json("GET", "/api/models/m/symbols/SOLUSDT/diff?from=1&to=4")
        assert diff["predictions"] is None and "pruned" in diff["predictions_note"]
        assert diff["model"]["num_trees"] == {"from": 3, "to": 6}
        # rolling back pins 3; the pinned version survives further retrains
        api.json("POST", "/api/models/m/symbols/SOLUSDT/rollback", {"reason": "keep 3"})
        write_training(models, trainings[4])
        wait_for(lambda: api.versions()["latest_version"] == 5, timeout=30, what="version 5")
        state = api.versions()
        assert state["live_version"] == 3 and {v["version"]: v["pruned"] for v in state["versions"]}[3] is False
        assert version_of(api.payload()[2]) == 3
    finally:
        server.stop()


# -- the CLI -----------------------------------------------------------------------------------------
def assert_one_line_error(result, code: int, *needles: str) -> None:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def _recorded_template(tmp_path_factory, trainings):
    """A data dir whose model `m` has versions 1 and 2 of SOLUSDT, recorded by a real server (once)."""
    root = tmp_path_factory.mktemp("recorded")
    data_dir, models = root / "data", root / "models"
    init_password(data_dir, PASSWORD)
    write_training(models, trainings[0], tau=0.05, info={"window": "2026-10"})
    done = run_cli("register", "m", str(models), "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    server, api = start(data_dir, "--no-watch")  # its first load records v1
    try:
        assert api.versions()["latest_version"] == 1
        write_training(models, trainings[1], tau=0.03, info={"window": "2026-11", "added_key": 1})
        api.json("POST", "/api/models/m/refresh")
        assert api.versions()["latest_version"] == 2
    finally:
        server.stop()
    return data_dir


@pytest.fixture
def recorded(tmp_path, _recorded_template):
    """A fresh copy of that data dir (the model directory it registers is shared, and never changed)."""
    data_dir = tmp_path / "data"
    shutil.copytree(_recorded_template, data_dir)
    return data_dir


def cli(data_dir: Path, *args: str):
    return run_cli(*args, "--data-dir", str(data_dir))


def test_cli_help_for_every_versions_command():
    for command in ("versions", "pin", "unpin", "rollback", "hold", "release", "diff"):
        helped = run_cli(command, "--help")
        assert helped.returncode == 0, (command, helped.stderr)
        assert "Usage" in helped.stdout and "--json" in helped.stdout and "--data-dir" in helped.stdout


def test_cli_versions_table_and_json(recorded):
    table = cli(recorded, "versions", "m", "SOLUSDT")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("m / SOLUSDT (SOLUSDT_mid_chg_1m)") and "live v2" in lines[0] and "latest v2" in lines[0]
    for heading in ("version", "created", "live from", "live until", "dim", "factors", "source", "status", "pruned"):
        assert heading in lines[1], lines[1]
    v2 = next(line for line in lines if line.strip().startswith("v2"))
    v1 = next(line for line in lines if line.strip().startswith("v1"))
    assert " live " in v2 and "now" in v2 and "pkl" in v2 and "ok" in v2
    assert " live " not in v1 and v1.count("20") >= 3  # created, live from, live until
    state = json.loads(cli(recorded, "versions", "m", "SOLUSDT", "--json").stdout)
    assert set(state) >= {"model_name", "symbol", "group_key", "live_version", "latest_version", "pinned_version",
                          "held", "versions"}
    assert [v["version"] for v in state["versions"]] == [2, 1]
    assert set(state["versions"][0]) >= {"version", "etag", "model_sha256", "created_at", "live", "pinned", "live_from",
                                         "live_until", "dim", "factor_count", "model_source", "status", "pruned"}


def test_cli_pin_unpin_rollback_hold_release(recorded):
    done = cli(recorded, "rollback", "m", "SOLUSDT", "--reason", "bad fills")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "SOLUSDT rolled back: now serves v1 (pinned; was v2)"
    table = cli(recorded, "versions", "m", "SOLUSDT").stdout
    assert "pinned v1" in table.splitlines()[0] and "(bad fills)" in table.splitlines()[0]
    assert " pinned " in next(line for line in table.splitlines() if line.strip().startswith("v1"))
    assert_one_line_error(cli(recorded, "rollback", "m", "SOLUSDT"), 1, "nothing to roll back")

    done = cli(recorded, "unpin", "m", "SOLUSDT", "--json")
    assert done.returncode == 0, done.stderr
    assert (json.loads(done.stdout)["live_version"], json.loads(done.stdout)["pinned_version"]) == (2, None)
    assert cli(recorded, "unpin", "m", "SOLUSDT").stdout.strip() == "SOLUSDT was not pinned; it serves v2 (latest)"

    done = cli(recorded, "pin", "m", "SOLUSDT", "1", "--reason", "first", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["pinned_version"] == 1
    pin = json.loads(done.stdout)["pin"]
    assert cli(recorded, "pin", "m", "SOLUSDT", "1").stdout.strip() == "SOLUSDT now serves v1 (pinned; unchanged)"
    assert json.loads(cli(recorded, "versions", "m", "SOLUSDT", "--json").stdout)["pin"] == pin  # the same pin
    again = json.loads(cli(recorded, "pin", "m", "SOLUSDT", "1", "--reason", "second", "--json").stdout)["pin"]
    assert again == {**pin, "reason": "second"}  # a new reason, the same pin since the same time
    assert cli(recorded, "unpin", "m", "SOLUSDT").stdout.strip() == "SOLUSDT now serves v2 (latest; was v1)"

    held = cli(recorded, "hold", "m", "--reason", "review")
    assert held.returncode == 0 and held.stdout.startswith("m held: new versions are recorded but not served")
    assert cli(recorded, "hold", "m").stdout.startswith("m was already held (since 20")
    assert json.loads(cli(recorded, "versions", "m", "SOLUSDT", "--json").stdout)["held"] is True
    assert "held since" in cli(recorded, "versions", "m", "SOLUSDT").stdout.splitlines()[0]
    released = cli(recorded, "release", "m", "--json")
    assert released.returncode == 0 and json.loads(released.stdout)["held"] is False
    assert cli(recorded, "release", "m").stdout.strip() == "m was not held"
    assert any("review" in d for d in audit_details(recorded, "hold"))
    assert any("bad fills" in d for d in audit_details(recorded, "rollback"))


def test_cli_diff(recorded):
    shown = cli(recorded, "diff", "m", "SOLUSDT")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert out.splitlines()[0].startswith("SOLUSDT  v1 → v2")
    for part in ("Factors", "dim 5 (unchanged)", "the same factors", "IC: kendall_tau per factor", "█",
                 "Training metadata", "~ window", '2026-10 → 2026-11', "+ added_key", "Model", "trees 3 → 4",
                 "Prediction agreement", "1000 fixed pseudo-random rows", "correlation"):
        assert part in out, (part, out)
    # every kendall_tau fell (by 0.02 per dimension step): the largest drop (vol_5m) comes first
    ic = out.split("IC: kendall_tau")[1].split("Training metadata")[0]
    assert ic.index("vol_5m") < ic.index("ofi_1m") and "-0.1000" in ic and "-0.0200" in ic

    as_json = json.loads(cli(recorded, "diff", "m", "SOLUSDT", "--from", "1", "--to", "2", "--json").stdout)
    assert set(as_json) >= {"from", "to", "factors", "dim", "ic", "info", "model", "predictions"}
    assert as_json["info"]["changed"]["window"] == {"from": "2026-10", "to": "2026-11"}
    assert as_json["predictions"]["rows"] == 1000

    ic_metric = cli(recorded, "diff", "m", "SOLUSDT", "--metric", "ic", "--top", "2")
    assert ic_metric.returncode == 0 and "IC: ic per factor" in ic_metric.stdout
    assert_one_line_error(cli(recorded, "diff", "m", "SOLUSDT", "--metric", "sharpe"), 2, "sharpe", "kendall_tau")
    assert_one_line_error(cli(recorded, "diff", "m", "SOLUSDT", "--to", "1"), 2, "no version before v1")
    assert_one_line_error(cli(recorded, "diff", "m", "SOLUSDT", "--from", "7"), 2, "no version 7")


def test_cli_errors(recorded, tmp_path):
    assert_one_line_error(cli(recorded, "versions", "nope", "SOLUSDT"), 2, "nope")
    assert_one_line_error(cli(recorded, "versions", "m", "NOPE"), 2, "NOPE")
    assert_one_line_error(cli(recorded, "pin", "m", "SOLUSDT", "9"), 2, "no version 9")
    assert_one_line_error(cli(recorded, "hold", "nope"), 2, "nope")
    assert_one_line_error(cli(recorded, "release", "nope"), 2, "nope")
    assert_one_line_error(cli(tmp_path / "empty", "versions", "m", "SOLUSDT"), 2, "no database")
    assert not (tmp_path / "empty" / "model-manager.sqlite3").exists()
    for bad in (("pin", "m", "SOLUSDT", "0"), ("pin", "m", "SOLUSDT", "x"), ("pin", "m"), ("versions",)):
        result = cli(recorded, *bad)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (bad, result.stderr)
