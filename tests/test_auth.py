"""Authentication end to end through the real app (`TestClient`), plus the password and audit commands.

Litestar's TestClient reports the client address "testclient"; `as_client` makes requests come from a
chosen address instead (it rewrites `scope["client"]` in the test transport). Where a request comes
from changes nothing about the setup code (every client needs it), only whom throttling counts.
"""
from __future__ import annotations

import json
import logging
import shlex
import time
from datetime import UTC, datetime, timedelta

import pytest
from litestar.testing import TestClient
from litestar.testing.transport import TestClientTransport as _LitestarTransport

from model_manager.auth import TOKEN_RECHECK_SECONDS, LoginThrottle
from model_manager.errors import ThrottledError
from model_manager.store import Store
from tests.support import PASSWORD, bearer, bootstrap, log_in, make_client, run_cli, run_in_terminal, setup_code

NEW_PASSWORD = "tr0ub4dor & 3"
WRONG = "guess-1234-xyz"


class _AddressTransport(_LitestarTransport):
    def __init__(self, *args, host: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.host = host

    def parse_request(self, request):
        scope = super().parse_request(request)
        scope["client"] = (self.host, 50000)
        return scope


def as_client(client: TestClient, host: str) -> TestClient:
    client._transport = _AddressTransport(client=client, raise_server_exceptions=True, root_path="", host=host)
    return client


@pytest.fixture
def local(client):
    """The app on a fresh data dir; requests come from a loopback address."""
    return as_client(client, "127.0.0.1")


@pytest.fixture
def remote(client):
    """The app on a fresh data dir; requests come from another machine."""
    return as_client(client, "203.0.113.7")


def assert_error(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status_code"] == status and isinstance(body["detail"], str) and body["detail"]
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


# -- status and bootstrap ---------------------------------------------------------------------------

def test_status_before_and_after_bootstrap(local):
    # the setup code is asked of every client, loopback included: a proxy on the same host makes
    # every client look local (SPEC §10)
    assert local.get("/api/auth/status").json() == {
        "initialized": False, "authenticated": False, "expires_at": None, "setup_code_required": True,
        "client": None, "scope": None}
    token = bootstrap(local)
    status = local.get("/api/auth/status", headers=bearer(token)).json()
    assert status["initialized"] is True and status["authenticated"] is True
    assert datetime.fromisoformat(status["expires_at"]) > datetime.now(UTC) + timedelta(minutes=59)
    anonymous = local.get("/api/auth/status").json()
    assert anonymous["initialized"] is True and anonymous["authenticated"] is False
    bogus = local.get("/api/auth/status", headers=bearer("nope")).json()
    assert bogus["authenticated"] is False and bogus["expires_at"] is None


def test_bootstrap_token_object_then_409(local, settings):
    before = datetime.now(UTC)
    r = local.post("/api/auth/bootstrap", json={"password": PASSWORD, "setup_code": setup_code(local)})
    assert r.status_code == 201
    body = r.json()
    assert set(body) >= {"token", "token_type", "expires_in", "expires_at"}
    assert body["token_type"] == "bearer" and body["expires_in"] == settings.token_ttl
    expires = datetime.fromisoformat(body["expires_at"])
    assert before + timedelta(seconds=settings.token_ttl - 5) <= expires <= before + timedelta(seconds=settings.token_ttl + 5)
    assert r.headers["cache-control"] == "no-store"
    assert_error(local.post("/api/auth/bootstrap", json={"password": "another password", "setup_code": "AAAA-AAAA"}),
                 409, "already set")
    log_in(local)  # the first password is still the one


def test_bootstrap_rejects_short_password_and_bad_bodies(local):
    code = setup_code(local)
    assert_error(local.post("/api/auth/bootstrap", json={"password": "short", "setup_code": code}), 400, "at least 8")
    assert_error(local.post("/api/auth/bootstrap", json={"password": "x" * 5000, "setup_code": code}), 400, "at most")
    assert local.get("/api/auth/status").json()["initialized"] is False
    assert_error(local.post("/api/auth/bootstrap", json={}), 400)
    assert_error(local.post("/api/auth/bootstrap", json={"password": 12345678}), 400)
    assert_error(local.post("/api/auth/bootstrap", content=b"{not json", headers={"content-type": "application/json"}), 400)


def test_bootstrap_from_another_machine_needs_the_setup_code(remote):
    code = setup_code(remote)
    assert code and len(code.replace("-", "")) == 8
    assert remote.get("/api/auth/status").json()["setup_code_required"] is True
    assert_error(remote.post("/api/auth/bootstrap", json={"password": PASSWORD}), 403, "setup code", "model-manager serve")
    assert_error(remote.post("/api/auth/bootstrap", json={"password": PASSWORD, "setup_code": "AAAA-AAAA"}), 403, "wrong")
    assert remote.get("/api/auth/status").json()["initialized"] is False
    # the code is forgiving about case, dashes and spaces
    typed = f" {code.replace('-', '').lower()} "
    r = remote.post("/api/auth/bootstrap", json={"password": PASSWORD, "setup_code": typed})
    assert r.status_code == 201, r.text
    assert setup_code(remote) is None  # one-time
    assert_error(remote.post("/api/auth/bootstrap", json={"password": PASSWORD, "setup_code": code}), 409)
    events = [e["event"] for e in remote.app.state.store.audit_events()]
    assert events[:3] == ["bootstrap", "bootstrap_refused", "bootstrap_refused"]


def test_testclient_default_address_counts_as_remote(settings):
    with make_client(settings) as c:
        assert c.get("/api/auth/status").json()["setup_code_required"] is True
        assert c.post("/api/auth/bootstrap", json={"password": PASSWORD}).status_code == 403
        code = setup_code(c)
        assert c.post("/api/auth/bootstrap", json={"password": PASSWORD, "setup_code": code}).status_code == 201


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "127.0.0.2", "::ffff:127.0.0.1"])
def test_loopback_needs_the_code_too(settings, host):
    """A proxy on the server's host makes every client look local: local proves nothing (SPEC §10)."""
    with make_client(settings) as c:
        as_client(c, host)
        assert c.get("/api/auth/status").json()["setup_code_required"] is True
        assert_error(c.post("/api/auth/bootstrap", json={"password": PASSWORD}), 403, "setup code")
        assert c.post("/api/auth/bootstrap", json={"password": PASSWORD, "setup_code": setup_code(c)}).status_code == 201


def test_five_wrong_setup_codes_from_anywhere_throttle_every_bootstrap(settings):
    with make_client(settings) as c:
        code = setup_code(c)
        for i in range(5):
            as_client(c, f"198.51.100.{i + 1}")  # a new address each time: the limit is global
            assert_error(c.post("/api/auth/bootstrap", json={"password": PASSWORD, "setup_code": "AAAA-AAAA"}), 403, "wrong")
        as_client(c, "198.51.100.99")
        r = c.post("/api/auth/bootstrap", json={"password": PASSWORD, "setup_code": code})
        assert_error(r, 429, "try again")
        assert int(r.headers["retry-after"]) >= 1
        assert c.get("/api/auth/status").json()["initialized"] is False


def test_no_setup_code_when_already_initialized(settings):
    store = Store(settings.db_path)
    store.init_password(PASSWORD)
    store.close()
    with make_client(settings) as c:
        assert setup_code(c) is None
        assert c.get("/api/auth/status").json()["setup_code_required"] is False


# -- login, logout ----------------------------------------------------------------------------------

def test_login_statuses(local):
    assert_error(local.post("/api/auth/login", json={"password": PASSWORD}), 409, "password init")
    bootstrap(local)
    assert_error(local.post("/api/auth/login", json={"password": WRONG}), 401, "wrong password")
    assert_error(local.post("/api/auth/login", json={}), 400)
    r = local.post("/api/auth/login", json={"password": PASSWORD})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer" and len(body["token"]) >= 43
    assert local.get("/api/audit", headers=bearer(body["token"])).status_code == 200


def test_login_throttled_after_repeated_failures(local):
    bootstrap(local)
    # the default count of free failures, blocked long enough that a loaded machine still sees the block
    local.app.state.auth.throttle = LoginThrottle(base_delay=30)
    for _ in range(5):
        assert local.post("/api/auth/login", json={"password": WRONG}).status_code == 401
    r = local.post("/api/auth/login", json={"password": WRONG})
    body = assert_error(r, 429, "try again")
    retry = int(r.headers["retry-after"])
    assert 1 <= retry <= 300 and str(retry) in body["detail"]
    # even the right password waits: that is what stops guessing
    assert local.post("/api/auth/login", json={"password": PASSWORD}).status_code == 429
    # another address is not affected
    as_client(local, "127.0.0.9")
    assert local.post("/api/auth/login", json={"password": PASSWORD}).status_code == 200


def test_throttle_delay_grows_and_success_resets():
    throttle = LoginThrottle(free_failures=2, base_delay=10, max_delay=60)
    throttle.failure("a")
    throttle.check("a")  # one failure is free
    throttle.failure("a")
    with pytest.raises(ThrottledError) as first:
        throttle.check("a")
    throttle.failure("a")
    with pytest.raises(ThrottledError) as second:
        throttle.check("a")
    throttle.failure("a")
    throttle.failure("a")
    with pytest.raises(ThrottledError) as capped:
        throttle.check("a")
    assert (first.value.retry_after, second.value.retry_after, capped.value.retry_after) == (10, 20, 60)
    throttle.check("b")
    throttle.success("a")
    throttle.check("a")


def test_throttle_resets_after_success_through_the_api(local):
    bootstrap(local)
    # blocked for several seconds: the next request must arrive within the block on a loaded machine
    local.app.state.auth.throttle = LoginThrottle(free_failures=3, base_delay=5)
    for _ in range(2):
        assert local.post("/api/auth/login", json={"password": WRONG}).status_code == 401
    log_in(local)  # resets the count
    for _ in range(2):
        assert local.post("/api/auth/login", json={"password": WRONG}).status_code == 401
    assert local.post("/api/auth/login", json={"password": WRONG}).status_code == 401  # 3rd: now blocked
    assert local.post("/api/auth/login", json={"password": PASSWORD}).status_code == 429
    time.sleep(5.1)
    log_in(local)


def test_logout(local):
    token = bootstrap(local)
    other = log_in(local)
    assert local.post("/api/auth/logout", headers=bearer(token)).status_code == 204
    assert_error(local.get("/api/audit", headers=bearer(token)), 401, "log in again")
    assert_error(local.post("/api/auth/logout", headers=bearer(token)), 401)
    assert_error(local.post("/api/auth/logout"), 401, "Authorization: Bearer")
    assert local.get("/api/audit", headers=bearer(other)).status_code == 200


# -- password change --------------------------------------------------------------------------------

def test_password_change_revokes_every_other_token(local):
    mine = bootstrap(local)
    others = [log_in(local), log_in(local)]
    change = {"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    assert_error(local.post("/api/auth/password", json=change), 401)
    assert_error(local.post("/api/auth/password", headers=bearer(mine),
                             json={"current_password": WRONG, "new_password": NEW_PASSWORD}), 401, "current password")
    assert_error(local.post("/api/auth/password", headers=bearer(mine),
                             json={"current_password": PASSWORD, "new_password": "short"}), 400, "at least 8")
    assert_error(local.post("/api/auth/password", headers=bearer(mine), json={"current_password": PASSWORD}), 400)
    for token in others:  # all still fine before the change
        assert local.get("/api/audit", headers=bearer(token)).status_code == 200
    assert local.post("/api/auth/password", headers=bearer(mine), json=change).status_code == 204
    assert local.get("/api/audit", headers=bearer(mine)).status_code == 200
    for token in others:  # revoked at once in this process, whatever the cache held
        assert local.get("/api/audit", headers=bearer(token)).status_code == 401
    assert local.post("/api/auth/login", json={"password": PASSWORD}).status_code == 401
    log_in(local, NEW_PASSWORD)


def test_password_set_from_another_process_takes_effect_within_the_recheck_period(local, settings):
    token = bootstrap(local)
    assert local.get("/api/audit", headers=bearer(token)).status_code == 200  # now cached
    cli_store = Store(settings.db_path)  # what `model-manager password set` does, on its own connection
    cli_store.set_password(NEW_PASSWORD)
    cli_store.close()
    time.sleep(TOKEN_RECHECK_SECONDS + 0.1)
    assert local.get("/api/audit", headers=bearer(token)).status_code == 401
    log_in(local, NEW_PASSWORD)


def test_token_checks_are_cached_not_read_from_sqlite_each_time(local):
    token = bootstrap(local)
    statements: list[str] = []
    local.app.state.store._db.set_trace_callback(statements.append)
    try:
        started = time.monotonic()
        for _ in range(40):
            assert local.get("/api/models", headers=bearer(token)).status_code == 200
        elapsed = time.monotonic() - started
    finally:
        local.app.state.store._db.set_trace_callback(None)
    token_reads = [s for s in statements if "FROM tokens" in s]
    assert len(token_reads) <= elapsed / TOKEN_RECHECK_SECONDS + 1, (len(token_reads), elapsed)


# -- expiry and restarts ----------------------------------------------------------------------------

def test_token_expires(tmp_path):
    # a lifetime of several seconds: the first requests must still fall inside it on a loaded machine
    with make_client(tmp_path, token_ttl=5) as c:
        as_client(c, "127.0.0.1")
        token = bootstrap(c)
        assert c.post("/api/auth/bootstrap", json={"password": PASSWORD}).status_code == 409
        assert c.get("/api/audit", headers=bearer(token)).status_code == 200
        time.sleep(5.1)
        assert_error(c.get("/api/audit", headers=bearer(token)), 401, "expired")
        assert c.get("/api/auth/status", headers=bearer(token)).json()["authenticated"] is False


def test_restart_keeps_password_and_tokens(settings):
    with make_client(settings) as first:
        as_client(first, "127.0.0.1")
        token = bootstrap(first)
    with make_client(settings) as second:
        as_client(second, "127.0.0.1")
        assert setup_code(second) is None
        assert second.get("/api/audit", headers=bearer(token)).status_code == 200
        assert second.get("/api/auth/status", headers=bearer(token)).json()["authenticated"] is True
        log_in(second)


def test_secrets_never_reach_the_logs(local, caplog):
    caplog.set_level(logging.DEBUG)
    token = bootstrap(local)
    local.post("/api/auth/login", json={"password": WRONG})
    local.get("/api/audit", headers=bearer(token))
    local.post("/api/auth/password", headers=bearer(token), json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    local.post("/api/auth/logout", headers=bearer(token))
    text = caplog.text
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "model_manager.access"]
    assert {"/api/auth/bootstrap", "/api/auth/login", "/api/audit", "/api/auth/logout"} <= {a["path"] for a in access}
    for secret in (token, PASSWORD, NEW_PASSWORD, WRONG, "Bearer"):
        assert secret not in text


# -- audit ------------------------------------------------------------------------------------------

def test_audit_endpoint(local):
    token = bootstrap(local)
    local.post("/api/auth/login", json={"password": WRONG})
    log_in(local)
    events = local.get("/api/audit", headers=bearer(token)).json()["events"]
    assert [e["event"] for e in events] == ["login", "login_failed", "bootstrap"]
    assert all(e["client"] == "127.0.0.1" and e["at"] for e in events)
    only = local.get("/api/audit", params={"event": "login_failed"}, headers=bearer(token)).json()["events"]
    assert [e["event"] for e in only] == ["login_failed"]
    assert len(local.get("/api/audit", params={"limit": 1}, headers=bearer(token)).json()["events"]) == 1
    assert_error(local.get("/api/audit", params={"limit": 0}, headers=bearer(token)), 400)
    assert_error(local.get("/api/audit", params={"limit": "many"}, headers=bearer(token)), 400)
    assert_error(local.get("/api/audit"), 401)


# -- the password and audit commands ----------------------------------------------------------------

def test_password_init_and_set_commands(tmp_path):
    data = str(tmp_path / "data")
    short = run_cli("password", "init", "--password-stdin", "--data-dir", data, input="short\n")
    assert short.returncode == 1 and "at least 8" in short.stderr and "Traceback" not in short.stderr
    first = run_cli("password", "init", "--password-stdin", "--data-dir", data, input=PASSWORD + "\n")
    assert first.returncode == 0, first.stderr
    again = run_cli("password", "init", "--password-stdin", "--data-dir", data, input=PASSWORD + "\n")
    assert again.returncode == 1 and "password set" in again.stderr and len(again.stderr.strip().splitlines()) == 1

    store = Store(tmp_path / "data" / "model-manager.sqlite3")
    token, _ = store.create_token(600)
    assert store.verify_password(PASSWORD)
    changed = run_cli("password", "set", "--password-stdin", "--data-dir", data, input=NEW_PASSWORD + "\r\n")
    assert changed.returncode == 0, changed.stderr
    assert "1 token(s) revoked" in changed.stdout
    assert store.token_expiry(token) is None
    assert store.verify_password(NEW_PASSWORD) and not store.verify_password(PASSWORD)
    assert [e["event"] for e in store.audit_events()] == ["password_changed", "bootstrap"]
    assert {e["client"] for e in store.audit_events()} == {"cli"}
    store.close()

    empty = run_cli("password", "set", "--password-stdin", "--data-dir", data, input="")
    assert empty.returncode == 1 and "stdin was empty" in empty.stderr


def test_password_prompts_twice_without_echo(tmp_path):
    data = tmp_path / "data"
    command = f"model-manager password init --data-dir {shlex.quote(str(data))}"
    printed = run_in_terminal(command, [PASSWORD, PASSWORD])  # a real terminal: the prompt needs one
    assert printed.count("New password") == 1 and "Repeat for confirmation" in printed
    assert PASSWORD not in printed  # hidden input is not echoed
    store = Store(data / "model-manager.sqlite3")
    assert store.verify_password(PASSWORD)
    store.close()
    mismatch = run_in_terminal(f"model-manager password set --data-dir {shlex.quote(str(data))}",
                               [NEW_PASSWORD, "something else", NEW_PASSWORD, NEW_PASSWORD])
    assert "do not match" in mismatch


def test_audit_command(tmp_path):
    data = tmp_path / "data"
    missing = run_cli("audit", "--data-dir", str(data))
    assert missing.returncode == 2 and "no database" in missing.stderr
    store = Store(data / "model-manager.sqlite3")
    store.audit("login", client="10.1.2.3")
    store.audit("login_failed", client="10.9.9.9", detail=WRONG)
    store.close()
    table = run_cli("audit", "--data-dir", str(data))
    assert table.returncode == 0, table.stderr
    assert "login_failed" in table.stdout and "10.9.9.9" in table.stdout and "10.1.2.3" in table.stdout
    as_json = run_cli("audit", "--json", "--event", "login", "--data-dir", str(data))
    events = json.loads(as_json.stdout)["events"]
    assert [(e["event"], e["client"]) for e in events] == [("login", "10.1.2.3")]
    limited = json.loads(run_cli("audit", "--json", "-n", "1", "--data-dir", str(data)).stdout)["events"]
    assert [e["event"] for e in limited] == ["login_failed"]
    bad = run_cli("audit", "--limit", "0", "--data-dir", str(data))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_a_burst_of_parallel_guesses_is_cut_off(settings):
    """Concurrent wrong logins from one address: once the free failures are used up, the rest are
    throttled without being verified, even though they all arrived before the first failure."""
    import anyio
    from litestar.testing import AsyncTestClient

    from model_manager.server.app import create_app

    store = Store(settings.db_path)
    store.init_password(PASSWORD)
    store.close()
    app = create_app(settings)
    outcomes: list[str] = []

    async def burst() -> None:
        async with AsyncTestClient(app) as client:
            async def guess() -> None:
                r = await client.post("/api/auth/login", json={"password": WRONG})
                outcomes.append({429: "throttled", 401: "verified"}.get(r.status_code, str(r.status_code)))

            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(guess)

    anyio.run(burst)
    assert len(outcomes) == 20 and set(outcomes) <= {"throttled", "verified"}, outcomes
    assert outcomes.count("verified") <= app.state.auth.throttle.free_failures + 1, outcomes


def test_throttle_in_the_store_is_shared_by_processes(tmp_path):
    """Two throttles on one database (two server processes): failures seen by one block the other."""
    from model_manager.store import Store

    first, second = Store(tmp_path / "db.sqlite3"), Store(tmp_path / "db.sqlite3")
    try:
        a = LoginThrottle(free_failures=2, base_delay=30, store=first)
        b = LoginThrottle(free_failures=2, base_delay=30, store=second)
        a.failure("10.0.0.1")
        a.check("10.0.0.1", shared=True)  # one failure is free
        b.failure("10.0.0.1")  # the second, counted by the other process, blocks
        with pytest.raises(ThrottledError):
            a.check("10.0.0.1", shared=True)
        with pytest.raises(ThrottledError):
            b.check("10.0.0.1", shared=True)
        a.check("10.0.0.2", shared=True)  # another address is not blocked
        a.success("10.0.0.1")
        b.check("10.0.0.1", shared=True)  # the success reset it for every process
    finally:
        first.close()
        second.close()


def test_attempts_at_the_same_moment_are_all_counted(tmp_path):
    """Wrong passwords sent at once (as through several workers): each is counted before its hash is
    checked, so no more than the free ones are checked at all; a right one afterwards takes its count
    back (the count of everyone does not grow with successful logins)."""
    import threading

    from model_manager.auth import Authenticator
    from model_manager.errors import AuthError
    from model_manager.store import Store
    from tests.support import make_settings

    store = Store(tmp_path / "db.sqlite3")
    try:
        store.init_password(PASSWORD)
        auth = Authenticator(make_settings(tmp_path), store)
        outcomes: list[str] = []

        def guess() -> None:
            try:
                auth.login("not the password at all", "10.1.1.1")
            except ThrottledError:
                outcomes.append("throttled")
            except AuthError:
                outcomes.append("checked")

        threads = [threading.Thread(target=guess) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert outcomes.count("checked") == auth.throttle.free_failures and outcomes.count("throttled") == 15
        for _ in range(40):  # successful logins from other addresses leave the global count alone
            auth.login(PASSWORD, "10.2.2.2")
        auth.login(PASSWORD, "10.3.3.3")
    finally:
        store.close()
