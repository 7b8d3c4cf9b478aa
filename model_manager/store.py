"""The sqlite store under the data dir: password hash, API tokens, registered models, audit trail,
and the tables behind versions (their rules live in `versions.py`) and API keys (`keys.py`).

One file, WAL mode, a busy timeout, the schema created on open. A `Store` is safe to share between
threads (one connection behind a lock) and between processes (a CLI `register` or `password set`
while a server runs): every write is a single `BEGIN IMMEDIATE` transaction, so a process killed in
the middle of one leaves the database as it was before it.

Secrets never reach the file in clear: the password is an argon2 hash (libpass `CryptContext`, which
can migrate hashes on login via `verify_and_update`); a token or an API key is stored as its sha256 digest.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from passlib.context import CryptContext

from model_manager.clock import isoformat, utc_now
from model_manager.errors import ConflictError, PathError, ValidationError

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # the hash library refuses more than 4096 bytes; no human needs this many
SCHEMA_VERSION = 3
AUDIT_KEEP_ROWS = 100_000  # the audit table is pruned to this many newest rows
AUDIT_DETAIL_MAX = 2_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS auth (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    password_hash TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    digest     TEXT PRIMARY KEY,          -- sha256 hex of the token, never the token itself
    created_at TEXT NOT NULL,
    expires_at REAL NOT NULL              -- unix seconds
);
CREATE INDEX IF NOT EXISTS tokens_expires ON tokens (expires_at);
CREATE TABLE IF NOT EXISTS models (
    name          TEXT PRIMARY KEY,
    path          TEXT NOT NULL,
    registered_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     TEXT NOT NULL,
    event  TEXT NOT NULL,
    client TEXT,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_event ON audit (event, id);
CREATE TABLE IF NOT EXISTS api_keys (     -- see keys.py
    name         TEXT PRIMARY KEY,
    digest       TEXT NOT NULL UNIQUE,    -- sha256 hex of the key, never the key itself
    scope        TEXT NOT NULL CHECK (scope IN ('read', 'admin')),
    created_at   TEXT NOT NULL,
    expires_at   REAL,                    -- unix seconds, NULL: never
    last_used_at REAL,                    -- unix seconds, written at most once a minute per process
    revoked_at   TEXT
);
""" + """
-- versions (see versions.py): one row per servable content of a group, numbered 1, 2, 3... per
-- (model, group_key): the primary key makes a duplicate number impossible and MAX(version) + 1 in
-- the recording transaction makes a gap impossible. Rows are never deleted, so numbers are never
-- reused, also across an unregister and a new registration of the same name.
CREATE TABLE IF NOT EXISTS versions (
    model          TEXT NOT NULL,
    group_key      TEXT NOT NULL,
    version        INTEGER NOT NULL,
    symbol         TEXT NOT NULL,
    etag           TEXT NOT NULL,      -- quoted strong ETag of the body (first 32 hex of payload_sha256)
    payload_sha256 TEXT NOT NULL,      -- sha256 of the uncompressed body
    blob_sha256    TEXT NOT NULL,      -- sha256 of the gzip bytes: the blob's name, checked when read
    size           INTEGER NOT NULL,   -- uncompressed length
    content_sha256 TEXT NOT NULL,      -- the body without metadata.version and updated_at (dedupe key)
    model_sha256   TEXT,
    created_at     TEXT NOT NULL,
    live_from      TEXT,               -- start of its latest live period (all periods: live_periods)
    live_until     TEXT,               -- end of it (NULL while live)
    dim            INTEGER,
    factor_count   INTEGER NOT NULL,
    model_source   TEXT,
    status         TEXT NOT NULL,
    detail         TEXT NOT NULL,      -- JSON: what a diff needs (factors, IC table, info, model summary)
    pruned         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (model, group_key, version)
);
CREATE INDEX IF NOT EXISTS versions_blob ON versions (blob_sha256, pruned);
CREATE INDEX IF NOT EXISTS versions_model ON versions (model_sha256, pruned);  -- a converted model's JSON: see VersionStore.find_model_json
CREATE TABLE IF NOT EXISTS live_periods (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    model      TEXT NOT NULL,
    group_key  TEXT NOT NULL,
    version    INTEGER NOT NULL,
    live_from  TEXT NOT NULL,
    live_until TEXT
);
CREATE INDEX IF NOT EXISTS live_periods_group ON live_periods (model, group_key, live_until);
CREATE TABLE IF NOT EXISTS pins (
    model     TEXT NOT NULL,
    group_key TEXT NOT NULL,
    version   INTEGER NOT NULL,
    reason    TEXT NOT NULL DEFAULT '',
    pinned_at TEXT NOT NULL,
    PRIMARY KEY (model, group_key)
);
CREATE TABLE IF NOT EXISTS holds (
    model   TEXT PRIMARY KEY,
    held_at TEXT NOT NULL,
    reason  TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS held_versions (  -- per group of a held model: the version it is held at
    model     TEXT NOT NULL,
    group_key TEXT NOT NULL,
    version   INTEGER NOT NULL,
    PRIMARY KEY (model, group_key)
);
CREATE TABLE IF NOT EXISTS version_state (  -- bumped by every change of what is live: processes poll it
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO version_state (id, seq) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS throttle (       -- failed logins and setup codes, per client key (see auth.LoginThrottle)
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    failures INTEGER NOT NULL,
    blocked_until REAL NOT NULL,
    last_failure REAL NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS fleet (          -- per client and group: the version it last received (see fleet.py)
    model        TEXT NOT NULL,
    client       TEXT NOT NULL,
    group_key    TEXT NOT NULL,
    version      INTEGER NOT NULL,
    address      TEXT,
    fetched_at   REAL,                      -- unix seconds of the last 200
    confirmed_at REAL,                      -- unix seconds of the last 304
    PRIMARY KEY (model, client, group_key)
);
"""

_crypt = CryptContext(schemes=["argon2"], deprecated="auto")


@dataclass(frozen=True)
class ModelRow:
    """A registered model directory as persisted: `registered_at` is ISO-8601 UTC."""

    name: str
    path: str
    registered_at: str


def hash_token(token: str) -> str:
    """The form a token is stored and cached in: sha256 hex of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(f"the password is too short: use at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValidationError(f"the password is too long: use at most {MAX_PASSWORD_LENGTH} characters")


def _private_files(db_path: Path) -> None:
    """The database file exists and is 0600 before sqlite opens it (sqlite gives its -wal and -shm
    files the database's mode); files an older version left readable by others are closed too."""
    os.close(os.open(db_path, os.O_RDONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600))
    for path in (db_path, db_path.with_name(db_path.name + "-wal"), db_path.with_name(db_path.name + "-shm")):
        try:
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
        except (FileNotFoundError, PermissionError):  # gone, or not ours to change: sqlite decides
            pass


class Store:
    """Persistent state of one data dir. Open it with the db path; `close()` when done."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = Path(db_path)
        self._lock = threading.RLock()
        self._audit_writes = 0
        try:
            if not self.db_path.parent.exists():
                self.db_path.parent.mkdir(parents=True, mode=0o700)
            _private_files(self.db_path)
            self._db = sqlite3.connect(self.db_path, timeout=10, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise PathError(f"cannot open the database {self.db_path}: {exc}; check --data-dir and its permissions") from None
        try:
            self._db.execute("PRAGMA busy_timeout = 10000")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            with self._write() as db:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except (OSError, sqlite3.DatabaseError) as exc:
            self._db.close()
            raise PathError(f"{self.db_path} is not a usable model-manager database ({exc}): "
                            "point --data-dir elsewhere or move the file away") from None

    # -- plumbing ---------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: taken with BEGIN IMMEDIATE so concurrent writers queue on the
        busy timeout instead of failing half-way, rolled back on any error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """One `BEGIN IMMEDIATE` write transaction (for core modules that keep their own tables here)."""
        return self._write()

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Rows of one read statement."""
        return self._read(sql, params)

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- password ---------------------------------------------------------------------------------

    def is_initialized(self) -> bool:
        """True once a password has been set."""
        return bool(self._read("SELECT 1 FROM auth WHERE id = 1"))

    def init_password(self, password: str, *, client: str | None = None) -> None:
        """Set the first password and audit it (`bootstrap`), in one transaction; ConflictError
        when one is already set."""
        check_password_strength(password)
        hashed = _crypt.hash(password)  # slow on purpose: outside the transaction
        with self._write() as db:
            if db.execute("SELECT 1 FROM auth WHERE id = 1").fetchone():
                raise ConflictError("a password is already set: log in, or change it with `model-manager password set`")
            db.execute("INSERT INTO auth (id, password_hash, updated_at) VALUES (1, ?, ?)", (hashed, isoformat(utc_now())))
            self._insert_audit(db, "bootstrap", client, "")

    def set_password(self, password: str, *, keep_token: str | None = None, client: str | None = None) -> int:
        """Set or replace the password and, in the same transaction, revoke every token except
        `keep_token` and audit it (`password_changed`). Returns the number of tokens revoked."""
        check_password_strength(password)
        hashed = _crypt.hash(password)
        with self._write() as db:
            db.execute(
                "INSERT INTO auth (id, password_hash, updated_at) VALUES (1, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET password_hash = excluded.password_hash, updated_at = excluded.updated_at",
                (hashed, isoformat(utc_now())),
            )
            revoked = self._revoke_all(db, keep_token)
            others = " other" if keep_token is not None else ""
            self._insert_audit(db, "password_changed", client, f"{revoked}{others} token(s) revoked")
            return revoked

    def verify_password(self, password: str) -> bool:
        """Check a password against the stored hash (constant time in the hash library); False when
        no password is set. A hash made with outdated parameters is upgraded on success."""
        rows = self._read("SELECT password_hash FROM auth WHERE id = 1")
        if not rows:
            return False
        stored = rows[0][0]
        try:
            ok, new_hash = _crypt.verify_and_update(password, stored)
        except (ValueError, TypeError):
            return False
        if ok and new_hash:
            with self._write() as db:
                db.execute("UPDATE auth SET password_hash = ? WHERE id = 1 AND password_hash = ?", (new_hash, stored))
        return bool(ok)

    # -- tokens -----------------------------------------------------------------------------------

    def create_token(self, ttl_seconds: int) -> tuple[str, datetime]:
        """A new bearer token (32 random bytes, URL-safe) and its expiry; only its digest is stored."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        expires = now + ttl_seconds
        with self._write() as db:
            db.execute("DELETE FROM tokens WHERE expires_at <= ?", (now,))  # expired tokens are dead weight
            db.execute("INSERT INTO tokens (digest, created_at, expires_at) VALUES (?, ?, ?)",
                       (hash_token(token), isoformat(utc_now()), expires))
        return token, datetime.fromtimestamp(expires, UTC)

    def token_expiry(self, token: str) -> datetime | None:
        """When the token expires; None when it is unknown, revoked or already expired."""
        return self.token_expiry_for_digest(hash_token(token))

    def token_expiry_for_digest(self, digest: str) -> datetime | None:
        """`token_expiry` for a token already hashed with `hash_token`."""
        rows = self._read("SELECT expires_at FROM tokens WHERE digest = ?", (digest,))
        if not rows or rows[0][0] <= time.time():
            return None
        return datetime.fromtimestamp(rows[0][0], UTC)

    def revoke_token(self, token: str, *, client: str | None = None) -> None:
        """Revoke one token and audit it (`logout`), in one transaction."""
        with self._write() as db:
            db.execute("DELETE FROM tokens WHERE digest = ?", (hash_token(token),))
            self._insert_audit(db, "logout", client, "")

    def revoke_all_tokens(self, *, keep_token: str | None = None) -> int:
        """Revoke every token except `keep_token`; returns how many were revoked."""
        with self._write() as db:
            return self._revoke_all(db, keep_token)

    @staticmethod
    def _revoke_all(db: sqlite3.Connection, keep_token: str | None) -> int:
        if keep_token is None:
            return db.execute("DELETE FROM tokens").rowcount
        return db.execute("DELETE FROM tokens WHERE digest != ?", (hash_token(keep_token),)).rowcount

    # -- registered models ------------------------------------------------------------------------

    def list_models(self) -> list[ModelRow]:
        return [ModelRow(*row) for row in self._read("SELECT name, path, registered_at FROM models ORDER BY name")]

    def get_model(self, name: str) -> ModelRow | None:
        rows = self._read("SELECT name, path, registered_at FROM models WHERE name = ?", (name,))
        return ModelRow(*rows[0]) if rows else None

    def add_model(self, name: str, path: str, *, client: str | None = None, detail: str | None = None) -> ModelRow:
        """Insert a registration and its `register` audit event in one transaction; ConflictError
        when the name is taken (validation is the caller's)."""
        row = ModelRow(name, str(path), isoformat(utc_now()))
        with self._write() as db:
            existing = db.execute("SELECT path FROM models WHERE name = ?", (name,)).fetchone()
            if existing:
                raise ConflictError(f"the name {name!r} is already registered for {existing[0]}: "
                                    "pick another name or remove the existing model first")
            db.execute("INSERT INTO models (name, path, registered_at) VALUES (?, ?, ?)", (row.name, row.path, row.registered_at))
            self._insert_audit(db, "register", client, detail if detail is not None else f"{name} -> {path}")
        return row

    def remove_model(self, name: str, *, client: str | None = None) -> bool:
        """Delete a registration (and audit it, in the same transaction); False when there was none."""
        with self._write() as db:
            removed = db.execute("DELETE FROM models WHERE name = ?", (name,)).rowcount > 0
            if removed:
                self._insert_audit(db, "unregister", client, name)
                _retire_versions(db, name)
            return removed

    # -- audit trail ------------------------------------------------------------------------------

    def audit(self, event: str, *, client: str | None = None, detail: str = "") -> None:
        """Append one event (login, login_failed, bootstrap, password_changed, register, ...)."""
        with self._write() as db:
            self._insert_audit(db, event, client, detail)

    def _insert_audit(self, db: sqlite3.Connection, event: str, client: str | None, detail: str) -> None:
        db.execute("INSERT INTO audit (at, event, client, detail) VALUES (?, ?, ?, ?)",
                   (isoformat(utc_now()), event, client, detail[:AUDIT_DETAIL_MAX]))
        self._audit_writes += 1
        if self._audit_writes % 1000 == 0:
            db.execute("DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?", (AUDIT_KEEP_ROWS,))

    def audit_events(self, *, limit: int = 200, event: str | None = None) -> list[dict]:
        """The newest events first: `{"id", "at", "event", "client", "detail"}`."""
        if event:
            rows = self._read("SELECT id, at, event, client, detail FROM audit WHERE event = ? ORDER BY id DESC LIMIT ?",
                              (event, limit))
        else:
            rows = self._read("SELECT id, at, event, client, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(zip(("id", "at", "event", "client", "detail"), row)) for row in rows]


# -- versions of an unregistered model ------------------------------------------------------------

def _retire_versions(db: sqlite3.Connection, name: str) -> None:
    """Unregistering keeps a model's version records (the history of what was live when, and numbers
    that a new registration of the name continues instead of reusing) but drops its pins and hold, so
    nothing from the old registration governs a new one, ends its live periods and marks every
    version pruned: its payload bytes are deleted by the next blob sweep (`VersionStore.sweep`)."""
    now = isoformat(utc_now())
    db.execute("UPDATE live_periods SET live_until = ? WHERE model = ? AND live_until IS NULL", (now, name))
    db.execute("UPDATE versions SET live_until = ? WHERE model = ? AND live_from IS NOT NULL AND live_until IS NULL",
               (now, name))
    db.execute("UPDATE versions SET pruned = 1 WHERE model = ?", (name,))
    for table in ("pins", "holds", "held_versions"):
        db.execute(f"DELETE FROM {table} WHERE model = ?", (name,))  # noqa: S608 - fixed table names
    db.execute("UPDATE version_state SET seq = seq + 1 WHERE id = 1")
