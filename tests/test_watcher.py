"""The watcher against a real `model-manager serve` process and real files (SPEC §3)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import time

import numpy as np
import pytest
import xgboost as xgb

from model_manager.files import atomic_write
from tests.support import FACTORS, ServerProcess, run_cli, write_group

DEBOUNCE = 0.5
INTERVAL = 1.0
# the longest any test waits for one change: generous, since a loaded two-core machine is slow and
# timing belongs to bench/ (a change is usually seen within INTERVAL + DEBOUNCE)
DEADLINE = 10.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("watch-data")
    with ServerProcess(data, extra_args=("--watch-debounce", str(DEBOUNCE), "--watch-interval", str(INTERVAL))) as srv:
        srv.token = srv.login()
        yield srv


def register(server, name, path):
    status, _, body = server.post("/api/models", {"name": name, "path": str(path)}, token=server.token)
    assert status == 201, body


def payload(server, name, symbol, **headers):
    return server.get(f"/api/models/{name}/model/{symbol}", token=server.token, headers={"Accept-Encoding": "identity", **headers})


def model_info(server, name):
    status, _, body = server.get("/api/models", token=server.token)
    assert status == 200
    return next((m for m in json.loads(body)["models"] if m["name"] == name), None)


def wait_for(predicate, timeout=DEADLINE, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout:.1f}s")


def retrained(models, seed):
    """A model as the next training run would leave it: same factors, other trees."""
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(60, len(FACTORS))).astype("float32")
    return xgb.XGBRegressor(n_estimators=4, max_depth=2, n_jobs=1, random_state=seed).fit(data, rng.normal(size=60))


def test_atomic_replace_serves_the_new_model(server, tmp_path, models):
    d = tmp_path / "m1"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    register(server, "w-atomic", d)
    _, headers, _ = payload(server, "w-atomic", "SOLUSDT")
    old_etag = headers["ETag"]
    start = time.monotonic()
    atomic_write(d / "SOLUSDT_mid_chg_1m_model.pkl", pickle.dumps(retrained(models, 7)))
    wait_for(lambda: payload(server, "w-atomic", "SOLUSDT")[1]["ETag"] != old_etag, DEADLINE, "new ETag")
    assert time.monotonic() - start <= DEADLINE


def test_half_written_json_keeps_the_last_good_payload(server, tmp_path, models):
    d = tmp_path / "m2"
    good = bytes(models["booster"].save_raw(raw_format="json"))
    write_group(d, "ETHUSDT_mid_chg_5m", model_json=good)
    register(server, "w-trunc", d)
    status, headers, before = payload(server, "w-trunc", "ETHUSDT")
    assert status == 200
    new = bytes(retrained(models, 3).get_booster().save_raw(raw_format="json"))
    target = d / "ETHUSDT_mid_chg_5m_model.json"
    with open(target, "wb") as fh:  # a writer that is half-way through
        fh.write(new[: len(new) // 2])
        fh.flush()
        wait_for(lambda: next(g for g in model_info(server, "w-trunc")["groups"])["outcome"] == "kept_previous",
                 what="broken file noticed")
        status, _, during = payload(server, "w-trunc", "ETHUSDT")
        assert status == 200 and during == before  # byte-identical old payload
        detail = json.loads(server.get("/api/models/w-trunc/symbols/ETHUSDT", token=server.token)[2])
        assert detail["stale"] is True and detail["status"] == "error"
        assert any(i["file"] == "ETHUSDT_mid_chg_5m_model.json" for i in detail["issues"])
        fh.write(new[len(new) // 2:])
    wait_for(lambda: payload(server, "w-trunc", "ETHUSDT")[1]["ETag"] != headers["ETag"], what="completed file picked up")
    body = json.loads(payload(server, "w-trunc", "ETHUSDT")[2])
    assert body["payload"]["model_json"].encode() == new


def test_groups_appear_and_disappear_and_duplicates_are_refused(server, tmp_path, models):
    d = tmp_path / "m3"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    register(server, "w-groups", d)
    write_group(d, "BTCUSDT_mid_chg_1m", model=models["booster"])
    wait_for(lambda: payload(server, "w-groups", "BTCUSDT")[0] == 200, what="added group served")
    for f in d.glob("BTCUSDT_*"):
        f.unlink()
    wait_for(lambda: payload(server, "w-groups", "BTCUSDT")[0] == 404, what="deleted group gone")
    _, _, sol_before = payload(server, "w-groups", "SOLUSDT")
    write_group(d, "SOLUSDT_mid_chg_5m", model=models["regressor"])
    error = wait_for(lambda: (model_info(server, "w-groups") or {}).get("error"), what="duplicate refused")
    assert "SOLUSDT" in error and "SOLUSDT_mid_chg_5m" in error
    assert payload(server, "w-groups", "SOLUSDT")[2] == sol_before
    for f in d.glob("SOLUSDT_mid_chg_5m_*"):
        f.unlink()
    wait_for(lambda: model_info(server, "w-groups")["error"] is None, what="error cleared")


def test_directory_deleted_and_recreated_keeps_being_watched(server, tmp_path, models):
    d = tmp_path / "m4"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    register(server, "w-recreate", d)
    _, headers, before = payload(server, "w-recreate", "SOLUSDT")
    backup = tmp_path / "backup"
    shutil.copytree(d, backup)
    shutil.rmtree(d)
    wait_for(lambda: model_info(server, "w-recreate")["error"], what="vanished directory reported")
    assert payload(server, "w-recreate", "SOLUSDT")[2] == before  # still serving meanwhile
    shutil.copytree(backup, d)
    wait_for(lambda: model_info(server, "w-recreate")["error"] is None, what="directory back")
    atomic_write(d / "SOLUSDT_mid_chg_1m_model.pkl", pickle.dumps(retrained(models, 11)))
    wait_for(lambda: payload(server, "w-recreate", "SOLUSDT")[1]["ETag"] != headers["ETag"], what="change after recreate")


def test_cli_registration_is_picked_up(server, tmp_path, models):
    d = tmp_path / "m5"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    added = run_cli("register", "w-cli", str(d), "--data-dir", str(server.data_dir))
    assert added.returncode == 0, added.stderr
    wait_for(lambda: model_info(server, "w-cli"), what="CLI registration")
    assert payload(server, "w-cli", "SOLUSDT")[0] == 200
    removed = run_cli("register", "--remove", "w-cli", "--data-dir", str(server.data_dir))
    assert removed.returncode == 0, removed.stderr
    wait_for(lambda: model_info(server, "w-cli") is None, what="CLI unregistration")


def test_rapid_writes_cause_one_parse(server, tmp_path, models):
    d = tmp_path / "m6"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    write_group(d, "BTCUSDT_mid_chg_1m", model=models["booster"])
    register(server, "w-burst", d)

    def generations():
        return {g["group_key"]: g["generation"] for g in model_info(server, "w-burst")["groups"]}

    start = generations()
    blob = pickle.dumps(retrained(models, 5))
    target = d / "SOLUSDT_mid_chg_1m_model.pkl"
    for i in range(40):  # 40 writes back to back: never quiet for the debounce time (a sleep between them
        with open(target, "wb") as fh:  # could, on a loaded machine, stretch into a real pause)
            fh.write(blob[: (i + 1) * len(blob) // 40])
    wait_for(lambda: generations()["SOLUSDT_mid_chg_1m"] > start["SOLUSDT_mid_chg_1m"], what="re-parse")
    time.sleep(DEBOUNCE + 0.3)
    after = generations()
    assert after["SOLUSDT_mid_chg_1m"] == start["SOLUSDT_mid_chg_1m"] + 1
    assert after["BTCUSDT_mid_chg_1m"] == start["BTCUSDT_mid_chg_1m"]  # the other group was not re-read
    assert payload(server, "w-burst", "SOLUSDT")[0] == 200


def test_symlinked_directory_follows_the_link(server, tmp_path, models):
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    write_group(v1, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    write_group(v2, "SOLUSDT_mid_chg_1m", model=retrained(models, 21))
    current = tmp_path / "current"
    current.symlink_to(v1)
    register(server, "w-link", current)
    _, headers, _ = payload(server, "w-link", "SOLUSDT")
    tmp_link = tmp_path / "current.new"
    tmp_link.symlink_to(v2)
    os.replace(tmp_link, current)  # the usual atomic flip
    wait_for(lambda: payload(server, "w-link", "SOLUSDT")[1]["ETag"] != headers["ETag"], what="flipped link followed")
    assert model_info(server, "w-link")["path"] == str(current)


def test_server_stops_cleanly_on_sigint(tmp_path):
    srv = ServerProcess(tmp_path / "data", extra_args=("--watch-debounce", "0.2"))
    srv.start()
    start = time.monotonic()
    code = srv.stop()
    assert time.monotonic() - start < 10  # not held up until the kill
    assert code == 0, srv.output()
    assert "Traceback" not in srv.output()


def test_sigterm_too(tmp_path):
    import signal

    srv = ServerProcess(tmp_path / "data")
    srv.start()
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=10) == 0
    assert "Traceback" not in srv.output()


def test_a_log_file_in_the_parent_directory_does_not_feed_the_watcher(tmp_path, models):
    # The parent of a model directory is watched (to see the directory replaced). The server's own
    # log file there must not make it react to its own writes: no "change detected" loop, no re-reads.
    parent = tmp_path / "work"
    d = parent / "models"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    log_file = parent / "server.log"
    args = ("--watch-debounce", str(DEBOUNCE), "--watch-interval", str(INTERVAL))
    with ServerProcess(tmp_path / "data", extra_args=args, log_file=log_file) as srv:
        srv.token = srv.login()
        register(srv, "w-parent", d)
        assert payload(srv, "w-parent", "SOLUSDT")[0] == 200
        # a change in the model directory is picked up: the watch (of it and of its parent) is running
        first = model_info(srv, "w-parent")["groups"][0]["generation"]
        atomic_write(d / "SOLUSDT_mid_chg_1m_model.pkl", pickle.dumps(retrained(models, 13)))
        wait_for(lambda: model_info(srv, "w-parent")["groups"][0]["generation"] > first, what="change in the model directory")
        # the rewrite may arrive as events in two debounce windows (temp file, then rename): let it settle
        before = None
        while before != (now := model_info(srv, "w-parent")["groups"][0]["generation"]):
            before = now
            time.sleep(DEBOUNCE + 1)
        (parent / "notes.txt").write_text("one touch in the parent")
        (parent / "SOLUSDT_mid_chg_1m_model.pkl").write_bytes(b"named like an artifact, but not in the model directory")
        time.sleep(DEBOUNCE + 1)
        size = log_file.stat().st_size
        time.sleep(3)  # no requests meanwhile: anything written now, the server wrote on its own
        assert log_file.stat().st_size == size, log_file.read_text()[size:][:2000]
        assert model_info(srv, "w-parent")["groups"][0]["generation"] == before
    assert "change detected" not in log_file.read_text() and "changes detected" not in log_file.read_text()


def test_only_events_about_a_model_directory_count(tmp_path):
    from model_manager.watcher import event_target

    root = str(tmp_path / "models")
    dirs = {root: "m"}
    assert event_target(root, dirs) == ("m", "*") and event_target(root + "/", dirs) == ("m", "*")
    assert event_target(f"{root}/SOLUSDT_x_model.ubj", dirs) == ("m", "SOLUSDT_x")
    assert event_target(f"{root}/README.md", dirs) is None
    assert event_target(str(tmp_path / "server.log"), dirs) is None
    assert event_target(str(tmp_path / "SOLUSDT_x_model.pkl"), dirs) is None  # in the parent, not the model directory


def test_ubj_group_is_served_and_a_stale_pair_is_not(server, tmp_path, models):
    d = tmp_path / "m-ubj"
    write_group(d, "SOLUSDT_mid_chg_1m")
    models["regressor"].save_model(d / "SOLUSDT_mid_chg_1m_model.ubj")
    register(server, "w-ubj", d)
    status, headers, body = payload(server, "w-ubj", "SOLUSDT")
    assert status == 200, body
    served = json.loads(body)["payload"]
    assert served["metadata"]["model_source"] == "ubj"
    booster = xgb.Booster()
    booster.load_model(bytearray(served["model_json"].encode()))  # XGBoost JSON text
    rows = xgb.DMatrix(np.random.default_rng(1).normal(size=(20, len(FACTORS))).astype("float32"))
    assert booster.predict(rows).tobytes() == models["regressor"].get_booster().predict(rows).tobytes()
    # a pickle of another model appears beside it: the pair disagrees, the last good payload stays
    atomic_write(d / "SOLUSDT_mid_chg_1m_model.pkl", pickle.dumps(retrained(models, 17)))
    wait_for(lambda: model_info(server, "w-ubj")["groups"][0]["outcome"] == "kept_previous", what="disagreement noticed")
    detail = json.loads(server.get("/api/models/w-ubj/symbols/SOLUSDT", token=server.token)[2])
    assert detail["status"] == "error" and any(i["code"] == "model_files_disagree" for i in detail["issues"])
    assert payload(server, "w-ubj", "SOLUSDT")[1]["ETag"] == headers["ETag"]
