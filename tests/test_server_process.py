"""The whole flow a new user follows, against a real `model-manager serve` process over HTTP."""
from __future__ import annotations

import gzip
import json
import os
import pickle
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import xgboost as xgb

from tests.support import PASSWORD, ServerProcess, http, run_cli, training_data, write_group


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


def test_server_processes_load_no_numpy_pandas_or_xgboost(tmp_path, demo_dir):
    """Model files are decoded in check processes of their own, forked from one helper the workers
    share; the supervisor and the workers never load numpy, pandas or XGBoost (tens of MB in each
    process), also while a directory is registered."""
    with ServerProcess(tmp_path / "data", extra_args=("--no-watch",), workers=2) as srv:
        token = srv.login()
        status, _, body = srv.post("/api/models", {"name": "demo", "path": str(demo_dir)}, token=token)
        assert status == 201, body
        assert json.loads(body)["status"] == "ok"
        def children(pid: int) -> list[int]:  # of every thread (a load thread starts a worker's own helper)
            return [int(p) for task in Path(f"/proc/{pid}/task").iterdir() for p in (task / "children").read_text().split()]

        def is_helper(pid: int) -> bool:
            return b"_serve_checks" in Path(f"/proc/{pid}/cmdline").read_bytes()

        # the supervisor's children: two workers and the one check helper they share (started before
        # them, so neither worker started one of its own for the registration)
        helpers = [pid for pid in children(srv.proc.pid) if is_helper(pid)]
        workers = [pid for pid in children(srv.proc.pid) if not is_helper(pid)]
        assert len(helpers) == 1 and len(workers) == 2
        assert not [pid for worker in workers for pid in children(worker) if is_helper(pid)]
        for pid in [srv.proc.pid, *workers]:
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert not [lib for lib in ("/numpy/", "/pandas/", "/xgboost/") if lib in maps], pid
        # the shared helper killed: the worker a registration reaches starts a helper of its own
        os.kill(helpers[0], signal.SIGKILL)
        time.sleep(0.5)
        x, y = training_data()
        fresh = xgb.XGBRegressor(n_estimators=3, max_depth=2, n_jobs=1).fit(x, y)  # bytes no cache has seen
        write_group(tmp_path / "fresh", "ADAUSDT_mid_chg_1m", model=fresh)
        status, _, body = srv.post("/api/models", {"name": "fresh", "path": str(tmp_path / "fresh")}, token=token)
        assert status == 201 and json.loads(body)["status"] == "ok", body
        assert len([pid for worker in workers for pid in children(worker) if is_helper(pid)]) == 1


# -- payload polls answered by the HTTP protocol itself (server/pollprotocol.py) ---------------------------

def _read_answer(reader) -> tuple[bytes, dict, bytes]:
    """One response from `reader`: (status line, headers without `date`, body)."""
    status = reader.readline().rstrip()
    headers = {}
    while (line := reader.readline().rstrip()) != b"":
        name, _, value = line.partition(b": ")
        headers[name.lower()] = value
    body = reader.read(int(headers.get(b"content-length", b"0")))
    headers.pop(b"date")
    return status, headers, body


def _exchange(port: int, requests: list[bytes], answers: int, *, one_by_one: bool = False) -> list[tuple[bytes, dict, bytes]]:
    """Send `requests` at once on one connection (pipelined), or each after the answer to the one
    before (`one_by_one`), and read `answers` responses back."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        if not one_by_one:
            sock.sendall(b"".join(requests))
        reader = sock.makefile("rb")
        out = []
        for index in range(answers):
            if one_by_one:
                sock.sendall(requests[index])
            out.append(_read_answer(reader))
        return out


def test_polls_answered_by_the_protocol_match_the_route_byte_for_byte(tmp_path, demo_dir):
    """The common poll is answered by the HTTP protocol itself (server/pollprotocol.py) while a
    connection sends one request at a time; the same request with `?version=N` (the live one) goes
    through uvicorn and the Litestar route, and so do pipelined requests (through the app's fast
    path). Every way must give the same bytes, in order."""
    with ServerProcess(tmp_path / "data", extra_args=("--no-watch", "--demo")) as srv:
        token = srv.login()
        _, headers, _ = srv.get("/api/models/demo/model/SOLUSDT", token=token)  # the token is now known
        version = json.loads(srv.get("/api/models/demo/symbols/SOLUSDT/versions", token=token)[2])["live_version"]

        def get(path: str, *extra: bytes) -> bytes:
            return (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode()
                    + b"\r\n" + b"".join(h + b"\r\n" for h in extra) + b"\r\n")

        fast, route = "/api/models/demo/model/SOLUSDT", f"/api/models/demo/model/SOLUSDT?version={version}"
        inm = b"If-None-Match: " + headers["etag"].encode()
        for extra in ((b"Accept-Encoding: gzip",), (), (inm,)):  # gzip, identity, 304
            answers = _exchange(srv.port, [get(fast, *extra), get(route, *extra), get(fast, *extra)], 3)
            assert answers[0] == answers[1] == answers[2], extra
            by_protocol = _exchange(srv.port, [get(fast, *extra), get(fast, *extra)], 2, one_by_one=True)
            assert by_protocol == answers[:2], extra
        status, got, body = answers[0]
        assert status == b"HTTP/1.1 304 Not Modified" and body == b"" and got[b"etag"] == headers["etag"].encode()
        assert got[b"x-content-type-options"] == b"nosniff" and b"content-security-policy" in got
        # an encoded head is kept per version, but never past its second: the Date moves on
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as sock:
            reader, dates = sock.makefile("rb"), []
            for _ in range(2):
                sock.sendall(get(fast, inm))
                lines = [reader.readline()]
                while lines[-1] not in (b"\r\n", b""):
                    lines.append(reader.readline())
                assert lines[0].startswith(b"HTTP/1.1 304") and lines[-1] == b"\r\n", lines
                dates += [line for line in lines if line.lower().startswith(b"date: ")]
                time.sleep(1.1)
            assert len(dates) == 2 and dates[0] != dates[1]
        # the metrics count both ways alike
        _, _, raw = srv.get("/metrics", token=token)
        counted = [line for line in raw.decode().splitlines()
                   if line.startswith('model_manager_payload_responses_total{model="demo",result="not_modified"}')]
        assert counted and float(counted[0].split()[-1]) >= 3
        # a slow request pipelined behind a direct answer is not cut off by the keep-alive timeout
        # (5 s) that the direct answer's end started
        slow = get(fast, inm, b"Prefer: wait=7")
        answers = _exchange(srv.port, [get(fast, b"Accept-Encoding: gzip"), slow], 2)
        assert answers[0][0] == b"HTTP/1.1 200 OK" and answers[1][0] == b"HTTP/1.1 304 Not Modified"
        assert answers[1][1][b"preference-applied"] == b"wait=7"
        # a GET with a body is the route's (which reads the body): one answer, nothing after it
        with_body = get(fast, b"Accept-Encoding: gzip", b"Content-Length: 2")[:-2] + b"\r\n{}"
        answers = _exchange(srv.port, [with_body, get(fast, inm)], 2)
        assert [a[0] for a in answers] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 304 Not Modified"]
        # a poll asking to close the connection is the route's: answered, then closed
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as sock:
            sock.sendall(get(fast, inm, b"Connection: close"))
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 304") and b"connection: close" in reply
        # one connection goes back and forth between the poll protocol and uvicorn: polls, another
        # route (uvicorn), a poll whose head comes in two reads, a poll again; idle, it is closed
        # after the keep-alive timeout (5 s)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as sock:
            reader = sock.makefile("rb")
            poll = get(fast, inm)
            sock.sendall(poll)
            assert _read_answer(reader)[0] == b"HTTP/1.1 304 Not Modified"
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _read_answer(reader)[0] == b"HTTP/1.1 200 OK"
            sock.sendall(poll[:20])
            time.sleep(0.3)
            sock.sendall(poll[20:])
            assert _read_answer(reader)[0] == b"HTTP/1.1 304 Not Modified"
            sock.sendall(poll)
            assert _read_answer(reader)[0] == b"HTTP/1.1 304 Not Modified"
            # pipelined to uvicorn with the start of a third request: the connection is not handed
            # back with those bytes in uvicorn's parser
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" + poll + poll[:20])
            time.sleep(0.3)
            sock.sendall(poll[20:])
            assert [_read_answer(reader)[0] for _ in range(3)] == [
                b"HTTP/1.1 200 OK", b"HTTP/1.1 304 Not Modified", b"HTTP/1.1 304 Not Modified"]
            started = time.monotonic()
            assert sock.recv(1) == b"" and time.monotonic() - started < 15

        # blank lines between requests are ignored, never taken for the poll before them again
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as sock:
            reader = sock.makefile("rb")
            sock.sendall(get(fast, b"Accept-Encoding: gzip"))
            assert _read_answer(reader)[0] == b"HTTP/1.1 200 OK"
            sock.sendall(b"\r\n\r\n")
            time.sleep(0.3)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = _read_answer(reader)
            assert status == b"HTTP/1.1 200 OK" and b"models_loaded" in body
        # a head ended by bare line feeds is answered 400 at once, as uvicorn answers it
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            sock.sendall(get(fast).replace(b"\r\n", b"\n"))
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
        # a client that pipelines polls and falls behind on reading for longer than the keep-alive
        # timeout is not taken for idle: it gets every answer
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as sock:
            for _ in range(400):
                sock.sendall(get(fast))  # the plain body: the write buffer fills
                time.sleep(0.002)
            time.sleep(6.5)
            reader = sock.makefile("rb")
            assert all(_read_answer(reader)[0] == b"HTTP/1.1 200 OK" for _ in range(400))
        # gzip bodies go out with sendfile(2) as far as the socket takes them, the rest through the
        # transport: with a client that does not read, both ways, in order, byte for byte
        expected = _exchange(srv.port, [get(fast, b"Accept-Encoding: gzip")], 1)[0]
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the socket fills at once
            sock.settimeout(20)
            sock.connect(("127.0.0.1", srv.port))
            for _ in range(1000):
                sock.sendall(get(fast, b"Accept-Encoding: gzip"))
                time.sleep(0.001)  # one request per read: each answered by the poll protocol
            reader = sock.makefile("rb")
            assert all(_read_answer(reader) == expected for _ in range(1000))


def test_a_long_poll_open_at_a_stop_signal_gets_its_304(tmp_path, demo_dir):
    """SIGTERM (pm2 stop, a deploy) answers the waiting long polls with what is served — a 304 —
    before the grace period, instead of cutting them off with a 500 when it runs out."""
    srv = ServerProcess(tmp_path / "data", extra_args=("--no-watch", "--demo"))
    with srv:
        token = srv.login()
        _, headers, _ = srv.get("/api/models/demo/model/SOLUSDT", token=token)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as sock:
            sock.sendall(b"GET /api/models/demo/model/SOLUSDT HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                         + token.encode() + b"\r\nIf-None-Match: " + headers["etag"].encode()
                         + b"\r\nPrefer: wait=30\r\n\r\n")
            time.sleep(1.0)  # parked
            started = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            reply = sock.recv(65536)
            assert reply.startswith(b"HTTP/1.1 304"), reply[:200]
            assert time.monotonic() - started < 5
        assert srv.proc.wait(timeout=20) == 0


def test_a_request_unfinished_at_a_stop_signal_gets_a_503(tmp_path):
    """A registration still checking files when the server is stopped cannot be cut short (its check
    runs in a thread): it is answered 503 with a detail that says to send it again, not uvicorn's
    plain-text 500 for a request it cancels; the long poll answered beside it still gets its 304."""
    from tests.test_fuzz_parsers import _slow_hash_pickle

    x, y = training_data()
    write_group(tmp_path / "slow", "ADAUSDT_mid_chg_1m", model=xgb.XGBRegressor(n_estimators=3, max_depth=2).fit(x, y))
    (tmp_path / "slow" / "ADAUSDT_mid_chg_1m_info.pkl").write_bytes(_slow_hash_pickle(29))  # seconds to unpickle
    srv = ServerProcess(tmp_path / "data", extra_args=("--no-watch", "--demo"))
    with srv:
        token = srv.login()
        _, headers, _ = srv.get("/api/models/demo/model/SOLUSDT", token=token)
        answers: list = []
        register = threading.Thread(target=lambda: answers.append(http(
            "POST", srv.url + "/api/models", token=token, body={"name": "slow", "path": str(tmp_path / "slow")}, timeout=60)))
        register.start()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as sock:
            sock.sendall(b"GET /api/models/demo/model/SOLUSDT HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                         + token.encode() + b"\r\nIf-None-Match: " + headers["etag"].encode()
                         + b"\r\nPrefer: wait=30\r\n\r\n")
            time.sleep(1.5)  # the registration is checking the info.pkl, the poll is parked
            srv.proc.send_signal(signal.SIGTERM)
            assert sock.recv(65536).startswith(b"HTTP/1.1 304")
            register.join(60)
        status, got, body = answers[0]
        assert status == 503, body
        assert "stopping" in json.loads(body)["detail"] and got["retry-after"] == "5"
        srv.proc.wait(timeout=60)
