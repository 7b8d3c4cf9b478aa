"""The /api/models endpoints through the real app (TestClient), with real artifacts."""
from __future__ import annotations

import gzip
import json
import pickle
import shutil
import time

import numpy as np
import pytest
import xgboost as xgb

from model_manager.auth import TOKEN_RECHECK_SECONDS
from model_manager.store import Store
from tests.support import FACTORS, bearer, make_client, sign_in, write_group


def register(api, name, path, expect=201):
    r = api.post("/api/models", json={"name": name, "path": str(path)})
    assert r.status_code == expect, r.text
    return r.json()


def test_model_endpoints_need_a_token(client, model_dir):
    for method, path in [("GET", "/api/models"), ("POST", "/api/models"), ("DELETE", "/api/models/x"),
                         ("POST", "/api/models/x/refresh"), ("GET", "/api/models/x/symbols"),
                         ("GET", "/api/models/x/factors"), ("GET", "/api/models/x/symbols/SOLUSDT"),
                         ("GET", "/api/models/x/model/SOLUSDT")]:
        r = client.request(method, path, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401, (method, path)
        assert set(r.json()) >= {"status_code", "detail"}
    assert client.get("/api/models").status_code == 401


def test_register_list_and_unregister(api, model_dir, tmp_path):
    assert api.get("/api/models").json() == {"models": []}
    model = register(api, "prod", model_dir)
    assert {k: model[k] for k in ("name", "path", "group_count", "symbol_count", "status", "error")} == {
        "name": "prod", "path": str(model_dir), "group_count": 3, "symbol_count": 3, "status": "ok", "error": None}
    assert model["registered_at"] and model["refreshed_at"]
    assert register(api, "prod", model_dir, expect=200)["name"] == "prod"
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    r = api.post("/api/models", json={"name": "prod", "path": str(other)})
    assert r.status_code == 409 and "already registered" in r.json()["detail"]
    listed = api.get("/api/models").json()["models"]
    assert [m["name"] for m in listed] == ["prod"]
    assert {g["group_key"] for g in listed[0]["groups"]} == {"SOLUSDT_mid_chg_1m", "BTCUSDT_mid_chg_1m", "ETHUSDT_mid_chg_5m"}
    assert api.delete("/api/models/prod").status_code == 204
    assert api.delete("/api/models/prod").status_code == 404
    assert api.get("/api/models").json() == {"models": []}


@pytest.mark.parametrize("body, needle", [
    ({"name": "bad name!", "path": "/tmp"}, "name: Expected `str` matching regex"),
    ({"name": "../x", "path": "/tmp"}, "name: Expected `str` matching regex"),
    ({"name": "ok", "path": "/definitely/not/here"}, "/definitely/not/here does not exist"),
    ({"name": "ok", "path": ""}, "path: Expected `str` of length >= 1"),
    ({"name": "ok", "path": "   "}, "path is empty"),
    ({"name": "ok"}, "path"),
    ({"name": 5, "path": "/tmp"}, "name: Expected `str`, got `int`"),
])
def test_register_rejects_bad_input(api, body, needle):
    r = api.post("/api/models", json=body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["detail"]


def test_register_rejects_empty_dirs_and_duplicate_symbols(api, settings, tmp_path, models):
    (tmp_path / "empty").mkdir()
    r = api.post("/api/models", json={"name": "e", "path": str(tmp_path / "empty")})
    assert r.status_code == 400 and "no model groups" in r.json()["detail"]
    d = tmp_path / "dupes"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    write_group(d, "SOLUSDT_mid_chg_5m", model=models["regressor"])
    r = api.post("/api/models", json={"name": "d", "path": str(d)})
    assert r.status_code == 400
    assert "SOLUSDT" in r.json()["detail"] and "SOLUSDT_mid_chg_1m" in r.json()["detail"] and "SOLUSDT_mid_chg_5m" in r.json()["detail"]
    # the groups were checked and their bodies built before the duplicates were known: no version is recorded
    store = Store(settings.db_path)
    try:
        assert store.query("SELECT COUNT(*) FROM versions WHERE model = 'd'")[0][0] == 0
    finally:
        store.close()
    for stale in d.glob("SOLUSDT_mid_chg_5m_*"):
        stale.unlink()
    assert api.post("/api/models", json={"name": "d", "path": str(d)}).status_code == 201
    history = api.get("/api/models/d/symbols/SOLUSDT/versions").json()
    assert [v["version"] for v in history["versions"]] == [1] and history["live_version"] == 1


def test_symbols_factors_and_detail(api, model_dir):
    register(api, "prod", model_dir)
    symbols = api.get("/api/models/prod/symbols").json()
    assert symbols["model_name"] == "prod"
    assert [s["symbol"] for s in symbols["symbols"]] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    eth = symbols["symbols"][1]
    assert eth == {**eth, "group_key": "ETHUSDT_mid_chg_5m", "return_name": "mid_chg_5m", "dim": 5,
                   "factor_count": 5, "model_source": "json", "status": "ok", "issues": []}
    factors = api.get("/api/models/prod/factors").json()
    assert factors == {**factors, "model_name": "prod", "symbol_count": 3, "group_count": 3, "factor_count": 5,
                       "factors": sorted(FACTORS)}
    detail = api.get("/api/models/prod/symbols/SOLUSDT").json()
    assert detail["factors"] == FACTORS and detail["dim"] == 5 and detail["status"] == "ok"
    assert detail["info"]["train_start"] == "2026-10-01T00:00:00+00:00"
    assert detail["ic"]["columns"] == ["factor", "ic", "rank_ic", "kendall_tau"]
    assert detail["files"]["model.pkl"] == "SOLUSDT_mid_chg_1m_model.pkl"
    assert api.get("/api/models/prod/symbols/SOLUSDT", params={"group_key": "SOLUSDT_mid_chg_1m"}).status_code == 200
    assert api.get("/api/models/prod/symbols/SOLUSDT", params={"group_key": "BTCUSDT_mid_chg_1m"}).status_code == 404
    assert api.get("/api/models/prod/symbols/NOPE").status_code == 404
    for path in ("/api/models/nope/symbols", "/api/models/nope/factors", "/api/models/nope/symbols/SOLUSDT",
                 "/api/models/nope/model/SOLUSDT"):
        r = api.get(path)
        assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_payload_gzip_identity_etag_and_predictions(api, model_dir, models):
    register(api, "prod", model_dir)
    r = api.get("/api/models/prod/model/SOLUSDT", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in r.headers["vary"].lower()
    body = r.json()
    etag = r.headers["etag"]
    plain = api.get("/api/models/prod/model/SOLUSDT", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.headers["etag"] == etag
    assert plain.content == json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    assert api.get("/api/models/prod/model/SOLUSDT", headers={"If-None-Match": etag}).status_code == 304
    assert api.get("/api/models/prod/model/SOLUSDT", headers={"If-None-Match": '"other"'}).status_code == 200

    assert body["model_name"] == "prod" and body["group_key"] == "SOLUSDT_mid_chg_1m"
    payload = body["payload"]
    assert [d["factor_name"] for d in payload["dim_factors"]] == FACTORS
    assert [d["dim"] for d in payload["dim_factors"]] == list(range(5))
    assert payload["metadata"]["model_source"] == "pkl" and payload["metadata"]["dim"] == 5
    booster = xgb.Booster()
    booster.load_model(bytearray(payload["model_json"].encode()))
    x = xgb.DMatrix(np.random.default_rng(0).normal(size=(100, 5)).astype(np.float32))
    assert booster.predict(x).tobytes() == models["regressor"].get_booster().predict(x).tobytes()


def test_payload_of_a_broken_group_is_422(api, tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_x", model=models["regressor"], factors=["a", "b"])
    write_group(d, "BTCUSDT_x", model=models["regressor"])
    register(api, "m", d)
    r = api.get("/api/models/m/model/SOLUSDT")
    assert r.status_code == 422 and "dim_mismatch" in r.json()["detail"]
    assert api.get("/api/models/m/model/BTCUSDT").status_code == 200


def test_refresh_keeps_serving_on_duplicate_symbols_and_broken_files(api, model_dir, models):
    register(api, "prod", model_dir)
    before = api.get("/api/models/prod/model/SOLUSDT", headers={"Accept-Encoding": "identity"})
    write_group(model_dir, "SOLUSDT_mid_chg_5m", model=models["regressor"])
    r = api.post("/api/models/prod/refresh")
    assert r.status_code == 400 and "SOLUSDT_mid_chg_5m" in r.json()["detail"]
    assert api.get("/api/models/prod/model/SOLUSDT", headers={"Accept-Encoding": "identity"}).content == before.content
    assert "refused" in api.get("/api/models").json()["models"][0]["error"]
    for f in model_dir.glob("SOLUSDT_mid_chg_5m_*"):
        f.unlink()
    # a truncated model: the last good payload stays in service, the group shows the issue
    pkl = model_dir / "SOLUSDT_mid_chg_1m_model.pkl"
    pkl.write_bytes(pkl.read_bytes()[:100])
    refreshed = api.post("/api/models/prod/refresh")
    assert refreshed.status_code == 200 and refreshed.json()["error"] is None
    assert api.get("/api/models/prod/model/SOLUSDT", headers={"Accept-Encoding": "identity"}).content == before.content
    detail = api.get("/api/models/prod/symbols/SOLUSDT").json()
    assert detail["stale"] is True and detail["status"] == "error"
    group = next(g for g in refreshed.json()["groups"] if g["group_key"] == "SOLUSDT_mid_chg_1m")
    assert group["outcome"] == "kept_previous" and group["stale"] is True
    # the fixed file is picked up
    pkl.write_bytes(pickle.dumps(models["named"]))
    api.post("/api/models/prod/refresh")
    after = api.get("/api/models/prod/model/SOLUSDT", headers={"Accept-Encoding": "identity"})
    assert after.headers["etag"] != before.headers["etag"]
    assert api.get("/api/models/prod/symbols/SOLUSDT").json()["stale"] is False
    assert api.post("/api/models/nope/refresh").status_code == 404


def test_large_json_responses_are_gzipped(api, demo_dir):
    register(api, "demo", demo_dir)
    r = api.get("/api/models/demo/symbols/SOLUSDT", headers={"Accept-Encoding": "gzip"})
    assert r.status_code == 200 and r.headers.get("content-encoding") == "gzip"
    r = api.get("/api/models/demo/symbols/SOLUSDT", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in r.headers


def test_restart_keeps_registry_and_uses_the_cache(settings, model_dir):
    with make_client(settings) as client:
        token = sign_in(client)
        client.headers.update(bearer(token))
        register(client, "prod", model_dir)
        first = client.get("/api/models/prod/model/SOLUSDT", headers={"Accept-Encoding": "gzip"})
    payloads = list((settings.data_dir / "versions").rglob("*.gz"))  # each group's version 1, kept in the data dir
    assert len(payloads) == 3
    with make_client(settings) as client:
        client.headers.update(bearer(token))
        assert [m["name"] for m in client.get("/api/models").json()["models"]] == ["prod"]
        second = client.get("/api/models/prod/model/SOLUSDT", headers={"Accept-Encoding": "gzip"})
        assert second.headers["etag"] == first.headers["etag"] and second.content == first.content
    assert gzip.decompress(payloads[0].read_bytes())


# -- the payload fast path: a shortcut in front of Litestar that must answer exactly as the route -----
@pytest.fixture
def served(client, demo_dir):
    """The app with the demo model registered: (app, client, auth headers, token)."""
    token = sign_in(client)
    auth = bearer(token)
    # a token check stays fresh for TOKEN_RECHECK_SECONDS (0.5 s); a slow machine must not make
    # the fast path decline in the middle of a test
    client.app.state.auth.tokens.recheck_seconds = 300
    assert client.post("/api/models", json={"name": "demo", "path": str(demo_dir)}, headers=auth).status_code == 201
    return client.app, client, auth, token


def _scope(token: str | None, path: str = "/api/models/demo/model/SOLUSDT", *, method: str = "GET",
           query: bytes = b"", extra: list[tuple[bytes, bytes]] = ()) -> dict:
    headers = [(b"host", b"testserver"), (b"accept-encoding", b"gzip")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return {"type": "http", "method": method, "path": path, "query_string": query, "headers": [*headers, *extra]}


def _compare(client, auth: dict, extra_headers: dict) -> None:
    """The same request through the fast path and through the Litestar route (a query string
    sends it there): same status, headers (but Date) and body."""
    fast = client.get("/api/models/demo/model/SOLUSDT", headers={**auth, **extra_headers})
    full = client.get("/api/models/demo/model/SOLUSDT?via=route", headers={**auth, **extra_headers})
    assert fast.status_code == full.status_code
    assert fast.content == full.content
    strip = lambda h: [(k, v) for k, v in h.multi_items() if k.lower() != "date"]  # noqa: E731
    assert strip(fast.headers) == strip(full.headers)


def test_fast_path_answers_like_the_route(served):
    app, client, auth, token = served
    # gzip, as a trading engine asks (TestClient decodes the body: compare it raw too)
    _compare(client, auth, {"Accept-Encoding": "gzip"})
    etag = client.get("/api/models/demo/model/SOLUSDT", headers=auth).headers["etag"]
    _compare(client, auth, {"Accept-Encoding": "gzip", "If-None-Match": etag})
    _compare(client, auth, {"Accept-Encoding": "identity"})  # the first plain body is decompressed by the route
    _compare(client, auth, {"Accept-Encoding": "identity"})  # then cached, and the fast path serves it
    _compare(client, auth, {"Accept-Encoding": "gzip", "If-None-Match": '"something-else"'})

    answered = app.state.fast_path.answer(_scope(token))
    assert answered is not None
    status, headers, body = answered
    assert status == 200 and (b"content-encoding", b"gzip") in headers
    payload = json.loads(gzip.decompress(body))
    assert payload["symbol"] == "SOLUSDT" and payload["payload"]["model_json"].startswith("{")
    assert (b"content-length", str(len(body)).encode()) in headers
    status, headers, body = app.state.fast_path.answer(_scope(token, extra=[(b"if-none-match", etag.encode())]))
    assert status == 304 and body == b"" and (b"etag", etag.encode()) in headers


def test_fast_path_leaves_everything_else_to_the_route(served):
    app, client, auth, token = served
    fast = app.state.fast_path.answer
    assert fast(_scope(token)) is not None  # the token was checked by the route moments ago
    assert fast(_scope(None)) is None
    assert fast(_scope("not-a-real-token")) is None
    assert fast(_scope(token, "/api/models/demo/model/NOSUCH")) is None
    assert fast(_scope(token, "/api/models/nosuch/model/SOLUSDT")) is None
    assert fast(_scope(token, "/api/models/demo/symbols/SOLUSDT")) is None
    assert fast(_scope(token, "/api/models/demo/model/SOLUSDT/")) is None
    assert fast(_scope(token, method="HEAD")) is None
    assert fast(_scope(token, query=b"x=1")) is None
    assert fast(_scope(token, extra=[(b"origin", b"http://elsewhere.example")])) is None
    assert fast(_scope(token, extra=[(b"authorization", b"Bearer other")])) is None  # repeated header
    # and the route still gives the errors their proper answers
    assert client.get("/api/models/demo/model/NOSUCH", headers=auth).status_code == 404
    r = client.get("/api/models/demo/model/SOLUSDT", headers={"Authorization": "Bearer not-a-real-token"})
    assert r.status_code == 401 and "log in again" in r.json()["detail"]
    # a logout is seen by the fast path at once
    assert client.post("/api/auth/logout", headers=auth).status_code == 204
    assert fast(_scope(token)) is None
    assert client.get("/api/models/demo/model/SOLUSDT", headers=auth).status_code == 401


def test_fast_path_sees_a_password_change_made_by_another_process(settings, client, demo_dir):
    auth = bearer(sign_in(client))
    assert client.post("/api/models", json={"name": "demo", "path": str(demo_dir)}, headers=auth).status_code == 201
    for _ in range(3):  # checked by the route, then answered by the fast path
        assert client.get("/api/models/demo/model/SOLUSDT", headers=auth).status_code == 200
    other = Store(settings.db_path)  # what `model-manager password set` does
    other.set_password("a-new-password-123")
    other.close()
    time.sleep(TOKEN_RECHECK_SECONDS + 0.05)
    for _ in range(3):
        assert client.get("/api/models/demo/model/SOLUSDT", headers=auth).status_code == 401
