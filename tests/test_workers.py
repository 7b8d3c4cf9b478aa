"""`serve --workers N`: several server processes on one port, agreeing through the store.

Each request below opens a new connection, so the kernel spreads them over the workers; a check is
made many times in a row so that every worker answers some of them."""
from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest
import xgboost as xgb
from prometheus_client.parser import text_string_to_metric_families

from model_manager.service import ModelManager
from model_manager.workers import WorkerRole
from tests.support import CLI, PASSWORD, ServerProcess, http, make_settings, replace_file, training_data, wait_for, write_model_dir

TRIES = 24  # fresh connections per check: both workers answer some of them (1 in 2**23 that one answers all)


def workers_seen(server: ServerProcess, tries: int = 60) -> set[int]:
    seen = set()
    for _ in range(tries):
        _, _, raw = server.get("/healthz")
        seen.add(json.loads(raw)["worker"])
    return seen


def all_answers(server: ServerProcess, path: str, token: str | None = None, headers: dict | None = None,
                tries: int = TRIES) -> list[tuple[int, dict, bytes]]:
    return [server.get(path, token=token, headers=headers) for _ in range(tries)]


@pytest.fixture
def two_workers(tmp_path):
    # a temporary directory whose path is too long for a Unix socket: the workers meet in /tmp instead
    long_tmp = tmp_path / ("t" * 60) / ("u" * 40)
    long_tmp.mkdir(parents=True)
    server = ServerProcess(tmp_path / "data", workers=2,
                           env={"MODEL_MANAGER_WATCH_DEBOUNCE": "0.3", "TMPDIR": str(long_tmp)})
    server.start()
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.output()


def bootstrap(server: ServerProcess) -> str:
    code = server.setup_code()
    assert code and server.output().count("One-time setup code") == 1  # one code, printed once, for every worker
    status, _, raw = server.post("/api/auth/bootstrap", {"password": PASSWORD, "setup_code": "ABCD-EFGH"})
    assert status == 403, raw
    status, _, raw = server.post("/api/auth/bootstrap", {"password": PASSWORD, "setup_code": code})
    assert status == 201, raw
    return json.loads(raw)["token"]


def retrain(directory, group_key: str, trees: int) -> None:
    x, y = training_data()
    model = xgb.XGBRegressor(n_estimators=trees, max_depth=2, n_jobs=1).fit(x, y)
    replace_file(directory / f"{group_key}_model.pkl", pickle.dumps(model))


def test_every_worker_serves_what_any_worker_changed(two_workers, model_dir):
    server = two_workers
    assert workers_seen(server) == {0, 1}
    assert "2 worker processes" in server.output()
    token = bootstrap(server)
    assert {s for s, _, _ in all_answers(server, "/api/models", token)} == {200}  # the token is known everywhere

    # a registration is served by every worker once its request is answered
    status, _, raw = server.post("/api/models", {"name": "m", "path": str(model_dir)}, token=token)
    assert status == 201, raw
    answers = all_answers(server, "/api/models/m/symbols", token)
    assert {s for s, _, _ in answers} == {200}
    factors = {tuple(json.loads(raw)["factors"]) for _, _, raw in all_answers(server, "/api/models/m/factors", token)}
    assert len(factors) == 1 and len(next(iter(factors))) > 0  # each worker's research index is built too
    first = {h["etag"] for _, h, _ in all_answers(server, "/api/models/m/model/SOLUSDT", token)}
    assert len(first) == 1

    # a retrain seen by the primary's watcher reaches every worker: the payload and the detail
    retrain(model_dir, "SOLUSDT_mid_chg_1m", trees=7)

    def everywhere_new():
        etags = {h["etag"] for _, h, _ in all_answers(server, "/api/models/m/model/SOLUSDT", token, tries=12)}
        return len(etags) == 1 and etags != first and etags

    second = wait_for(everywhere_new, timeout=30, what="every worker serving the retrained model")
    details = [json.loads(raw) for _, _, raw in all_answers(server, "/api/models/m/symbols/SOLUSDT", token)]
    assert len({d["served_updated_at"] for d in details}) == 1

    # a rollback through any worker is served by all of them when it is answered
    status, _, raw = server.post("/api/models/m/symbols/SOLUSDT/rollback", {"reason": "bad retrain"}, token=token)
    assert status == 200, raw
    assert {h["etag"] for _, h, _ in all_answers(server, "/api/models/m/model/SOLUSDT", token)} == first
    # an engine holding the newer ETag is not handed the version it just left by a worker that lags
    etag_new = next(iter(second))
    status, _, _ = server.get("/api/models/m/model/SOLUSDT", token=token, headers={"If-None-Match": etag_new})
    assert status == 200

    # unregistering: gone everywhere
    status, _, _ = http("DELETE", server.url + "/api/models/m", token=token)
    assert status == 204
    assert {s for s, _, _ in all_answers(server, "/api/models/m/symbols", token)} == {404}


def test_long_polls_on_every_worker_wake_on_a_change(two_workers, model_dir):
    server = two_workers
    token = bootstrap(server)
    assert server.post("/api/models", {"name": "m", "path": str(model_dir)}, token=token)[0] == 201
    _, headers, _ = server.get("/api/models/m/model/SOLUSDT", token=token)
    etag = headers["etag"]
    results: list = []

    def poll() -> None:
        results.append(server.get("/api/models/m/model/SOLUSDT", token=token, timeout=60,
                                  headers={"If-None-Match": etag, "Prefer": "wait=30"}))

    polls = [threading.Thread(target=poll) for _ in range(16)]
    for thread in polls:
        thread.start()
    wait_for(lambda: _long_polls_waiting(server, token) == 16, timeout=20, what="16 parked long polls")
    retrain(model_dir, "SOLUSDT_mid_chg_1m", trees=9)
    started = time.monotonic()
    for thread in polls:
        thread.join(40)
    assert len(results) == 16 and {s for s, _, _ in results} == {200}
    assert len({h["etag"] for _, h, _ in results}) == 1 and results[0][1]["etag"] != etag
    assert time.monotonic() - started < 20

    # unregistering through one worker answers the long polls parked on every worker (404) at once
    etag = results[0][1]["etag"]
    results.clear()
    polls = [threading.Thread(target=poll) for _ in range(8)]
    for thread in polls:
        thread.start()
    wait_for(lambda: _long_polls_waiting(server, token) == 8, timeout=20, what="8 parked long polls")
    assert http("DELETE", server.url + "/api/models/m", token=token)[0] == 204
    started = time.monotonic()
    for thread in polls:
        thread.join(40)
    assert [s for s, _, _ in results] == [404] * 8 and time.monotonic() - started < 10


def test_broken_files_show_on_every_worker(two_workers, model_dir):
    server = two_workers
    token = bootstrap(server)
    assert server.post("/api/models", {"name": "m", "path": str(model_dir)}, token=token)[0] == 201
    _, headers, _ = server.get("/api/models/m/model/ETHUSDT", token=token)
    replace_file(model_dir / "ETHUSDT_mid_chg_5m_model.json", b'{"learner": ')  # a retrain cut off

    def broken_everywhere():
        details = [json.loads(raw) for _, _, raw in all_answers(server, "/api/models/m/symbols/ETHUSDT", token, tries=12)]
        return all(d["stale"] and d["status"] == "error" for d in details)

    wait_for(broken_everywhere, timeout=30, what="every worker reporting the broken file")
    # and every worker still serves the last good payload
    assert {h["etag"] for _, h, _ in all_answers(server, "/api/models/m/model/ETHUSDT", token)} == {headers["etag"]}

    # the failed re-read is audited and counted once: by the worker that re-read the files, not again
    # by the one that followed it
    def refreshes(outcome: str) -> float:
        raw = server.get("/metrics", token=token)[2].decode()
        return sum(sample.value for family in text_string_to_metric_families(raw) for sample in family.samples
                   if sample.name == "model_manager_refreshes_total" and sample.labels.get("outcome") == outcome)

    def failures() -> list[dict]:
        return json.loads(server.get("/api/audit?event=refresh_failed", token=token)[2])["events"]

    wait_for(lambda: refreshes("partial") >= 1 and failures(), timeout=15, what="the failed re-read counted")
    time.sleep(3)  # long enough for the other worker to have counted it too, had it done so
    assert len(failures()) == 1 and "ETHUSDT" in failures()[0]["detail"], failures()
    assert refreshes("partial") == 1


class _WorkerEvents:
    """The event stream of model `m` read from one given worker: a keep-alive connection is opened
    until that worker answers it, and the stream is sent on it."""

    def __init__(self, server: ServerProcess, token: str, worker: int):
        self.events: list[tuple[str, dict]] = []
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(200):
            self.client = httpx.Client(base_url=server.url, headers=headers, timeout=httpx.Timeout(10, read=None),
                                       limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
            if self.client.get("/healthz").json()["worker"] == worker:
                break
            self.client.close()
        else:
            raise AssertionError(f"worker {worker} never answered")
        self.opened = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self.opened.wait(10)

    def _read(self) -> None:
        try:
            with self.client.stream("GET", "/api/models/m/events") as response:
                self.opened.set()
                fields: dict[str, str] = {}
                for line in response.iter_lines():
                    if not line:  # the end of one event
                        if "event" in fields:
                            self.events.append((fields["event"], json.loads(fields.get("data", "null"))))
                        fields = {}
                    elif not line.startswith(":"):  # (a comment: keep-alive)
                        field, _, value = line.partition(":")
                        fields[field] = value.removeprefix(" ")
        except httpx.HTTPError:
            pass

    def versions(self, symbol: str) -> list[tuple[int, bool]]:
        return [(d["version"], d["live"]) for kind, d in list(self.events) if kind == "version" and d["symbol"] == symbol]


def test_every_workers_event_stream_tells_of_a_version_made_during_a_hold(two_workers, model_dir):
    """SPEC §8: a new version that is not served (a hold) is a `version` event with `live: false` on
    every event stream, whichever worker recorded it; once each."""
    server = two_workers
    token = bootstrap(server)
    assert server.post("/api/models", {"name": "m", "path": str(model_dir)}, token=token)[0] == 201
    streams = [_WorkerEvents(server, token, worker) for worker in (0, 1)]
    try:
        assert server.post("/api/models/m/hold", {"reason": "checking a retrain"}, token=token)[0] == 200
        retrain(model_dir, "SOLUSDT_mid_chg_1m", trees=7)
        wait_for(lambda: all((2, False) in s.versions("SOLUSDT") for s in streams), timeout=30,
                 what="a version event with live: false on both workers")
        assert http("DELETE", server.url + "/api/models/m/hold", token=token)[0] == 200
        wait_for(lambda: all((2, True) in s.versions("SOLUSDT") for s in streams), timeout=30,
                 what="the released version live on both workers")
        assert [s.versions("SOLUSDT") for s in streams] == [[(2, False), (2, True)]] * 2
    finally:
        for stream in streams:
            stream.client.close()


def _long_polls_waiting(server: ServerProcess, token: str) -> float:
    _, _, raw = server.get("/metrics", token=token)
    for family in text_string_to_metric_families(raw.decode()):
        if family.name == "model_manager_long_polls_waiting":
            return family.samples[0].value
    return 0


def test_revocations_and_throttling_hold_on_every_worker(two_workers, model_dir):
    server = two_workers
    token = bootstrap(server)
    assert server.post("/api/models", {"name": "m", "path": str(model_dir)}, token=token)[0] == 201
    status, _, raw = server.post("/api/keys", {"name": "engine-1", "scope": "read"}, token=token)
    assert status == 201, raw
    key = json.loads(raw)["key"]
    assert {s for s, _, _ in all_answers(server, "/api/models/m/model/SOLUSDT", key)} == {200}
    assert http("DELETE", server.url + "/api/keys/engine-1", token=token)[0] in (200, 204)
    assert {s for s, _, _ in all_answers(server, "/api/models/m/model/SOLUSDT", key)} == {401}

    # a logout is honoured by every worker at once
    _, _, raw = server.post("/api/auth/login", {"password": PASSWORD})
    session = json.loads(raw)["token"]
    assert server.post("/api/auth/logout", token=session)[0] == 204
    assert {s for s, _, _ in all_answers(server, "/api/models", session)} == {401}

    # failed logins are counted across workers: after the free ones, every worker refuses
    for _ in range(5):
        assert server.post("/api/auth/login", {"password": "not the password"})[0] == 401
    answers = [server.post("/api/auth/login", {"password": PASSWORD}) for _ in range(TRIES)]
    assert {s for s, _, _ in answers} == {429}


def test_metrics_and_fleet_cover_every_worker(two_workers, model_dir):
    server = two_workers
    token = bootstrap(server)
    assert server.post("/api/models", {"name": "m", "path": str(model_dir)}, token=token)[0] == 201
    status, _, raw = server.post("/api/keys", {"name": "engine-1", "scope": "read"}, token=token)
    key = json.loads(raw)["key"]
    for _ in range(40):
        assert server.get("/healthz")[0] == 200
    for _ in range(TRIES):
        assert server.get("/api/models/m/model/SOLUSDT", token=key)[0] == 200

    def healthz_and_payloads() -> tuple[float, float, set[str]]:
        _, _, raw = server.get("/metrics", token=key)
        health = payloads = 0.0
        workers = set()
        for family in text_string_to_metric_families(raw.decode()):
            for sample in family.samples:
                if sample.name == "model_manager_http_requests_total" and sample.labels["route"] == "/healthz":
                    health += sample.value
                if sample.name == "model_manager_payload_responses_total":
                    payloads += sample.value
                if sample.name == "process_cpu_seconds_total":
                    workers.add(sample.labels["worker"])
        return health, payloads, workers

    # every worker's counts, whichever one is scraped (each leaves its own within a second or two)
    health, payloads, workers = wait_for(lambda: (r := healthz_and_payloads())[0] >= 40 and r[1] >= TRIES and r,
                                         timeout=10, what="metrics of both workers")
    assert workers == {"0", "1"}
    # scrapes at the same moment (each worker writes its file before answering one)
    answers: list[int] = []
    scrapers = [threading.Thread(target=lambda: answers.extend(server.get("/metrics", token=key)[0] for _ in range(15)))
                for _ in range(6)]
    for thread in scrapers:
        thread.start()
    for thread in scrapers:
        thread.join(60)
    assert answers == [200] * 90
    fleet = json.loads(server.get("/api/models/m/fleet", token=token)[2])
    (client,) = [c for c in fleet["clients"] if c["client"] == "engine-1"]
    assert [g["symbol"] for g in client["groups"]] == ["SOLUSDT"] and client["behind"] == 0


def test_a_worker_that_dies_is_started_again(two_workers):
    server = two_workers
    pids = _worker_pids(server.proc.pid)
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)
    # (a connection the kernel queued for the killed worker in the moment it died is reset: a client
    # retries it; new connections go to the workers that are listening)
    wait_for(lambda: not os.path.exists(f"/proc/{pids[0]}/fd/0"), timeout=10, what="the killed worker gone")
    time.sleep(0.2)
    for _ in range(20):  # the other worker answers meanwhile
        assert server.get("/healthz", timeout=10)[0] == 200
    wait_for(lambda: len(_worker_pids(server.proc.pid)) == 2 and pids[0] not in _worker_pids(server.proc.pid),
             timeout=30, what="a new worker")
    wait_for(lambda: workers_seen(server, 30) == {0, 1}, timeout=30, what="both workers answering")
    assert "exited with status -9; starting it again" in server.output()


def _etags(manager: ModelManager, name: str) -> dict[str, str]:
    return {k: s.payload.etag for k, s in manager.registry.get(name).groups.items() if s.payload is not None}


async def _until(check, what: str, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        await asyncio.sleep(0.05)


def _earlier_run(tmp_path, model_dir, models):
    """Settings, and two registered models ("a": `model_dir`, "b": another directory) loaded once:
    the parse records and versions a restart finds. Returns (settings, b's directory, {name: etags})."""
    settings = make_settings(tmp_path)
    other_dir = write_model_dir(tmp_path / "models-b", models)
    with ModelManager(settings) as first:
        first.serve()
        first.register("a", str(model_dir))
        first.register("b", str(other_dir))
        return settings, other_dir, {name: _etags(first, name) for name in ("a", "b")}


def _serving_a(manager: ModelManager) -> bool:
    return "a" in manager.registry.models and bool(manager.registry.models["a"].groups)


def test_a_secondary_worker_restores_at_once_and_waits_only_for_what_worker_0_checks(tmp_path, model_dir, models):
    """The workers of one server, in one process: worker 1's first load serves a model whose files
    match their parse records while worker 0 has not even started; a model with a file changed while
    the server was down waits (and holds model requests) until worker 0 has checked it, and is then
    served at the version worker 0 recorded."""
    settings, other_dir, before = _earlier_run(tmp_path, model_dir, models)
    retrain(other_dir, "SOLUSDT_mid_chg_1m", trees=7)
    primary_ready = multiprocessing.get_context("fork").Event()
    secondary = ModelManager(settings, role=WorkerRole(1, 2, primary_ready=primary_ready))
    primary = ModelManager(settings, role=WorkerRole(0, 2, primary_ready=primary_ready))
    again = ModelManager(settings, role=WorkerRole(1, 2, primary_ready=multiprocessing.get_context("fork").Event()))

    async def restart() -> None:
        await secondary.start_serving()
        try:
            await _until(lambda: _serving_a(secondary), "worker 1 serving model a before worker 0 starts")
            assert _etags(secondary, "a") == before["a"]  # from the records
            assert secondary.registry.get("b").groups == {} and not secondary.registry.ready.is_set()
            assert [v.version for v in secondary.versions.history("b", "SOLUSDT_mid_chg_1m")] == [1]  # nothing checked
            await primary.start_serving()  # worker 0 checks the changed file and records version 2
            await asyncio.wait_for(secondary.registry.ready.wait(), 60)
            await asyncio.wait_for(primary.registry.ready.wait(), 60)
        finally:
            primary_ready.set()  # (a failure above leaves no thread waiting for it)
        assert _etags(secondary, "b") == _etags(primary, "b") and _etags(secondary, "a") == _etags(primary, "a")
        assert secondary.payload("b", "SOLUSDT").version == 2
        assert _etags(secondary, "b")["SOLUSDT_mid_chg_1m"] != before["b"]["SOLUSDT_mid_chg_1m"]
        for manager in (secondary, primary):
            await manager.stop_serving()

        # nothing changed since: a secondary is ready without worker 0 at all
        await again.start_serving()
        await asyncio.wait_for(again.registry.ready.wait(), 60)
        assert {n: _etags(again, n) for n in ("a", "b")} == {n: _etags(primary, n) for n in ("a", "b")}
        await again.stop_serving()

    try:
        asyncio.run(restart())
    finally:
        for manager in (secondary, primary, again):
            manager.close()


def test_a_secondary_started_while_worker_0_runs_waits_for_its_record_of_a_new_file(tmp_path, model_dir, models):
    """Worker 1 started again (it died) after a file changed that worker 0 has not checked yet: it
    does not check it itself, it waits for worker 0's record of it (here: worker 0's re-read of the
    group), then serves it."""
    settings, other_dir, _ = _earlier_run(tmp_path, model_dir, models)
    primary_ready = multiprocessing.get_context("fork").Event()
    primary = ModelManager(settings, role=WorkerRole(0, 2, primary_ready=primary_ready))
    late = ModelManager(settings, role=WorkerRole(1, 2, primary_ready=primary_ready))

    async def restart() -> None:
        await primary.start_serving()
        await asyncio.wait_for(primary.registry.ready.wait(), 60)
        retrain(other_dir, "SOLUSDT_mid_chg_1m", trees=9)  # the watcher is off: worker 0 re-reads it below
        await late.start_serving()
        await _until(lambda: _serving_a(late), "worker 1 serving model a")
        assert not late.registry.ready.is_set()
        await asyncio.to_thread(primary.registry.refresh_groups, "b", {"SOLUSDT_mid_chg_1m"})
        await asyncio.wait_for(late.registry.ready.wait(), 60)
        assert late.payload("b", "SOLUSDT").version == 2 and _etags(late, "b") == _etags(primary, "b")
        for manager in (late, primary):
            await manager.stop_serving()

    try:
        asyncio.run(restart())
    finally:
        late.close()
        primary.close()


def _worker_pids(parent: int) -> list[int]:
    """The supervisor's worker processes (its children running `serve`, not the model check helpers)."""
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(parent)], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if " serve " in line]


def test_stopping_stops_every_worker_and_a_taken_port_is_one_clear_error(tmp_path):
    with ServerProcess(tmp_path / "data", workers=2) as server:
        pids = _worker_pids(server.proc.pid)
        assert len(pids) == 2
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = subprocess.run([*CLI, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
                                   "--data-dir", str(tmp_path / "other")], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "already in use" in done.stderr and "Traceback" not in done.stderr
        # a second server on the same port is refused too: workers share a port only with each other
        done = subprocess.run([*CLI, "serve", "--host", "127.0.0.1", "--port", str(server.port), "--workers", "2",
                               "--data-dir", str(tmp_path / "other")], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "already in use" in done.stderr
        assert server.stop() == 0
    assert "model-manager stopped (SIGINT)" in server.output()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read()


def test_metrics_of_workers_add_up_and_a_dead_workers_counts_stay(tmp_path):
    """SharedMetrics on its own: three workers' files, one of a process that is gone."""
    from model_manager.metrics import Metrics, SharedMetrics

    def worker(requests: int, polls: int) -> Metrics:
        metrics = Metrics()
        for _ in range(requests):
            metrics.request("/healthz", 200, 10)
        metrics.watch_state(lambda: {"groups": {("m", "ok"): 3}, "long_polls_waiting": polls})
        return metrics

    ours = SharedMetrics(worker(2, 1), tmp_path, 0)
    alive = SharedMetrics(worker(3, 4), tmp_path, 1)
    alive.path = tmp_path / f"worker-1-{os.getppid()}.json"  # a process that is running
    dead = SharedMetrics(worker(5, 7), tmp_path, 1)
    dead.path = tmp_path / "worker-1-999999999.json"  # no such process: it died and was replaced
    alive.publish()
    dead.publish()
    text = ours.render().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("model_manager_http_requests_total", (("route", "/healthz"), ("status", "200")))] == 10
    assert samples[("model_manager_long_polls_waiting", ())] == 5  # live workers only
    assert samples[("model_manager_groups", (("model", "m"), ("status", "ok")))] == 3  # shared state: once
    assert {labels for name, labels in samples if name == "process_cpu_seconds_total"} == \
        {(("worker", "0"),), (("worker", "1"),)}


def test_a_poke_names_the_groups_re_read_and_anything_else_follows_everything():
    """The primary's poke after a re-read names the model and its groups, so the other workers install
    those without listing the whole directory; a registration's sync names the model, which they
    serve without looking at anything else; a poke without names, with too many, or garbled, and any
    other `sync`, have them follow everything (real Unix datagram sockets)."""
    import queue
    import shutil
    import tempfile
    from pathlib import Path

    from model_manager.peers import MAX_NAMED_GROUPS, Peers

    seen: queue.Queue = queue.Queue()
    directory = Path(tempfile.mkdtemp(prefix="mm-peers-"))  # a socket's path must be short
    primary = Peers(directory, 0, 2, lambda: seen.put(("all",)))
    other = Peers(directory, 1, 2, lambda: seen.put(("all",)), lambda model, groups: seen.put(("groups", model, groups)),
                  lambda model: seen.put(("registered", model)))
    other.start()
    try:
        primary.poke("m", {"SOLUSDT_mid_chg_1m", "BTCUSDT_mid_chg_1m"})
        assert seen.get(timeout=5) == ("groups", "m", {"SOLUSDT_mid_chg_1m", "BTCUSDT_mid_chg_1m"})
        primary.poke("m", None)  # a whole directory re-read
        assert seen.get(timeout=5) == ("all",)
        primary.poke("m", {f"S{i:04d}USDT_mid_chg_1m" for i in range(MAX_NAMED_GROUPS + 1)})
        assert seen.get(timeout=5) == ("all",)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b'groups{"model": 1, "groups": "x"}', str(directory / "peer-1.sock"))
        assert seen.get(timeout=5) == ("all",)
        assert primary.sync(timeout=5) == 1 and seen.get(timeout=5) == ("all",)
        assert primary.sync(timeout=5, model="desk.v2") == 1 and seen.get(timeout=5) == ("registered", "desk.v2")
        primary.poke("desk.v2", registered=True)  # its versions are written: install it meanwhile
        assert seen.get(timeout=5) == ("registered", "desk.v2")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:  # not a model name: everything
            sock.sendto(b"sync:1:2/../x", str(directory / "peer-1.sock"))
        assert seen.get(timeout=5) == ("all",)
        assert seen.empty()

        # a registering worker's fresh blobs, for the others to read without hashing them again
        fresh = {"ab" * 32: (12, 345, 6789)}
        primary.offer_fresh("desk.v2", fresh)
        assert other.fresh_from_others("desk.v2") == {"ab" * 32: [12, 345, 6789]}
        assert other.fresh_from_others("desk.v3") == {} and primary.fresh_from_others("desk.v2") == {}
        primary.withdraw_fresh("desk.v2")
        assert other.fresh_from_others("desk.v2") == {}
    finally:
        other.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_worker_a_poke_could_not_reach_is_asked_to_follow_everything_later():
    """A worker busy following may have a full queue; a poke it never received (a re-read that made
    no version, say, only a changed status) is not lost: `retry_missed` asks it to follow everything
    once it has room (real Unix datagram sockets)."""
    import queue
    import shutil
    import tempfile
    import threading
    from pathlib import Path

    from model_manager.peers import Peers

    seen: queue.Queue = queue.Queue()
    busy = threading.Event()
    directory = Path(tempfile.mkdtemp(prefix="mm-peers-"))

    def follow_groups(model, groups) -> None:
        seen.put(("groups", model, groups))
        busy.wait(30)  # following a large model: the queue fills meanwhile

    primary = Peers(directory, 0, 2, lambda: None)
    other = Peers(directory, 1, 2, lambda: seen.put(("all",)), follow_groups)
    other.start()
    try:
        primary.retry_missed()  # nothing missed: nothing sent
        sent = 0
        while not primary._missed and sent < 1000:
            primary.poke("m", {f"S{sent}USDT_mid_chg_1m"})
            sent += 1
        assert primary._missed == {1}, "the queue never filled"
        busy.set()
        received = [seen.get(timeout=5) for _ in range(sent - 1)]  # every poke but the one refused
        assert all(r[0] == "groups" for r in received)
        primary.retry_missed()
        assert seen.get(timeout=5) == ("all",)
        assert not primary._missed and seen.empty()
    finally:
        busy.set()
        other.close()
        shutil.rmtree(directory, ignore_errors=True)


def _client_of(server: ServerProcess, token: str, worker: int) -> httpx.Client:
    """A keep-alive connection that the given worker answers."""
    for _ in range(200):
        client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60,
                              limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        if client.get("/healthz").json()["worker"] == worker:
            return client
        client.close()
    raise AssertionError(f"worker {worker} never answered")


def test_a_refresh_answered_by_another_worker_reaches_the_primary_files_and_all(tmp_path, model_dir):
    """Without the watcher, a retrain is seen only at a refresh, and the worker the refresh reaches
    re-reads the files. Every worker, the primary included, then shows the new files (the factor
    list, not only the payload) before the refresh is answered; also when the primary's own refresh
    had just been refused, and until the files change nothing another worker does clears that."""
    server = ServerProcess(tmp_path / "data", workers=2, extra_args=("--no-watch",))
    server.start()
    try:
        token = bootstrap(server)
        assert server.post("/api/models", {"name": "m", "path": str(model_dir)}, token=token)[0] == 201
        primary, other = _client_of(server, token, 0), _client_of(server, token, 1)
        try:
            # a second group of SOLUSDT: the primary's refresh is refused, and stays so
            for path in list(model_dir.glob("SOLUSDT_mid_chg_1m_*")):
                shutil.copy(path, model_dir / path.name.replace("SOLUSDT_mid_chg_1m", "SOLUSDT_mid_chg_5m"))
            assert primary.post("/api/models/m/refresh").status_code == 400
            assert "refused" in primary.get("/api/models").json()["models"][0]["error"]
            assert other.post("/api/keys", json={"name": "engine", "scope": "read"}).status_code == 201  # a sync
            assert "refused" in primary.get("/api/models").json()["models"][0]["error"]

            # fixed and retrained; the refresh reaches the other worker
            for path in list(model_dir.glob("SOLUSDT_mid_chg_5m_*")):
                path.unlink()
            factors_file = model_dir / "SOLUSDT_mid_chg_1m_factors.txt"
            renamed = [f"new_{f}" for f in factors_file.read_text().split()]
            replace_file(factors_file, ("\n".join(renamed) + "\n").encode())
            retrain(model_dir, "SOLUSDT_mid_chg_1m", trees=7)
            assert other.post("/api/models/m/refresh").status_code == 200
            assert primary.get("/api/models").json()["models"][0]["error"] is None
        finally:
            primary.close()
            other.close()
        details = [json.loads(raw) for _, _, raw in all_answers(server, "/api/models/m/symbols/SOLUSDT", token)]
        assert {tuple(d["factors"]) for d in details} == {tuple(renamed)}
        assert len({h["etag"] for _, h, _ in all_answers(server, "/api/models/m/model/SOLUSDT", token)}) == 1
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.output()
