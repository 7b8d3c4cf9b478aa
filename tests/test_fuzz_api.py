"""API fuzzing with schemathesis against a real `model-manager serve` process and its own
`/schema/openapi.json`.

Every operation the served schema lists gets generated requests (valid and invalid bodies, path and
query values; also the real model name and symbols, so the deep paths run), sent with a live token
from a real login. No answer may be a 5xx and every answer must match the schema: a documented
status code, the declared content type, a body of the declared shape. A second pass sends generated
requests without a valid token (none, garbage, another scheme, revoked, expired) to every guarded
operation: each must be a 401 with the JSON error body.

Examples per operation and mode are bounded (`FUZZ_EXAMPLES`, default 30) so the file runs in about a
minute; raise it by hand for a deeper run: `FUZZ_EXAMPLES=500 pytest tests/test_fuzz_api.py`.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from model_manager.settings import Settings
from model_manager.store import Store
from tests.support import ServerProcess

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
DEMO_SYMBOLS = ["SOLUSDT", "BTCUSDT", "ETHUSDT", "BNBUSDT", "XRPUSDT", "DOGEUSDT"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, _demo_template):
    """A real server with a password set and the demo directory registered through the API."""
    root = tmp_path_factory.mktemp("fuzz-api")
    models = root / "models"
    shutil.copytree(_demo_template, models)
    srv = ServerProcess(root / "data", extra_args=("--no-watch",))
    with srv:
        srv.token = srv.login()
        status, _, raw = srv.post("/api/models", {"name": "demo", "path": str(models)}, token=srv.token)
        assert status == 201, raw
        srv.db_path = Settings(data_dir=root / "data").db_path
        yield srv
        assert srv.proc.poll() is None, srv.output()
    assert "Traceback" not in srv.output(), srv.output()


@pytest.fixture(scope="module")
def operations(server):
    """The operations of the schema the running server publishes."""
    schema = schemathesis.openapi.from_url(server.url + "/schema/openapi.json")
    # Unknown query parameters are ignored on purpose (cache busters, old clients): not a defect.
    schema.config.generation.update(allow_extra_parameters=False)
    # the event stream never ends by design: its behaviour is tested in test_notify.py
    ops = [op for op in (result.ok() for result in schema.get_all_operations()) if not op.path.endswith("/events")]
    assert {op.label for op in ops} >= {"GET /api/models", "POST /api/models", "GET /api/models/{name}/model/{symbol}"}
    return ops


def minted_token(server, ttl: int = 3600) -> str:
    """A fresh live token written through the server's own store (for logout, which revokes it)."""
    store = Store(server.db_path)
    try:
        return store.create_token(ttl)[0]
    finally:
        store.close()


def strategies(op, headers: dict[str, str]):
    """Generated requests of both modes, plus valid ones aimed at the registered model. `headers`
    are fixed so that a negative case is never one whose only flaw is a missing token."""
    out = [op.as_strategy(GenerationMode.POSITIVE, headers=headers)]
    if any(len(inputs) for inputs in (op.path_parameters, op.query, op.body)):
        out.append(op.as_strategy(GenerationMode.NEGATIVE, headers=headers))  # nothing to make invalid otherwise
    names = {p.name for p in op.path_parameters}
    if "name" in names:
        if "symbol" in names:
            out.append(st.sampled_from(DEMO_SYMBOLS).flatmap(lambda s: op.as_strategy(
                GenerationMode.POSITIVE, headers=headers, path_parameters={"name": "demo", "symbol": s})))
        out.append(op.as_strategy(GenerationMode.POSITIVE, headers=headers, path_parameters={"name": "demo"}))
    return out


def run_cases(strategy, check) -> None:
    @given(case=strategy)
    @FUZZ_SETTINGS
    def fuzz(case):
        check(case)

    fuzz()


def test_no_server_errors_and_responses_match_the_schema(server, operations, subtests):
    def check(case):
        token = minted_token(server) if case.path == "/api/auth/logout" else server.token
        # Schema-valid is not always acceptable here: a well-formed path that does not exist is a 400
        # by contract (SPEC §2), so `positive_data_acceptance` cannot apply; every other check does.
        case.call_and_validate(base_url=server.url, headers={"Authorization": f"Bearer {token}"},
                               excluded_checks=[positive_data_acceptance])

    auth = {"Authorization": f"Bearer {server.token}"}
    deletes = [op for op in operations if op.method.upper() == "DELETE"]
    for op in operations:
        if op in deletes:
            continue  # deleting `demo` would starve the other operations: run last
        for strategy in strategies(op, auth):
            with subtests.test(msg=op.label):
                run_cases(strategy, check)
    # the real client is still served after the storm
    status, _, raw = server.get("/api/models/demo/model/SOLUSDT", token=server.token)
    assert status == 200 and json.loads(raw)["payload"]["dim_factors"]
    for op in deletes:
        for strategy in strategies(op, auth):
            with subtests.test(msg=op.label):
                run_cases(strategy, check)


def expired_and_revoked_tokens(server) -> tuple[str, str]:
    expired = minted_token(server, ttl=-60)
    revoked = minted_token(server)
    status, _, raw = server.post("/api/auth/logout", token=revoked)
    assert status == 204, raw
    return expired, revoked


def test_every_guarded_operation_is_401_without_a_valid_token(server, operations, subtests):
    expired, revoked = expired_and_revoked_tokens(server)
    before = server.get("/api/models", token=server.token)[2]
    bad_headers = [None, "Bearer not-a-token", f"Basic {server.token}", f"Bearer{server.token}", "Bearer ",
                   f"Bearer {server.token}x", f"Bearer {revoked}", f"Bearer {expired}", f"Token {server.token}"]
    guarded = [op for op in operations if op.definition.raw.get("security")]
    labels = {op.label for op in guarded}
    assert {op.label for op in operations if op.path.startswith("/api/models")} <= labels
    assert {"GET /api/audit", "POST /api/auth/logout", "POST /api/auth/password"} <= labels

    def check(pair):
        authorization, case = pair
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        if authorization is not None:
            headers["Authorization"] = authorization
        case.headers = headers
        response = case.call(base_url=server.url)
        assert response.status_code == 401, (case.method, case.formatted_path, authorization, response.text)
        body = response.json()
        assert body["status_code"] == 401 and "token" in body["detail"]
        assert "Bearer" in str(response.headers.get("www-authenticate")), response.headers

    for op in guarded:
        modes = [GenerationMode.POSITIVE]
        if any(len(inputs) for inputs in (op.path_parameters, op.query, op.body)):
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            with subtests.test(msg=f"{op.label} {mode.value}"):
                run_cases(st.tuples(st.sampled_from(bad_headers), op.as_strategy(mode)), check)
    # nothing was changed by all those rejected requests, and the live token still works
    status, _, raw = server.get("/api/models", token=server.token)
    assert status == 200 and json.loads(raw) == json.loads(before)
