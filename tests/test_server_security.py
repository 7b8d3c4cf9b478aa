"""SPEC §10 against real `model-manager serve` processes: the setup code behind a same-host forwarder,
forged `X-Forwarded-For` headers, slow and oversized request heads, deeply nested JSON, registration
paths the server cannot reach, and API docs that load nothing from another origin."""
from __future__ import annotations

import ctypes
import json
import os
import re
import socket
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from tests.support import PASSWORD, REPO, ServerProcess, http, init_password, run_cli

WRONG = "guess-1234-xyz"


class Forwarder:
    """A TCP forwarder on 127.0.0.1 (what nginx, stunnel or `ssh -L` on the server's host look like
    to it): every connection it accepts is relayed to the server's port."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def __enter__(self) -> Forwarder:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def audit_clients(data_dir: Path, event: str) -> list[str | None]:
    done = run_cli("audit", "--json", "--event", event, "-n", "1000", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    return [e["client"] for e in json.loads(done.stdout)["events"]]


def detail(raw: bytes) -> str:
    return json.loads(raw)["detail"]


# -- 1. the setup code from every client ------------------------------------------------------------

def test_bootstrap_through_a_same_host_forwarder_needs_the_setup_code(tmp_path):
    with ServerProcess(tmp_path / "data") as server, Forwarder(server.port) as proxy:
        code = re.search(r"/#setup=([A-Z0-9]{4}-[A-Z0-9]{4})", server.output()).group(1)  # the printed link
        assert code == server.setup_code()
        status, _, raw = http("GET", proxy.url + "/api/auth/status")
        assert json.loads(raw)["setup_code_required"] is True
        url = proxy.url + "/api/auth/bootstrap"
        status, _, raw = http("POST", url, body={"password": PASSWORD})
        assert status == 403 and "setup code" in detail(raw)
        for _ in range(5):
            status, _, raw = http("POST", url, body={"password": PASSWORD, "setup_code": "AAAA-AAAA"})
            assert status == 403 and "wrong" in detail(raw)
        status, headers, raw = http("POST", url, body={"password": PASSWORD, "setup_code": code})
        assert status == 429, raw  # five wrong codes: even the right one waits
        time.sleep(int(headers["retry-after"]) + 0.5)
        status, _, raw = http("POST", url, body={"password": PASSWORD, "setup_code": code})
        assert status == 201, raw
        assert json.loads(raw)["token"]
        assert set(audit_clients(server.data_dir, "bootstrap_refused")) == {"127.0.0.1"}


# -- 2. the client address is the TCP peer unless the peer is a trusted proxy --------------------------

def _guess(url: str, forwarded_for: str) -> int:
    status, _, _ = http("POST", url + "/api/auth/login", body={"password": WRONG},
                        headers={"X-Forwarded-For": forwarded_for})
    return status


def test_forged_forwarded_for_neither_escapes_the_throttle_nor_reaches_the_audit_log(tmp_path):
    init_password(tmp_path / "data")
    with ServerProcess(tmp_path / "data") as server:
        statuses = [_guess(server.url, f"198.51.100.{i}") for i in range(1, 8)]
    assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}, statuses
    assert set(audit_clients(tmp_path / "data", "login_failed")) == {"127.0.0.1"}


def test_a_trusted_proxy_names_the_client_and_many_addresses_share_one_limit(tmp_path):
    init_password(tmp_path / "data")
    env = {"MODEL_MANAGER_TRUSTED_PROXIES": "127.0.0.1"}
    with ServerProcess(tmp_path / "data", env=env) as server:
        # one IPv6 /64 is one client, however many of its addresses take turns
        within_64 = [_guess(server.url, f"2001:db8:0:1::{i:x}") for i in range(1, 8)]
        assert within_64[:5] == [401] * 5 and set(within_64[5:]) == {429}, within_64
        # a fresh address per guess: each is under its own limit, but the server's limit stops them
        spread = []
        for i in range(1, 60):
            spread.append(_guess(server.url, f"203.0.113.{i}"))
            if spread[-1] == 429:
                break
        assert spread[-1] == 429 and set(spread[:-1]) == {401} and len(spread) <= 31, spread
        status, _, raw = http("POST", server.url + "/api/auth/login", body={"password": PASSWORD},
                              headers={"X-Forwarded-For": "192.0.2.99"})
        assert status == 429 and "this server" in detail(raw)
    clients = audit_clients(tmp_path / "data", "login_failed")
    assert "203.0.113.1" in clients and "2001:db8:0:1::1" in clients and "127.0.0.1" not in clients


# -- 5. slow clients and oversized heads -------------------------------------------------------------

HEAD_TIMEOUT = 1.5


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes `sock` (EOF or reset) within `seconds`, having sent nothing."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _trickle(port: int, outcome: dict) -> None:
    """Send a request head one line every 0.3 s, never finishing it."""
    sock = socket.create_connection(("127.0.0.1", port))
    started = time.monotonic()
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for i in range(200):
            time.sleep(0.3)
            sock.sendall(b"X-Slow-%d: y\r\n" % i)
    except OSError:
        pass
    outcome["closed_after"] = time.monotonic() - started
    outcome["answer"] = _read_some(sock)
    sock.close()


def _read_some(sock: socket.socket) -> bytes:
    sock.settimeout(2)
    try:
        return sock.recv(1024)
    except OSError:
        return b""


def _open_events(port: int, token: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /api/models/demo/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
                 b"Authorization: Bearer " + token.encode() + b"\r\n\r\n")
    sock.settimeout(10)
    head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def _hide_httptools(where: Path) -> dict:
    """An environment in which `import httptools` fails, as on an install without it."""
    (where / "httptools").mkdir(parents=True)
    (where / "httptools" / "__init__.py").write_text("raise ImportError('httptools is hidden for this test')\n")
    return {"PYTHONPATH": f"{where}{os.pathsep}{REPO}"}


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_idle_and_trickling_connections_are_closed_while_long_polls_and_streams_stay(tmp_path, demo_dir, parser):
    env = {"MODEL_MANAGER_HEADER_TIMEOUT": str(HEAD_TIMEOUT), "MODEL_MANAGER_WATCH_ENABLED": "0"}
    if parser == "h11":
        env.update(_hide_httptools(tmp_path / "hidden"))
    with ServerProcess(tmp_path / "data", env=env) as server:
        assert ("httptools is not installed" in server.output()) == (parser == "h11")
        token = server.login()
        status, _, raw = server.post("/api/models", {"name": "demo", "path": str(demo_dir)}, token=token)
        assert status == 201, raw
        _, headers, _ = server.get("/api/models/demo/model/SOLUSDT", token=token)
        etag = headers["etag"]
        polled: dict = {}
        poll = threading.Thread(target=lambda: polled.update(answer=server.get(
            "/api/models/demo/model/SOLUSDT", token=token, timeout=30,
            headers={"If-None-Match": etag, "Prefer": "wait=6"})))
        poll.start()
        stream = _open_events(server.port, token)
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(300)]
        partial = socket.create_connection(("127.0.0.1", server.port))
        partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        trickled: dict = {}
        trickler = threading.Thread(target=_trickle, args=(server.port, trickled))
        trickler.start()
        for _ in range(5):  # the server keeps answering while they hang on
            assert server.get("/healthz", timeout=10)[0] == 200
            time.sleep(0.2)
        assert all(_closed_within(s, 15) for s in [*idle, partial])
        trickler.join(30)
        assert trickled["closed_after"] < 15 and trickled["answer"] == b"", trickled
        assert server.get("/healthz", timeout=10)[0] == 200
        # the event stream sent its head long ago: still open, it carries the next event
        assert server.post("/api/models/demo/refresh", token=token)[0] == 200
        assert b"event: model" in _read_until(stream, b"event: model")
        poll.join(30)
        status, headers, _ = polled["answer"]
        assert status == 304 and headers["preference-applied"] == "wait=6"
        for s in [*idle, partial, stream]:
            s.close()
        assert _big_head(server.port, 20 * 1024).startswith(b"HTTP/1.1 431")
        assert _big_head(server.port, 8 * 1024).startswith(b"HTTP/1.1 200")
        limits = Path(f"/proc/{server.proc.pid}/limits").read_text()
        soft, hard = re.search(r"Max open files\s+(\d+)\s+(\S+)", limits).groups()
        assert hard == "unlimited" or int(soft) == int(hard), limits
        assert "Traceback" not in server.output()


def _read_until(sock: socket.socket, marker: bytes) -> bytes:
    sock.settimeout(20)
    seen = b""
    while marker not in seen:
        chunk = sock.recv(4096)
        if not chunk:
            break
        seen += chunk
    return seen


def _big_head(port: int, size: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size + b"\r\nConnection: close\r\n\r\n")
        return _read_some(sock)


# -- 6. deeply nested JSON -------------------------------------------------------------------------------

def test_deeply_nested_json_is_a_400_without_a_traceback(tmp_path, demo_dir):
    with ServerProcess(tmp_path / "data") as server:
        token = server.login()
        for path, auth in (("/api/auth/login", None), ("/api/auth/bootstrap", None), ("/api/models", token)):
            for body in (b"[" * 60_000, b'{"a":' * 65 + b"1" + b"}" * 65):
                status, _, raw = http("POST", server.url + path, token=auth, data=body)
                assert status == 400 and "nested deeper than 64" in detail(raw), (path, status, raw[:200])
        # 64 levels are fine; brackets inside strings do not count
        name_in_brackets = {"name": "demo", "path": str(demo_dir), "x": "[" * 100}
        status, _, raw = server.post("/api/models", name_in_brackets, token=token)
        assert status == 201, raw
        status, _, raw = http("POST", server.url + "/api/auth/login", data=b'{"password": ' + b"[" * 63 + b"]" * 63 + b"}")
        assert status == 400 and "nested" not in detail(raw)
        output = server.output()
    assert "Traceback" not in output and "RecursionError" not in output


# -- 7. registration paths the server cannot reach -------------------------------------------------------

def _without_file_access_override() -> None:
    """Run the server as root would run without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH: permission bits
    apply to it as to any user (tests run as root, which would read through chmod 000)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def _permission_bits_bind_the_server() -> dict:
    if os.geteuid() != 0:
        return {}
    try:
        import subprocess
        subprocess.run(["true"], preexec_fn=_without_file_access_override, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"running as root without a way to drop CAP_DAC_OVERRIDE: {exc}")
    return {"preexec_fn": _without_file_access_override}


def test_registration_paths_it_cannot_reach_are_400s_that_reveal_no_server_directory(tmp_path, demo_dir):
    options = _permission_bits_bind_the_server()
    locked = tmp_path / "locked"
    (locked / "models").mkdir(parents=True)
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    with ServerProcess(tmp_path / "data", **options) as server:
        token = server.login()
        locked.chmod(0)
        unreadable.chmod(0o100)
        try:
            cases = {
                str(locked / "models"): ("cannot be reached", "execute (x)"),
                str(unreadable): ("not readable", "read"),
                "models": ("not absolute", "full path"),
                "./demo-models": ("not absolute", "full path"),
                "~/models": ("not absolute", "full path"),
                "~root/models": ("not absolute", "full path"),
            }
            for path, words in cases.items():
                status, _, raw = server.post("/api/models", {"name": "m", "path": path}, token=token)
                assert status == 400, (path, raw)
                message = detail(raw)
                assert all(w in message for w in words), (path, message)
                assert str(Path.home()) not in message and str(REPO) not in message, message
        finally:
            locked.chmod(0o755)
            unreadable.chmod(0o755)
        status, _, raw = server.post("/api/models", {"name": "demo", "path": str(demo_dir)}, token=token)
        assert status == 201, raw
        assert "Traceback" not in server.output() and "PermissionError" not in server.output()


# -- 8. API docs without third-party scripts -------------------------------------------------------------

class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        found = dict(attrs)
        if tag == "script" and found.get("src"):
            self.urls.append(found["src"])
        elif tag == "script":
            self.inline_scripts += 1
        elif tag == "link" and found.get("href"):
            self.urls.append(found["href"])


def test_api_docs_load_only_same_origin_assets(tmp_path):
    with ServerProcess(tmp_path / "data") as server:
        for page in ("/schema", "/schema/swagger"):
            status, headers, raw = server.get(page)
            assert status == 200 and headers["content-type"].startswith("text/html")
            csp = headers["content-security-policy"]
            assert "script-src 'self'" in csp and "http" not in csp, csp
            assets = _Assets()
            assets.feed(raw.decode())
            assert assets.urls and assets.inline_scripts == 0, raw[:500]
            for url in assets.urls:
                absolute = urljoin(server.url + page, url)
                assert urlsplit(absolute).netloc == f"127.0.0.1:{server.port}", url
                status, headers, body = http("GET", absolute)
                assert status == 200 and body, url
        status, headers, raw = server.get("/schema/openapi.json")
        assert status == 200 and json.loads(raw)["openapi"].startswith("3.")
