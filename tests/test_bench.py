"""The benchmark suite (bench/) and the payload fast path it led to.

`test_quick_bench_runs` runs `python -m bench --quick` for real (wrk, nginx, real servers, real
XGBoost models) so the bench cannot rot; its targets are only checked in the full run. The fast-path
tests prove that the shortcut in front of Litestar answers exactly as the full route does.
"""
from __future__ import annotations

import csv
import gzip
import json
import os
import subprocess
import sys
import time

import pytest
from litestar.testing import TestClient

from model_manager.server.app import create_app
from model_manager.settings import Settings
from model_manager.store import Store
from tests.support import REPO

PASSWORD = "bench-test-password"


def _bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_quick_bench_runs(tmp_path):
    from bench.tools import BenchError, ensure_tools

    try:
        ensure_tools()
    except BenchError as exc:
        pytest.skip(str(exc))
    out = tmp_path / "results.json"
    done = _bench("--quick", "--run-dir", str(tmp_path / "run"), "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads(out.read_text())
    f = result["figures"]
    assert result["mode"] == "quick" and result["groups"] == 20
    # every figure was measured, in the same run
    for mode in ("gzip", "identity", "not_modified"):
        for who in ("model_manager", "nginx"):
            r = f["throughput"][mode][who]
            assert r["req_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"], (mode, who, r)
            assert not any(r["errors"].values()), (mode, who, r["errors"])
    assert f["irreducible_s"] > 0 and f["cold_start_s"] > 0 and f["warm_restart_s"] > 0
    assert 0 < f["payload_gzip_bytes"] < f["payload_raw_bytes"]
    assert f["rss_after_load_bytes"] > 0 and f["rss_after_cold_bytes"] > 0
    (refresh,) = f["refresh"]
    assert refresh["groups"] == 10 and len(refresh["samples_s"]) == 3
    # a refresh cannot be seen before the debounce has passed: the watcher really waited for quiet files
    assert min(refresh["samples_s"]) >= result["debounce_s"]

    # the printed table carries every target with its verdict; quick mode does not enforce them
    names = {t["name"] for t in result["targets"]}
    assert {"gzip_rps_vs_nginx", "identity_rps_vs_nginx", "not_modified_rps_vs_nginx", "gzip_p99_vs_nginx",
            "cold_vs_irreducible", "warm_vs_cold", "refresh_10_s", "rss_bytes"} <= names
    for target in result["targets"]:
        assert target["pass"] == (target["value"] >= target["limit"] if target["op"] == ">=" else target["value"] <= target["limit"])
        assert target["what"] in done.stdout
    assert "| gzip |" in done.stdout and "not checked in quick mode" in done.stdout


def test_bench_refuses_bad_usage():
    done = _bench("--groups", "1", timeout=60)
    assert done.returncode == 2
    assert "--groups must be at least 2" in done.stderr
    done = _bench("--refresh-groups", "ten", timeout=60)
    assert done.returncode == 2 and "comma-separated numbers" in done.stderr


# -- the payload fast path --------------------------------------------------------------------------
@pytest.fixture
def served(tmp_path, demo_dir):
    settings = Settings(data_dir=tmp_path / "data", watch_enabled=False)
    Store(settings.db_path).init_password(PASSWORD)
    app = create_app(settings)
    with TestClient(app) as client:
        token = client.post("/api/auth/login", json={"password": PASSWORD}).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        # a token check stays fresh for TOKEN_RECHECK_SECONDS (0.5 s); a slow machine must not make
        # the fast path decline in the middle of a test
        app.state.auth.tokens.recheck_seconds = 300
        assert client.post("/api/models", json={"name": "demo", "path": str(demo_dir)}, headers=auth).status_code == 201
        yield app, client, auth, token


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

    answered = app.payload_fast_path(_scope(token))
    assert answered is not None
    status, headers, body = answered
    assert status == 200 and (b"content-encoding", b"gzip") in headers
    payload = json.loads(gzip.decompress(body))
    assert payload["symbol"] == "SOLUSDT" and payload["payload"]["model_json"].startswith("{")
    assert (b"content-length", str(len(body)).encode()) in headers
    status, headers, body = app.payload_fast_path(_scope(token, extra=[(b"if-none-match", etag.encode())]))
    assert status == 304 and body == b"" and (b"etag", etag.encode()) in headers


def test_fast_path_leaves_everything_else_to_the_route(served):
    app, client, auth, token = served
    fast = app.payload_fast_path
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


# -- parse records: a restart does not re-parse unchanged groups -----------------------------------
def _loaded(settings) -> dict:
    """A fresh registry's first load of every registered model (what a restart does), as
    {group_key: (summary, detail, etag)}."""
    from model_manager.registry import Registry

    store = Store(settings.db_path)
    try:
        registry = Registry(settings, store)
        registry.sync_with_store()
        model = registry.get("demo")
        out = {k: (s.snapshot.summary(), s.snapshot.detail("demo"), s.payload.etag if s.payload else None)
               for k, s in model.groups.items()}
        registry.executor.shutdown()
        return out
    finally:
        store.close()


def test_restart_restores_unchanged_groups_and_reparses_changed_ones(tmp_path, demo_dir):
    from model_manager.registry import Registry

    settings = Settings(data_dir=tmp_path / "data", watch_enabled=False)
    store = Store(settings.db_path)
    registry = Registry(settings, store)
    model, created = registry.register("demo", str(demo_dir))
    assert created
    first = {k: (s.snapshot.summary(), s.snapshot.detail("demo"), s.payload.etag if s.payload else None)
             for k, s in model.groups.items()}
    registry.executor.shutdown()
    store.close()
    served = [k for k, v in first.items() if v[2] is not None]
    records = list((settings.cache_dir / "snapshots").glob("*.json"))
    assert served and len(records) == len(served)  # one parse record per served group

    assert _loaded(settings) == first  # a restart shows exactly what the first load showed

    # a changed file is parsed again; the other groups are as they were
    changed = served[0]
    ic = demo_dir / f"{changed}_ic.csv"
    rows = list(csv.reader(ic.read_text().splitlines()))
    column = [c.lower() for c in rows[0]].index("kendall_tau")
    ic.write_text("\n".join(",".join(r[:column] + ["0.5"] + r[column + 1:]) if i else ",".join(r)
                            for i, r in enumerate(rows)) + "\n")
    again = _loaded(settings)
    assert again[changed][1]["ic"] != first[changed][1]["ic"]
    assert again[changed][2] != first[changed][2]  # the payload carries the new kendall_tau
    assert {k: v for k, v in again.items() if k != changed} == {k: v for k, v in first.items() if k != changed}

    # damaged records are only a miss: the groups are parsed again and come out the same
    for i, record in enumerate((settings.cache_dir / "snapshots").glob("*.json")):
        if i % 2:
            record.write_text("{not json")
        else:
            data = json.loads(record.read_text())
            data["fields"] = data["fields"].replace('"factors":[', '"factors":["injected",', 1)
            record.write_text(json.dumps(data))
    assert _loaded(settings) == again


def test_fast_path_sees_a_password_change_made_by_another_process(tmp_path, demo_dir):
    from model_manager.server.auth import TOKEN_RECHECK_SECONDS

    settings = Settings(data_dir=tmp_path / "data", watch_enabled=False)
    Store(settings.db_path).init_password(PASSWORD)
    app = create_app(settings)
    with TestClient(app) as client:
        auth = {"Authorization": f"Bearer {client.post('/api/auth/login', json={'password': PASSWORD}).json()['token']}"}
        assert client.post("/api/models", json={"name": "demo", "path": str(demo_dir)}, headers=auth).status_code == 201
        for _ in range(3):  # checked by the route, then answered by the fast path
            assert client.get("/api/models/demo/model/SOLUSDT", headers=auth).status_code == 200
        other = Store(settings.db_path)  # what `model-manager password set` does
        other.set_password("a-new-password-123")
        other.close()
        time.sleep(TOKEN_RECHECK_SECONDS + 0.05)
        for _ in range(3):
            assert client.get("/api/models/demo/model/SOLUSDT", headers=auth).status_code == 401
