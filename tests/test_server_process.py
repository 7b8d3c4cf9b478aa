"""The whole flow a new user follows, against a real `model-manager serve` process over HTTP."""
from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import xgboost as xgb

from tests.support import PASSWORD, ServerProcess, http, run_cli


def test_password_register_serve_login_and_fetch(tmp_path, demo_dir):
    data = tmp_path / "data"
    init = run_cli("password", "init", "--password-stdin", "--data-dir", str(data), input=PASSWORD + "\n")
    assert init.returncode == 0, init.stderr
    reg = run_cli("register", "demo", str(demo_dir), "--data-dir", str(data))
    assert reg.returncode == 0, reg.stderr
    with ServerProcess(data, extra_args=("--no-watch",)) as srv:
        status, _, body = srv.post("/api/auth/login", {"password": PASSWORD})
        assert status == 200, body
        token = json.loads(body)["token"]
        status, headers, raw = srv.get("/api/models/demo/model/SOLUSDT", token=token, headers={"Accept-Encoding": "gzip"})
        assert status == 200 and headers["content-encoding"] == "gzip"
        payload = json.loads(gzip.decompress(raw))
        status, _, _ = srv.get("/api/models/demo/model/SOLUSDT", token=token, headers={"If-None-Match": headers["etag"]})
        assert status == 304

    booster = xgb.Booster()
    booster.load_model(bytearray(payload["payload"]["model_json"].encode()))
    factors = [d["factor_name"] for d in payload["payload"]["dim_factors"]]
    assert factors == (demo_dir / "SOLUSDT_mid_chg_1m_factors.txt").read_text().split()
    original = pickle.loads((demo_dir / "SOLUSDT_mid_chg_1m_model.pkl").read_bytes()).get_booster()
    x = xgb.DMatrix(np.random.default_rng(3).normal(size=(500, len(factors))).astype(np.float32))
    assert booster.predict(x).tobytes() == original.predict(x).tobytes()


def test_serve_demo_on_a_fresh_data_dir(tmp_path):
    with ServerProcess(tmp_path / "data", extra_args=("--demo", "--no-watch")) as srv:
        token = srv.login()
        status, _, body = srv.get("/api/models", token=token)
        models = json.loads(body)["models"]
        assert [m["name"] for m in models] == ["demo"] and models[0]["group_count"] == 6
        assert models[0]["status"] == "ok"
        status, _, body = srv.get("/api/models/demo/symbols", token=token)
        assert {s["symbol"] for s in json.loads(body)["symbols"]} >= {"SOLUSDT", "BTCUSDT", "ETHUSDT"}
        assert http("GET", srv.url + "/")[0] == 200  # the UI
        assert http("GET", srv.url + "/schema/openapi.json")[0] == 200
    # a second start reuses the generated directory and the registration
    with ServerProcess(tmp_path / "data", extra_args=("--demo", "--no-watch")) as srv:
        status, _, body = srv.get("/api/models", token=token)
        assert status == 200 and len(json.loads(body)["models"]) == 1
