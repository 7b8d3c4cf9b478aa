"""Change notifications, the fleet and metrics through a real `model-manager serve` process (SPEC §7
fleet, §8, §9): long polls, the event stream, who runs which version, /metrics.

One server serves most of the module; its model directory is retrained by rewriting a model pickle,
and the watcher (debounce 0.3 s) turns each rewrite into a new version. Tests that stop or restart a
server start their own.
"""
from __future__ import annotations

import json
import pickle
import queue
import threading
import time
from pathlib import Path

import httpx
import pytest
import xgboost as xgb
from prometheus_client.parser import text_string_to_metric_families

from tests.support import FACTORS, ServerProcess, prepare_data_dir, replace_file, run_cli, wait_for, write_group

PASSWORD = "notify password"
MODEL = "engines"
SYMBOL = "SOLUSDT"
GROUP = "SOLUSDT_mid_chg_1m"
PAYLOAD = f"/api/models/{MODEL}/model/{SYMBOL}"


# ---- fixtures and helpers ------------------------------------------------------------------------

def trained(training_data, rounds: int):
    """A tiny regressor; a different `rounds` is a different model (a "retrain")."""
    x, y = training_data
    return xgb.XGBRegressor(n_estimators=rounds, max_depth=2, n_jobs=1).fit(x, y)


class Retrainer:
    """Rewrites SOLUSDT's model pickle with a new model each time, as a training job would."""

    def __init__(self, directory: Path, training_data):
        self.directory = directory
        self.training_data = training_data
        self.rounds = 5

    def retrain(self) -> None:
        self.rounds += 1
        replace_file(self.directory / f"{GROUP}_model.pkl", pickle.dumps(trained(self.training_data, self.rounds)))

    def break_model(self) -> None:
        replace_file(self.directory / f"{GROUP}_model.pkl", b"\x80\x04 this is not a pickle")


def model_directory(root: Path, models) -> Path:
    d = root / "models"
    write_group(d, GROUP, model=models["regressor"])
    write_group(d, "BTCUSDT_mid_chg_1m", model=models["booster"])
    return d


@pytest.fixture(scope="module")
def setup(tmp_path_factory, models, training_data):
    root = tmp_path_factory.mktemp("notify")
    directory = model_directory(root, models)
    prepare_data_dir(root / "data", PASSWORD, {MODEL: directory})
    env = {"MODEL_MANAGER_EVENTS_KEEPALIVE": "1"}
    with ServerProcess(root / "data", extra_args=("--watch-debounce", "0.3"), env=env) as server:
        yield server, server.login(PASSWORD), Retrainer(directory, training_data)


def get(server, path: str, token: str | None, **headers) -> httpx.Response:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(server.url + path, headers={**auth, **headers}, timeout=90)


def live_version(server, token) -> int:
    return get(server, f"/api/models/{MODEL}/symbols/{SYMBOL}/versions", token).json()["live_version"]


def retrain_and_wait(server, token, retrainer) -> int:
    """Retrain and wait until the new version is live; returns its number."""
    before = live_version(server, token)
    retrainer.retrain()
    return wait_for(lambda: (v := live_version(server, token)) > before and v, what="the retrained version to go live")


class EventReader:
    """An event stream read in a thread: every event (and keep-alive comment) lands in `events`."""

    def __init__(self, server, token: str, last_event_id: str | None = None, model: str = MODEL):
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self.events: list[dict] = []
        self.comments: list[str] = []
        self.unnamed: list[dict] = []  # frames with data but no `event:`: a browser fires a `message` for each
        self.ended = threading.Event()
        self.status: int | None = None
        self._changed = threading.Condition()
        self._opened: queue.Queue = queue.Queue()
        self._client = httpx.Client(timeout=httpx.Timeout(10, read=None))
        self._thread = threading.Thread(target=self._read, args=(server.url + f"/api/models/{model}/events", headers), daemon=True)
        self._thread.start()
        self.status = self._opened.get(timeout=30)

    def _read(self, url: str, headers: dict) -> None:
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                self._opened.put(response.status_code)
                event: dict = {}
                for line in response.iter_lines():
                    if line.startswith(":"):
                        with self._changed:
                            self.comments.append(line[1:].strip())
                            self._changed.notify_all()
                    elif not line:
                        if "data" in event and "event" not in event:
                            self.unnamed.append(event)
                        if "event" in event:
                            with self._changed:
                                self.events.append({**event, "data": json.loads(event.get("data", "null"))})
                                self._changed.notify_all()
                        event = {}
                    else:
                        field, _, value = line.partition(":")
                        event[field] = value.removeprefix(" ")
        except httpx.HTTPError:
            pass
        finally:
            self._opened.put(None)
            self.ended.set()

    def wait_for(self, predicate, timeout: float = 30, what: str = "an event") -> dict:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((e for e in self.events if predicate(e)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout}s; got {self.events}")
                self._changed.wait(left)

    def close(self) -> None:
        self._client.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


# ---- long poll ------------------------------------------------------------------------------

def test_long_poll_returns_304_after_its_wait(setup):
    server, token, _ = setup
    etag = get(server, PAYLOAD, token).headers["etag"]
    started = time.monotonic()
    r = get(server, PAYLOAD, token, **{"If-None-Match": etag, "Prefer": "wait=2"})
    waited = time.monotonic() - started
    assert r.status_code == 304
    assert r.headers["preference-applied"] == "wait=2"
    assert r.headers["etag"] == etag
    assert waited >= 1.9, "the request was not held"


def test_plain_if_none_match_is_answered_at_once(setup):
    server, token, _ = setup
    etag = get(server, PAYLOAD, token).headers["etag"]
    started = time.monotonic()
    for _ in range(5):
        r = get(server, PAYLOAD, token, **{"If-None-Match": etag})
        assert r.status_code == 304
        assert "preference-applied" not in r.headers
    assert time.monotonic() - started < 5, "a plain conditional request must not wait"


def test_long_poll_answers_200_soon_after_a_retrain(setup):
    server, token, retrainer = setup
    first = get(server, PAYLOAD, token)
    answers: queue.Queue = queue.Queue()

    def poll() -> None:
        r = get(server, PAYLOAD, token, **{"If-None-Match": first.headers["etag"], "Prefer": "wait=60"})
        answers.put((r, time.monotonic()))

    threading.Thread(target=poll, daemon=True).start()
    time.sleep(0.5)  # the poll is parked
    retrainer.retrain()
    changed = time.monotonic()
    r, answered = answers.get(timeout=60)
    assert r.status_code == 200
    assert r.headers["preference-applied"] == "wait=60"
    assert r.headers["etag"] != first.headers["etag"]
    body = r.json()
    assert body["payload"]["metadata"]["version"] > first.json()["payload"]["metadata"]["version"]
    assert [d["factor_name"] for d in body["payload"]["dim_factors"]] == FACTORS
    assert answered - changed < 15, "the long poll should answer within a debounce and a parse of the change"


def test_long_poll_with_a_stale_etag_answers_at_once(setup):
    server, token, _ = setup
    started = time.monotonic()
    r = get(server, PAYLOAD, token, **{"If-None-Match": '"not-the-live-etag"', "Prefer": "wait=30"})
    assert r.status_code == 200
    assert time.monotonic() - started < 10


# ---- the event stream -------------------------------------------------------------------------

def test_events_of_a_retrain_a_broken_file_and_a_hold(setup):
    server, token, retrainer = setup
    stream = EventReader(server, token)
    try:
        assert stream.status == 200
        number = retrain_and_wait(server, token, retrainer)
        version = stream.wait_for(lambda e: e["event"] == "version" and e["data"]["version"] == number, what="version event")
        assert version["data"] == {"symbol": SYMBOL, "group_key": GROUP, "version": number, "live": True,
                                   "etag": get(server, PAYLOAD, token).headers["etag"]}
        assert int(version["id"]) > 0
        stream.wait_for(lambda e: e["event"] == "model" and e["data"] == {"event": "refreshed"}, what="refreshed event")

        retrainer.break_model()
        broken = stream.wait_for(lambda e: e["event"] == "status" and e["data"]["status"] == "error", what="status event")
        assert broken["data"]["symbol"] == SYMBOL and broken["data"]["issues"]
        assert get(server, PAYLOAD, token).json()["payload"]["metadata"]["version"] == number  # the last good one is served
        retrainer.retrain()
        stream.wait_for(lambda e: e["event"] == "status" and e["data"]["status"] == "ok" and int(e["id"]) > int(broken["id"]),
                        what="status back to ok")

        assert httpx.post(server.url + f"/api/models/{MODEL}/hold", json={"reason": "test"},
                          headers={"Authorization": f"Bearer {token}"}).status_code == 200
        stream.wait_for(lambda e: e["event"] == "model" and e["data"] == {"event": "held"}, what="held event")
        assert httpx.delete(server.url + f"/api/models/{MODEL}/hold", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        stream.wait_for(lambda e: e["event"] == "model" and e["data"] == {"event": "released"}, what="released event")
    finally:
        stream.close()

    # a client that reconnects with the id of the event before the version event gets it again
    before = [e for e in stream.events if int(e["id"]) < int(version["id"])]
    last_id = before[-1]["id"] if before else str(int(version["id"]) - 1)
    replay = EventReader(server, token, last_event_id=last_id)
    try:
        again = replay.wait_for(lambda e: e["id"] == version["id"], timeout=10, what="replayed version event")
        assert again == version
        missed = [e for e in stream.events if int(e["id"]) > int(last_id)]
        replay.wait_for(lambda e: e["id"] == missed[-1]["id"], timeout=10, what="every missed event")
        assert [e["id"] for e in replay.events[:len(missed)]] == [e["id"] for e in missed]
    finally:
        replay.close()


def test_event_stream_sends_keep_alive_comments(setup):
    server, token, _ = setup  # MODEL_MANAGER_EVENTS_KEEPALIVE=1
    stream = EventReader(server, token)
    try:
        wait_for(lambda: len(stream.comments) >= 2, timeout=15, what="two keep-alive comments")
        assert stream.comments[:2] == ["keep-alive", "keep-alive"]
        assert stream.unnamed == []  # a comment only: no empty event for the client
    finally:
        stream.close()


def test_event_stream_of_an_unregistered_model_tells_it_and_ends(setup):
    server, token, retrainer = setup
    auth = {"Authorization": f"Bearer {token}"}
    created = httpx.post(server.url + "/api/models", json={"name": "gone", "path": str(retrainer.directory)},
                         headers=auth, timeout=90)
    assert created.status_code == 201, created.text
    stream = EventReader(server, token, model="gone")
    try:
        assert stream.status == 200
        assert httpx.delete(server.url + "/api/models/gone", headers=auth, timeout=30).status_code == 204
        stream.wait_for(lambda e: e["event"] == "model", timeout=10, what="the unregistered event")
        assert stream.ended.wait(10), "the stream stayed open after its model was unregistered"
        assert stream.events[-1]["data"] == {"event": "unregistered"}
        assert get(server, "/api/models/gone/events", token).status_code == 404  # a reconnect: gone for good
    finally:
        stream.close()


def test_a_last_event_id_that_is_not_a_number_replays_nothing(setup):
    server, token, _ = setup
    for value in (b"\xb2", b"\xb9", b"abc", b"-1"):  # "²" and "¹" (header bytes are latin-1), text, a sign
        with httpx.Client(timeout=10) as client, client.stream(
                "GET", server.url + f"/api/models/{MODEL}/events",
                headers=[(b"Authorization", f"Bearer {token}".encode()), (b"Last-Event-ID", value)]) as response:
            assert response.status_code == 200, value
            assert response.headers["content-type"].startswith("text/event-stream")


def test_event_stream_needs_a_token_and_a_known_model(setup):
    server, token, _ = setup
    assert get(server, f"/api/models/{MODEL}/events", None).status_code == 401
    missing = get(server, "/api/models/nope/events", token)
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


# ---- the fleet --------------------------------------------------------------------------------

def fleet_group(server, token, symbol: str = SYMBOL) -> dict | None:
    fleet = get(server, f"/api/models/{MODEL}/fleet", token).json()
    for client in fleet["clients"]:
        if client["client"] == "session":
            return next((g for g in client["groups"] if g["symbol"] == symbol), None)
    return None


def test_fleet_behind_after_a_retrain_current_after_a_fetch_and_a_confirm(setup):
    server, token, retrainer = setup
    got = get(server, PAYLOAD, token)
    mine = got.json()["payload"]["metadata"]["version"]
    seen = fleet_group(server, token)
    assert seen["version"] == mine == seen["live_version"] and seen["behind"] is False
    assert seen["fetched_at"] and seen["behind_since"] is None

    stream = EventReader(server, token)
    try:
        number = retrain_and_wait(server, token, retrainer)
        event = stream.wait_for(lambda e: e["event"] == "version" and e["data"]["version"] == number, what="version event")
    finally:
        stream.close()
    seen = wait_for(lambda: (g := fleet_group(server, token)) and g["live_version"] == number and g, what="fleet to see v2")
    assert seen["behind"] is True and seen["version"] == mine and seen["behind_since"]
    fleet = get(server, f"/api/models/{MODEL}/fleet", token).json()
    assert {g["symbol"] for g in fleet["groups"]} == {SYMBOL, "BTCUSDT"}
    assert next(c for c in fleet["clients"] if c["client"] == "session")["behind"] >= 1

    assert get(server, PAYLOAD, token).status_code == 200  # the engine fetches the new version
    seen = fleet_group(server, token)
    assert seen["version"] == number and seen["behind"] is False and seen["behind_since"] is None

    # retrain again: behind; a 304 for the new ETag (learned from the event stream) makes it current
    stream = EventReader(server, token)
    try:
        number = retrain_and_wait(server, token, retrainer)
        event = stream.wait_for(lambda e: e["event"] == "version" and e["data"]["version"] == number, what="version event")
    finally:
        stream.close()
    assert fleet_group(server, token)["behind"] is True
    assert get(server, PAYLOAD, token, **{"If-None-Match": event["data"]["etag"]}).status_code == 304
    seen = fleet_group(server, token)
    assert seen["version"] == number and seen["behind"] is False and seen["confirmed_at"]


# ---- metrics ---------------------------------------------------------------------------------

def test_metrics_parse_need_a_token_and_count_payloads(setup):
    server, token, _ = setup
    assert get(server, "/metrics", None).status_code == 401
    before = get(server, "/metrics", token)
    assert before.status_code == 200 and before.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name for f in text_string_to_metric_families(before.text)}
    assert {"model_manager_http_requests", "model_manager_payload_responses", "model_manager_groups",
            "model_manager_refresh_duration_seconds", "model_manager_fleet_clients_behind", "process_cpu_seconds"} <= families

    etag = get(server, PAYLOAD, token).headers["etag"]
    for _ in range(3):  # repeat requests with one token: the fast path answers them, and counts
        assert get(server, PAYLOAD, token, **{"Accept-Encoding": "gzip"}).status_code == 200
        assert get(server, PAYLOAD, token, **{"Accept-Encoding": "identity"}).status_code == 200
        assert get(server, PAYLOAD, token, **{"If-None-Match": etag}).status_code == 304
    after = get(server, "/metrics", token).text
    for result in ("gzip", "identity", "not_modified"):
        name = "model_manager_payload_responses_total"
        assert metric(after, name, model=MODEL, result=result) - metric(before.text, name, model=MODEL, result=result) >= 3, result
    assert metric(after, "model_manager_groups", model=MODEL, status="ok") >= 1
    assert metric(after, "model_manager_http_response_bytes_total") > metric(before.text, "model_manager_http_response_bytes_total")


# ---- restarts, stops, offline ------------------------------------------------------------------

def test_fleet_survives_a_restart_and_the_cli_reads_it(tmp_path, models, training_data):
    directory = model_directory(tmp_path, models)
    data = tmp_path / "data"
    prepare_data_dir(data, PASSWORD, {MODEL: directory})
    env = {"MODEL_MANAGER_METRICS_PUBLIC": "1"}
    with ServerProcess(data, extra_args=("--watch-debounce", "0.3"), env=env) as server:
        token = server.login(PASSWORD)
        assert get(server, "/metrics", None).status_code == 200  # public
        version = get(server, PAYLOAD, token).json()["payload"]["metadata"]["version"]
        # an open stream does not hold up a stop
        stream = EventReader(server, token)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 8, "a stop must not wait for open event streams"
        assert stream.ended.wait(10)
        stream.close()

    cli = run_cli("fleet", MODEL, "--json", "--data-dir", str(data))
    assert cli.returncode == 0, cli.stderr
    report = json.loads(cli.stdout)
    session = next(c for c in report["clients"] if c["client"] == "session")
    assert [(g["symbol"], g["version"], g["behind"]) for g in session["groups"]] == [(SYMBOL, version, False)]
    assert session["address"] == "127.0.0.1"
    table = run_cli("fleet", MODEL, "--data-dir", str(data))
    assert table.returncode == 0, table.stderr
    assert "current" in table.stdout and "never fetched" in table.stdout  # BTCUSDT was never fetched

    # a retrain while no server runs is picked up at the next start: the client is behind
    Retrainer(directory, training_data).retrain()
    with ServerProcess(data, extra_args=("--watch-debounce", "0.3")) as server:
        token = server.login(PASSWORD)
        seen = wait_for(lambda: fleet_group(server, token), what="the fleet of the previous run")
        assert seen["version"] == version and seen["live_version"] == version + 1 and seen["behind"] is True
    table = run_cli("fleet", MODEL, "--data-dir", str(data))
    assert "behind" in table.stdout


def test_fleet_cli_errors(tmp_path):
    missing = run_cli("fleet", MODEL, "--data-dir", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no database" in missing.stderr
    prepare_data_dir(tmp_path / "data", PASSWORD)
    unknown = run_cli("fleet", "nope", "--data-dir", str(tmp_path / "data"))
    assert unknown.returncode != 0 and "nope" in unknown.stderr and "Traceback" not in unknown.stderr
