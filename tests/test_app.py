"""The app shell through `TestClient` (errors, headers, gzip, OpenAPI, limits) and `serve` as a real
process (startup banner, setup code, signals, port in use, flags over env vars)."""
from __future__ import annotations

import gzip
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
from litestar import get

from model_manager.server.app import create_app
from model_manager.store import Store
from tests.support import PASSWORD, ServerProcess, bearer, free_port, http, make_client, run_cli

SECURITY_HEADERS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


def assert_json_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status_code"] == status and body["detail"]
    return body


def assert_security_headers(response, *, strict_csp: bool = True) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (name, dict(response.headers))
    csp = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp
    if strict_csp:
        assert "default-src 'self'" in csp


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"
    assert_security_headers(r)


def test_app_state(settings):
    app = create_app(settings)
    assert app.state.settings is settings
    assert isinstance(app.state.store, Store)
    assert app.state.registry is not None and app.state.auth is not None
    app.state.store.close()


def test_importing_the_server_does_nothing(tmp_path):
    """No db, no threads, no env reads at import: `create_app(settings)` is where work starts."""
    code = ("import threading, model_manager.server.app, model_manager.commands.serve; "
            "print(threading.active_count())")
    data = tmp_path / "untouched"
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "MODEL_MANAGER_DATA_DIR": str(data)}).stdout
    assert out.strip() == "1" and not data.exists()


def test_security_headers_everywhere(client):
    assert_security_headers(client.get("/api/auth/status"))
    assert_security_headers(client.get("/api/does-not-exist"))
    assert_security_headers(client.get("/api/models"))
    assert_security_headers(client.get("/schema/openapi.json"), strict_csp=False)
    assert client.get("/api/auth/status").headers["cache-control"] == "no-store"
    ui = client.get("/")
    assert ui.status_code == 200 and ui.headers["content-type"].startswith("text/html")
    assert_security_headers(ui)
    assert_security_headers(client.get("/app.js"))


def test_unknown_route_and_method_are_json(client):
    assert_json_error(client.get("/api/nope"), 404)
    assert_json_error(client.get("/definitely/not/here.txt"), 404)
    assert_json_error(client.post("/healthz"), 405)


def test_unexpected_errors_are_500_json_with_the_traceback_only_in_the_log(client, caplog):
    @get("/api/test-boom", sync_to_thread=False)
    def boom() -> None:
        raise RuntimeError("secret internals")

    client.app.register(boom)
    caplog.set_level(logging.ERROR, logger="model_manager.server")
    body = assert_json_error(client.get("/api/test-boom"), 500)
    assert body == {"status_code": 500, "detail": "internal error"}
    assert "secret internals" in caplog.text and "Traceback" in caplog.text


def test_model_manager_errors_map_to_their_status(client, token):
    body = assert_json_error(client.get("/api/models/nope/symbols", headers=bearer(token)), 404)
    assert "nope" in body["detail"]


def test_gzip_for_large_json_only_when_accepted(client, token):
    store = client.app.state.store
    for i in range(40):
        store.audit("login", client=f"10.0.0.{i}", detail="x" * 20)
    big = client.get("/api/audit", headers={**bearer(token), "Accept-Encoding": "gzip"})
    assert big.status_code == 200 and big.headers.get("content-encoding") == "gzip"
    assert len(big.json()["events"]) == 41
    plain = client.get("/api/audit", headers={**bearer(token), "Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert len(plain.content) >= 1024 and plain.json() == big.json()
    small = client.get("/healthz", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers and len(small.content) < 1024


def test_openapi_declares_and_applies_the_bearer_scheme(client):
    r = client.get("/schema/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["components"]["securitySchemes"]["BearerToken"] == {
        "type": "http", "scheme": "bearer", "description": "A token from POST /api/auth/login, or an API key from POST /api/keys"}
    paths = spec["paths"]
    for path, method in [("/api/models", "get"), ("/api/models", "post"), ("/api/models/{name}", "delete"),
                         ("/api/audit", "get"), ("/api/auth/logout", "post"), ("/api/auth/password", "post")]:
        assert paths[path][method]["security"] == [{"BearerToken": []}], (path, method)
        assert "401" in paths[path][method]["responses"]
    for path in ("/api/auth/login", "/api/auth/bootstrap", "/api/auth/status"):
        method = "get" if path.endswith("status") else "post"
        assert "security" not in paths[path][method]
    assert "/healthz" in paths
    assert "429" in paths["/api/auth/login"]["post"]["responses"]
    assert client.get("/schema/swagger").status_code == 200


def test_body_limit_is_413(tmp_path):
    with make_client(tmp_path, max_body_kb=1) as c:
        body = assert_json_error(c.post("/api/auth/login", json={"password": "x" * 2048}), 413)
        assert body["status_code"] == 413
        assert c.post("/api/auth/login", json={"password": "x" * 100}).status_code == 409  # small bodies still pass


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/models"), ("POST", "/api/models"), ("DELETE", "/api/models/demo"),
    ("POST", "/api/models/demo/refresh"), ("GET", "/api/models/demo/symbols"), ("GET", "/api/models/demo/factors"),
    ("GET", "/api/models/demo/symbols/SOLUSDT"), ("GET", "/api/models/demo/model/SOLUSDT"), ("GET", "/api/audit"),
])
def test_guarded_routes_need_a_live_token(client, token, method, path):
    body = {"name": "x", "path": "/tmp"} if method == "POST" else None
    assert_json_error(client.request(method, path, json=body), 401)
    assert_json_error(client.request(method, path, json=body, headers=bearer("not-a-token")), 401)
    assert_json_error(client.request(method, path, json=body, headers={"Authorization": f"Basic {token}"}), 401)
    r = client.request(method, path, json=body, headers=bearer(token))
    assert r.status_code != 401 and r.status_code < 500, r.text


def test_options_lists_every_method_of_the_path(client, token):
    r = client.options("/api/models", headers=bearer(token))
    assert r.status_code == 204
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "POST", "OPTIONS"}
    r = client.options("/api/auth/login")
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"POST", "OPTIONS"}


def test_no_cors_unless_configured(client, tmp_path):
    r = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    with make_client(tmp_path / "cors", cors_origins="https://ops.example") as c:
        allowed = c.options("/api/models", headers={"Origin": "https://ops.example", "Access-Control-Request-Method": "GET",
                                                    "Access-Control-Request-Headers": "authorization"})
        assert allowed.headers.get("access-control-allow-origin") == "https://ops.example"
        other = c.get("/healthz", headers={"Origin": "https://evil.example"})
        assert other.headers.get("access-control-allow-origin") in (None, "")


def test_access_log_lines(client, caplog, token):
    caplog.set_level(logging.INFO, logger="model_manager.access")
    client.get("/api/audit?limit=5", headers=bearer(token))
    client.get("/api/nope")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "model_manager.access"]
    audit_line = next(line for line in lines if line["path"] == "/api/audit")
    assert audit_line["method"] == "GET" and audit_line["status"] == 200 and audit_line["ms"] >= 0
    assert audit_line["client"] == "testclient"
    assert any(line["path"] == "/api/nope" and line["status"] == 404 for line in lines)
    assert token not in caplog.text and "limit=5" not in caplog.text


# -- `serve` as a real process ----------------------------------------------------------------------

def test_serve_prints_setup_code_and_stops_cleanly_on_sigint(tmp_path):
    server = ServerProcess(tmp_path / "data", extra_args=("--no-watch",))
    with server:
        status, _, raw = server.get("/healthz")
        assert status == 200 and json.loads(raw)["status"] == "ok"
        output = server.output()
        assert f"http://127.0.0.1:{server.port}/" in output
        match = re.search(r"setup code: ([A-Z0-9]{4}-[A-Z0-9]{4})", output)
        assert match, output
        code = match.group(1)
        status, _, raw = server.get("/api/models", token="nope")
        assert status == 401
        # the printed code is the live one: bootstrap needs it, from loopback too
        status, _, raw = server.post("/api/auth/bootstrap", {"password": PASSWORD, "setup_code": code})
        assert status == 201, raw
        token = json.loads(raw)["token"]
        status, headers, raw = server.get("/api/models", token=token, headers={"Accept-Encoding": "gzip"})
        assert status == 200 and "models" in json.loads(gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw)
        # an idle keep-alive connection and a request stuck mid-body must not hold the shutdown up
        idle = socket.create_connection(("127.0.0.1", server.port))
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert idle.recv(4096).startswith(b"HTTP/1.1 200")
        stuck = socket.create_connection(("127.0.0.1", server.port))
        stuck.sendall(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{")
        time.sleep(0.2)
        started = time.monotonic()
        code_rc = server.stop()
        took = time.monotonic() - started
        idle.close()
        stuck.close()
    output = server.output()
    assert code_rc == 0, output
    assert took < 10, f"stopping took {took:.2f}s"  # not held up until the 10 s kill; a loaded machine is slow
    assert "Traceback" not in output and "stopped (SIGINT)" in output
    assert '"path": "/healthz"' in output  # the access log
    # the request stuck mid-body was answered 503 at the stop, and logged so
    assert '"path": "/api/auth/login", "status": 503' in output, output
    assert token not in output


def test_serve_stops_on_sigterm_and_uses_uvloop_and_httptools(tmp_path):
    with ServerProcess(tmp_path / "data", extra_args=("--no-watch",)) as server:
        libs = " ".join(m.path for m in psutil.Process(server.proc.pid).memory_maps())
        assert "uvloop" in libs and "httptools" in libs
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        rc = server.proc.wait(timeout=10)
        took = time.monotonic() - started
    assert rc == 0 and took < 10, (rc, took)
    assert "Traceback" not in server.output() and "stopped (SIGTERM)" in server.output()


def test_serve_port_in_use_is_one_line_exit_2(tmp_path):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = run_cli("serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "data"),
                         "--no-watch", timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"port {port}" in lines[0] and "already in use" in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_serve_bad_settings_are_one_line_exit_2(tmp_path):
    bad_env = run_cli("serve", "--data-dir", str(tmp_path / "d"), env={"MODEL_MANAGER_HTTP_PORT": "http"})
    assert bad_env.returncode == 2 and "MODEL_MANAGER_HTTP_PORT" in bad_env.stderr
    bad_host = run_cli("serve", "--host", "no-such-host.invalid", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"))
    assert bad_host.returncode == 2 and "no-such-host.invalid" in bad_host.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad_dir = run_cli("serve", "--host", "127.0.0.1", "--port", str(free_port()), "--data-dir", str(blocker))
    assert bad_dir.returncode == 2 and str(blocker) in bad_dir.stderr
    for result in (bad_env, bad_host, bad_dir):
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_serve_flags_win_over_env(tmp_path):
    env = {"MODEL_MANAGER_TOKEN_TTL": "77", "MODEL_MANAGER_WATCH_ENABLED": "0"}
    with ServerProcess(tmp_path / "data", env=env) as server:
        status, _, raw = server.post("/api/auth/bootstrap", {"password": PASSWORD, "setup_code": server.setup_code()})
        assert status == 201 and json.loads(raw)["expires_in"] == 77
    with ServerProcess(tmp_path / "data", env=env, extra_args=("--token-ttl", "123")) as server:
        assert "setup code" not in server.output()  # initialized now
        status, _, raw = server.post("/api/auth/login", {"password": PASSWORD})
        assert status == 200 and json.loads(raw)["expires_in"] == 123


def test_serve_demo_registers_the_demo_model(tmp_path):
    with ServerProcess(tmp_path / "data", extra_args=("--demo", "--no-watch")) as server:
        token = server.login()
        status, _, raw = server.get("/api/models", token=token)
        assert status == 200
        models = {m["name"]: m for m in json.loads(raw)["models"]}
        assert "demo" in models and models["demo"]["symbol_count"] > 0
        status, _, raw = http("GET", f"{server.url}/api/models/demo/symbols", token=token)
        assert status == 200 and "SOLUSDT" in {s["symbol"] for s in json.loads(raw)["symbols"]}
