"""The sqlite store: a real database file in tmp_path, real threads and real processes."""
from __future__ import annotations

import hashlib
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from model_manager.errors import ConflictError, PathError, ValidationError
from model_manager.store import ModelRow, Store, hash_token
from tests.support import PASSWORD


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "data" / "model-manager.sqlite3"


@pytest.fixture
def store(db_path):
    s = Store(db_path)
    yield s
    s.close()


def db_bytes(db_path) -> bytes:
    """Everything sqlite keeps on disk for this db (main file plus WAL)."""
    data = b""
    for suffix in ("", "-wal", "-shm"):
        p = db_path.with_name(db_path.name + suffix)
        if p.exists():
            data += p.read_bytes()
    return data


def test_new_store_creates_dirs_schema_and_private_file(db_path):
    store = Store(db_path)
    try:
        assert db_path.is_file()
        assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
        assert store.is_initialized() is False
        assert store.list_models() == []
        with sqlite3.connect(db_path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"auth", "tokens", "models", "audit"} <= tables
    finally:
        store.close()


def test_password_is_hashed_with_argon2_and_verified(store, db_path):
    store.init_password(PASSWORD)
    assert store.is_initialized()
    assert store.verify_password(PASSWORD) is True
    assert store.verify_password(PASSWORD + "x") is False
    assert store.verify_password("") is False
    with sqlite3.connect(db_path) as raw:
        stored = raw.execute("SELECT password_hash FROM auth").fetchone()[0]
    assert stored.startswith("$argon2")
    assert PASSWORD.encode() not in db_bytes(db_path)


def test_init_password_rules(store):
    with pytest.raises(ValidationError, match="at least 8"):
        store.init_password("short")
    with pytest.raises(ValidationError, match="at most 1024"):
        store.init_password("x" * 5000)
    assert store.is_initialized() is False
    store.init_password(PASSWORD)
    assert store.verify_password("x" * 5000) is False  # the hash library's size limit is not an error here
    with pytest.raises(ConflictError, match="already set"):
        store.init_password("another password")
    assert store.verify_password(PASSWORD)


def test_verify_without_password_is_false(store):
    assert store.verify_password(PASSWORD) is False


def test_tokens_are_random_and_stored_only_as_sha256(store, db_path):
    before = datetime.now(UTC)
    token, expires = store.create_token(3600)
    other, _ = store.create_token(3600)
    assert token != other and len(token) >= 43  # 32 bytes, URL-safe base64
    assert before + timedelta(seconds=3599) <= expires <= datetime.now(UTC) + timedelta(seconds=3601)
    assert store.token_expiry(token) == expires
    raw_bytes = db_bytes(db_path)
    assert token.encode() not in raw_bytes and other.encode() not in raw_bytes
    with sqlite3.connect(db_path) as raw:
        digests = {r[0] for r in raw.execute("SELECT digest FROM tokens")}
    assert hashlib.sha256(token.encode()).hexdigest() in digests
    assert hash_token(token) in digests
    assert store.token_expiry("not-a-token") is None


def test_token_expires(store):
    token, _ = store.create_token(1)
    assert store.token_expiry(token) is not None
    time.sleep(1.1)
    assert store.token_expiry(token) is None


def test_revoke_one_and_all_but_one(store):
    a, _ = store.create_token(60)
    b, _ = store.create_token(60)
    c, _ = store.create_token(60)
    store.revoke_token(a)
    assert store.token_expiry(a) is None and store.token_expiry(b) is not None
    assert store.revoke_all_tokens(keep_token=c) == 1
    assert store.token_expiry(b) is None and store.token_expiry(c) is not None
    assert store.revoke_all_tokens() == 1
    assert store.token_expiry(c) is None


def test_set_password_revokes_other_tokens(store):
    store.init_password(PASSWORD)
    keep, _ = store.create_token(60)
    gone, _ = store.create_token(60)
    assert store.set_password("new password 123", keep_token=keep) == 1
    assert store.token_expiry(keep) is not None and store.token_expiry(gone) is None
    assert store.verify_password("new password 123") and not store.verify_password(PASSWORD)
    with pytest.raises(ValidationError):
        store.set_password("short")
    assert store.set_password("third password") == 1  # no keep_token: the last one goes too
    assert store.token_expiry(keep) is None


def test_models_rows(store):
    row = store.add_model("prod", "/srv/models/prod")
    assert isinstance(row, ModelRow) and row.name == "prod" and row.path == "/srv/models/prod"
    assert datetime.fromisoformat(row.registered_at).tzinfo is not None
    store.add_model("alpha", "/srv/models/alpha")
    assert [m.name for m in store.list_models()] == ["alpha", "prod"]
    assert store.get_model("prod") == row
    assert store.get_model("nope") is None
    with pytest.raises(ConflictError, match="already registered for /srv/models/prod"):
        store.add_model("prod", "/elsewhere")
    assert store.remove_model("prod") is True
    assert store.remove_model("prod") is False
    assert store.get_model("prod") is None


def test_audit_events_newest_first_filtered_and_limited(store):
    store.audit("login", client="10.0.0.1")
    store.audit("login_failed", client="10.0.0.2", detail="wrong password")
    store.audit("login", client="10.0.0.3")
    events = store.audit_events()
    assert [e["event"] for e in events] == ["login", "login_failed", "login"]
    assert events[0]["client"] == "10.0.0.3"
    assert set(events[0]) == {"id", "at", "event", "client", "detail"}
    assert [e["client"] for e in store.audit_events(event="login")] == ["10.0.0.3", "10.0.0.1"]
    assert len(store.audit_events(limit=1)) == 1
    assert store.audit_events(event="nothing") == []


def test_restart_keeps_password_tokens_models_and_audit(db_path):
    first = Store(db_path)
    first.init_password(PASSWORD)
    token, expires = first.create_token(600)
    first.add_model("prod", "/srv/models/prod")
    first.audit("login", client="127.0.0.1")
    first.close()

    second = Store(db_path)
    try:
        assert second.is_initialized() and second.verify_password(PASSWORD)
        assert second.token_expiry(token) == expires
        assert [m.name for m in second.list_models()] == ["prod"]
        assert second.audit_events()[0]["event"] == "login"
    finally:
        second.close()


def test_concurrent_threads_and_connections(db_path):
    """Threads share one Store while another Store (another connection, as a CLI would have) writes too."""
    shared = Store(db_path)
    other = Store(db_path)
    shared.init_password(PASSWORD)
    tokens: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(store: Store, worker: int) -> None:
        try:
            for i in range(25):
                token, _ = store.create_token(600)
                with lock:
                    tokens.append(token)
                store.add_model(f"m{worker}-{i}", f"/models/{worker}/{i}")
                store.audit("login", client=f"w{worker}")
                assert store.token_expiry(token) is not None
                store.list_models()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(shared if n % 2 else other, n)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert len(shared.list_models()) == 8 * 25
        assert len(shared.audit_events(limit=1000, event="login")) == 8 * 25
        assert len(shared.audit_events(limit=1000, event="register")) == 8 * 25  # one per registration
        assert all(other.token_expiry(t) is not None for t in tokens)
        assert shared.verify_password(PASSWORD)
    finally:
        shared.close()
        other.close()


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from model_manager.store import Store
    store = Store(Path(sys.argv[1]))
    print("ready", flush=True)
    for i in range(int(sys.argv[2])):
        store.add_model(f"proc-{i}", f"/models/proc/{i}", client="cli", detail=f"proc-{i}")
    store.close()
""")


def test_another_process_writes_at_the_same_time(store, db_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db_path), "150"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    for i in range(150):
        store.add_model(f"here-{i}", f"/models/here/{i}")
    assert proc.wait(timeout=120) == 0
    names = {m.name for m in store.list_models()}
    assert len(names) == 300
    assert len(store.audit_events(limit=1000, event="register")) == 300
    assert len([e for e in store.audit_events(limit=1000, event="register") if e["client"] == "cli"]) == 150


def test_kill_9_mid_writes_leaves_a_consistent_db(db_path):
    Store(db_path).close()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db_path), "100000"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    store = Store(db_path)
    try:
        with sqlite3.connect(db_path) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = store.list_models()
        assert rows, "the writer should have committed something in 0.5 s"
        assert all(r.path == f"/models/proc/{r.name.split('-')[1]}" for r in rows)
        # a registration and its audit event are one transaction: never one without the other
        assert len(store.audit_events(limit=100000, event="register")) == len(rows)
    finally:
        store.close()


def test_a_file_that_is_not_a_database_is_a_clear_error(db_path):
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(PathError, match="not a usable model-manager database"):
        Store(db_path)


def test_an_unwritable_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PathError, match="cannot open the database"):
        Store(blocker / "sub" / "db.sqlite3")


def test_core_does_not_import_cli_or_web_frameworks():
    code = "import sys, model_manager.store; bad = [m for m in ('typer', 'rich', 'litestar') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_registration_and_its_audit_event_are_one_transaction(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    store.add_model("prod", "/srv/models/prod", client="10.0.0.7", detail="prod -> /srv/models/prod (3 groups)")
    assert store.remove_model("prod", client="cli") is True
    assert store.remove_model("prod", client="cli") is False  # nothing removed: nothing audited
    events = [(e["event"], e["client"], e["detail"]) for e in store.audit_events()]
    assert events == [("unregister", "cli", "prod"), ("register", "10.0.0.7", "prod -> /srv/models/prod (3 groups)")]
    with pytest.raises(ConflictError):
        store.add_model("x", "/a")
        store.add_model("x", "/b")
    assert [e["event"] for e in store.audit_events()].count("register") == 2  # the refused one left no trace
