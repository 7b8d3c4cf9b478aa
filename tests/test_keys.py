"""API keys (SPEC §7) against a real `model-manager serve` process: scopes, revocation by the API and
by the CLI (the payload fast path included), expiry, password changes, the CLI, and secrecy at rest."""
from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import time

import pytest

from model_manager.keys import KeyStore
from model_manager.store import Store
from tests.support import ServerProcess, http, run_cli

PAYLOAD = "/api/models/demo/model/SOLUSDT"


class State:
    password = "correct horse battery"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, _demo_template):
    data = tmp_path_factory.mktemp("keys") / "data"
    demo = data.parent / "demo-models"
    shutil.copytree(_demo_template, demo)
    init = run_cli("password", "init", "--password-stdin", "--data-dir", str(data), input=State.password + "\n")
    assert init.returncode == 0, init.stderr
    reg = run_cli("register", "demo", str(demo), "--data-dir", str(data))
    assert reg.returncode == 0, reg.stderr
    return data


@pytest.fixture(scope="module")
def server(data_dir):
    with ServerProcess(data_dir, extra_args=("--no-watch",)) as proc:
        yield proc


def login(server: ServerProcess) -> str:
    status, _, raw = server.post("/api/auth/login", {"password": State.password})
    assert status == 200, raw
    return json.loads(raw)["token"]


def call(server: ServerProcess, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, dict | None]:
    status, _, raw = http(method, server.url + path, token=token, body=body)
    return status, (json.loads(raw) if raw else None)


def create_key(server: ServerProcess, token: str, name: str, scope: str = "read", **extra) -> str:
    status, body = call(server, "POST", "/api/keys", token, {"name": name, "scope": scope, **extra})
    assert status == 201, body
    assert set(body) >= {"name", "scope", "key", "created_at", "expires_at"} and body["key"].startswith("mmk_")
    return body["key"]


def listed(server: ServerProcess, token: str) -> dict[str, dict]:
    status, body = call(server, "GET", "/api/keys", token)
    assert status == 200, body
    return {k["name"]: k for k in body["keys"]}


def until(predicate, seconds: float = 5.0) -> float:
    """Poll until predicate() is true; returns how long it took (fails after `seconds`)."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < seconds, "timed out"
        time.sleep(0.05)
    return time.monotonic() - started


def warm_fast_path(server: ServerProcess, key: str) -> None:
    """A few payload polls, so the key is cached and later ones are answered from memory."""
    etag = None
    for _ in range(4):
        status, headers, _ = server.get(PAYLOAD, token=key, headers={"If-None-Match": etag} if etag else None)
        assert status in (200, 304)
        etag = headers["etag"]


def test_a_read_key_reads_models_and_gets_403_elsewhere(server):
    session = login(server)
    key = create_key(server, session, "engine-read")
    for path in ("/api/models", "/api/models/demo/symbols", "/api/models/demo/factors",
                 "/api/models/demo/symbols/SOLUSDT", "/api/models/demo/symbols/SOLUSDT/versions"):
        assert call(server, "GET", path, key)[0] == 200, path
    status, headers, raw = server.get(PAYLOAD, token=key, headers={"Accept-Encoding": "gzip"})
    assert status == 200 and json.loads(gzip.decompress(raw))["symbol"] == "SOLUSDT"
    assert server.get(PAYLOAD, token=key, headers={"If-None-Match": headers["etag"]})[0] == 304

    refused = [("POST", "/api/models", {"name": "x", "path": "/tmp"}), ("DELETE", "/api/models/demo", None),
               ("POST", "/api/models/demo/refresh", None), ("POST", "/api/models/demo/hold", None),
               ("GET", "/api/keys", None), ("POST", "/api/keys", {"name": "mine", "scope": "admin"}),
               ("DELETE", "/api/keys/engine-read", None), ("GET", "/api/audit", None),
               ("POST", "/api/auth/password", {"current_password": State.password, "new_password": "x" * 12}),
               ("POST", "/api/auth/logout", None)]
    for method, path, body in refused:
        status, answer = call(server, method, path, key, body)
        assert status == 403, (method, path, answer)
        assert "read scope" in answer["detail"] and "engine-read" in answer["detail"], answer
    assert call(server, "GET", "/api/models/demo", key)[0] in (404, 405)  # no such read: not a way around the rule
    status, body = call(server, "GET", "/api/auth/status", key)
    assert body["authenticated"] and body["client"] == "engine-read" and body["scope"] == "read"
    assert body["expires_at"] is None
    assert call(server, "GET", "/api/models", session)[0] == 200  # nothing above was done
    assert "engine-read" in listed(server, session) and "mine" not in listed(server, session)


def test_an_admin_key_does_everything_and_manages_keys(server, tmp_path):
    session = login(server)
    admin = create_key(server, session, "ops-admin", "admin", expires_in_days=30)
    assert call(server, "POST", "/api/models/demo/refresh", admin)[0] == 200
    assert call(server, "GET", "/api/audit", admin)[0] == 200
    other = create_key(server, admin, "made-by-admin")
    assert call(server, "GET", "/api/models", other)[0] == 200
    keys = listed(server, admin)
    assert keys["ops-admin"]["scope"] == "admin" and keys["ops-admin"]["expires_at"]
    assert set(keys["made-by-admin"]) >= {"name", "scope", "created_at", "expires_at", "last_used_at", "revoked"}
    assert all("key" not in k for k in keys.values())
    assert call(server, "DELETE", "/api/keys/made-by-admin", admin)[0] == 204
    status, body = call(server, "GET", "/api/audit?event=key_created", admin)
    assert any("made-by-admin" in e["detail"] and "by ops-admin" in e["detail"] for e in body["events"])
    status, body = call(server, "GET", "/api/audit?event=key_revoked", admin)
    assert any(e["detail"].startswith("made-by-admin") for e in body["events"])
    status, body = call(server, "POST", "/api/auth/logout", admin)
    assert status == 400 and "revoke it" in body["detail"]  # an API key is not a session
    assert call(server, "GET", "/api/models", admin)[0] == 200


def test_create_refuses_bad_input_and_taken_names(server):
    session = login(server)
    create_key(server, session, "taken")
    for body, status in [({"name": "taken"}, 409), ({"name": "bad name"}, 400), ({"name": "ok1", "scope": "root"}, 400),
                         ({"name": "ok2", "expires_in_days": 0}, 400), ({"name": "ok3", "expires_in_days": "x"}, 400),
                         ({"name": "session"}, 400), ({"scope": "read"}, 400)]:
        got, answer = call(server, "POST", "/api/keys", session, body)
        assert got == status, (body, answer)
        assert answer["detail"]
    assert call(server, "DELETE", "/api/keys/no-such-key", session)[0] == 404
    # a revoked key's name may be reused (rotation); the old key stays dead
    old = create_key(server, session, "rotated")
    assert call(server, "DELETE", "/api/keys/rotated", session)[0] == 204
    assert call(server, "DELETE", "/api/keys/rotated", session)[0] == 204  # revoking twice is not an error
    new = create_key(server, session, "rotated")
    assert call(server, "GET", "/api/models", old)[0] == 401
    assert call(server, "GET", "/api/models", new)[0] == 200
    assert listed(server, session)["rotated"]["revoked"] is False


def test_revocation_by_the_api_is_honoured_by_the_next_request_also_on_the_fast_path(server):
    session = login(server)
    key = create_key(server, session, "engine-api-revoked")
    warm_fast_path(server, key)
    assert call(server, "DELETE", "/api/keys/engine-api-revoked", session)[0] == 204
    status, headers, _ = server.get(PAYLOAD, token=key)
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert call(server, "GET", "/api/models", key)[0] == 401
    assert listed(server, session)["engine-api-revoked"]["revoked"] is True


def test_keys_made_and_revoked_by_the_cli_act_on_a_running_server(server, data_dir):
    made = run_cli("keys", "create", "engine-cli", "--json", "--data-dir", str(data_dir))
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["key"]
    until(lambda: server.get(PAYLOAD, token=key)[0] == 200, seconds=5)
    warm_fast_path(server, key)
    revoked = run_cli("keys", "revoke", "engine-cli", "--data-dir", str(data_dir))
    assert revoked.returncode == 0 and "revoked engine-cli" in revoked.stdout, revoked.stderr
    took = until(lambda: server.get(PAYLOAD, token=key)[0] == 401, seconds=5)
    assert took < 5
    assert all(server.get(PAYLOAD, token=key)[0] == 401 for _ in range(3))


def test_an_expired_key_is_refused(server, data_dir):
    session = login(server)
    key = create_key(server, session, "short-lived", expires_in_days=1)
    warm_fast_path(server, key)
    with sqlite3.connect(data_dir / "model-manager.sqlite3") as db:  # a day passes
        db.execute("UPDATE api_keys SET expires_at = ? WHERE name = 'short-lived'", (time.time() - 1,))
    until(lambda: server.get(PAYLOAD, token=key)[0] == 401, seconds=5)
    assert call(server, "GET", "/api/models", key)[0] == 401
    entry = listed(server, session)["short-lived"]
    assert entry["expired"] is True and entry["revoked"] is False
    status, body = call(server, "POST", "/api/keys", session, {"name": "short-lived"})
    assert status == 409 and "expired" in body["detail"]


def test_last_used_is_kept_without_a_write_per_request(server, data_dir):
    session = login(server)
    key = create_key(server, session, "engine-usage")
    assert listed(server, session)["engine-usage"]["last_used_at"] is None
    assert call(server, "GET", "/api/models", key)[0] == 200

    def stored() -> float | None:
        with sqlite3.connect(data_dir / "model-manager.sqlite3") as db:
            return db.execute("SELECT last_used_at FROM api_keys WHERE name = 'engine-usage'").fetchone()[0]

    first = stored()
    assert first is not None  # the first use is written
    for _ in range(3):  # more uses, each after the recheck period: remembered, not written
        time.sleep(0.6)
        assert call(server, "GET", "/api/models", key)[0] == 200
    assert stored() == first
    assert listed(server, session)["engine-usage"]["last_used_at"] is not None
    cli = run_cli("keys", "list", "--json", "--data-dir", str(data_dir))
    assert json.loads(cli.stdout)["keys"][[k["name"] for k in json.loads(cli.stdout)["keys"]].index("engine-usage")]["last_used_at"]


def test_the_cli_creates_lists_and_revokes(data_dir):
    made = run_cli("keys", "create", "cli-plain", "--scope", "admin", "--expires-in-days", "7", "--data-dir", str(data_dir))
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().startswith("mmk_") and len(made.stdout.strip().splitlines()) == 1
    assert "will not be shown again" in made.stderr
    listing = run_cli("keys", "list", "--json", "--data-dir", str(data_dir))
    assert listing.returncode == 0, listing.stderr
    entry = {k["name"]: k for k in json.loads(listing.stdout)["keys"]}["cli-plain"]
    assert entry["scope"] == "admin" and entry["expires_at"] and entry["revoked"] is False and "key" not in entry
    table = run_cli("keys", "list", "--data-dir", str(data_dir))
    assert table.returncode == 0 and "cli-plain" in table.stdout and made.stdout.strip() not in table.stdout

    again = run_cli("keys", "create", "cli-plain", "--data-dir", str(data_dir))
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    bad_scope = run_cli("keys", "create", "x1", "--scope", "root", "--data-dir", str(data_dir))
    assert bad_scope.returncode == 2 and "Traceback" not in bad_scope.stderr
    bad_name = run_cli("keys", "create", "no spaces", "--data-dir", str(data_dir))
    assert bad_name.returncode == 1 and "key name" in bad_name.stderr

    assert run_cli("keys", "revoke", "cli-plain", "--data-dir", str(data_dir)).returncode == 0
    twice = run_cli("keys", "revoke", "cli-plain", "--data-dir", str(data_dir))
    assert twice.returncode == 0 and "already revoked" in twice.stdout
    unknown = run_cli("keys", "revoke", "nobody", "--data-dir", str(data_dir))
    assert unknown.returncode == 2 and "no API key named 'nobody'" in unknown.stderr
    listing = run_cli("keys", "list", "--json", "--data-dir", str(data_dir))
    assert {k["name"]: k for k in json.loads(listing.stdout)["keys"]}["cli-plain"]["revoked"] is True
    audit = run_cli("audit", "--event", "key_revoked", "--json", "--data-dir", str(data_dir))
    assert any(e["detail"].startswith("cli-plain") and e["client"] == "cli" for e in json.loads(audit.stdout)["events"])


def test_a_password_change_ends_sessions_and_keeps_keys(server, data_dir):
    session, other = login(server), login(server)
    key = create_key(server, session, "survives-passwords")
    new_password = "a new password"
    status, _ = call(server, "POST", "/api/auth/password", session,
                     {"current_password": State.password, "new_password": new_password})
    assert status == 204
    State.password = new_password
    assert call(server, "GET", "/api/models", other)[0] == 401  # the other session ended
    assert call(server, "GET", "/api/models", session)[0] == 200  # the one that changed it is kept
    assert call(server, "GET", "/api/models", key)[0] == 200

    changed = run_cli("password", "set", "--password-stdin", "--data-dir", str(data_dir), input="third password\n")
    assert changed.returncode == 0, changed.stderr
    State.password = "third password"
    until(lambda: call(server, "GET", "/api/models", session)[0] == 401, seconds=5)
    assert server.get(PAYLOAD, token=key)[0] == 200
    assert call(server, "GET", "/api/models", key)[0] == 200


def test_no_key_is_stored_in_clear_in_the_data_dir(server, data_dir):
    session = login(server)
    keys = [create_key(server, session, f"secret-{i}", scope) for i, scope in enumerate(("read", "admin"))]
    made = run_cli("keys", "create", "secret-cli", "--json", "--data-dir", str(data_dir))
    keys.append(json.loads(made.stdout)["key"])
    for key in keys:
        assert call(server, "GET", "/api/models", key)[0] == 200
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.name.endswith(".sqlite3") for p in files)
    for key in keys:
        holders = [str(p) for p in files if key.encode() in p.read_bytes()]
        assert holders == [], f"a key is stored in clear in {holders}"
        assert key not in server.output()  # nor in the server's log


def test_keys_are_in_the_openapi_document(server):
    status, _, raw = server.get("/schema/openapi.json")
    paths = json.loads(raw)["paths"]
    assert {"get", "post"} <= set(paths["/api/keys"]) and "delete" in paths["/api/keys/{name}"]
    post = paths["/api/keys"]["post"]
    assert post["tags"] == ["keys"] and {"201", "400", "401", "403", "409"} <= set(post["responses"])
    assert "404" in paths["/api/keys/{name}"]["delete"]["responses"]


def test_the_key_store_alone(tmp_path):
    """The core without a server: create, list, revoke, lookup by digest, no clear key in the row."""
    store = Store(tmp_path / "db.sqlite3")
    try:
        keys = KeyStore(store)
        made = keys.create("alone", "read", None, client="test")
        (record,) = keys.list()
        assert record.name == "alone" and record.live() and made["key"] not in repr(record)
        assert keys.lookup(record.digest) == record
        assert keys.revoke("alone")[1] is True and keys.revoke("alone")[1] is False
        assert not keys.lookup(record.digest).live()
        assert [e["event"] for e in store.audit_events()] == ["key_revoked", "key_created"]
    finally:
        store.close()
