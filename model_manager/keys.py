"""API keys (SPEC §7): named credentials for trading engines, with the `read` or `admin` scope and an
optional expiry, kept in the `api_keys` table of the store.

A key is `mmk_` followed by 43 URL-safe characters (256 random bits). It is shown once, when created;
the data dir keeps only its sha256 digest. A 256-bit random secret cannot be recovered from its
digest, so no slow hash is needed, and checking a key costs what checking a session token costs.
Creating and revoking a key each write their audit row (`key_created`, `key_revoked`) in the same
transaction.

Names follow the rules of model names, and `session` is reserved (it names password sessions wherever
a client is named). A name is taken while its key is not revoked — an expired key included: revoke it
first. A revoked key's name may be given to a new key, so rotating an engine's key keeps the engine's
name in the logs; the revoked row is replaced, and its creation and revocation stay in the audit trail.

`last_used_at` is not written per request: the server notes uses in memory (`auth.TokenCache`) and
writes a key's time when the stored one is older than `LAST_USED_WRITE_SECONDS`.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from model_manager.clock import iso_from_timestamp, isoformat, utc_now
from model_manager.errors import ConflictError, NotFoundError, ValidationError
from model_manager.registration import check_name
from model_manager.store import Store, hash_token

KEY_PREFIX = "mmk_"
SCOPES = ("read", "admin")
SESSION_CLIENT = "session"  # the client name of a password session; no key may take it
MAX_EXPIRES_IN_DAYS = 3650
LAST_USED_WRITE_SECONDS = 60.0

_COLUMNS = "name, digest, scope, created_at, expires_at, last_used_at, revoked_at"


@dataclass(frozen=True)
class KeyRecord:
    """One row of `api_keys`: times are unix seconds except `created_at`/`revoked_at` (ISO-8601)."""

    name: str
    digest: str
    scope: str
    created_at: str
    expires_at: float | None
    last_used_at: float | None
    revoked_at: str | None

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (time.time() if now is None else now)

    def live(self, now: float | None = None) -> bool:
        """Usable now: neither revoked nor expired."""
        return self.revoked_at is None and not self.expired(now)

    def to_dict(self, last_used: float | None = None) -> dict[str, Any]:
        """The key object of `GET /api/keys` (never the key itself). `last_used` is a newer use
        than the stored one, noted in memory by a server."""
        used = max(filter(None, (self.last_used_at, last_used)), default=None)
        return {"name": self.name, "scope": self.scope, "created_at": self.created_at,
                "expires_at": iso_from_timestamp(self.expires_at), "last_used_at": iso_from_timestamp(used),
                "revoked": self.revoked_at is not None, "revoked_at": self.revoked_at, "expired": self.expired()}


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_key_name(name: str) -> str:
    check_name(name, "key name")
    if name.lower() == SESSION_CLIENT:
        raise ValidationError(f"key name {name!r} is reserved (it names password sessions): choose another name")
    return name


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValidationError(f"scope {scope!r} is not valid: use 'read' (GET /api/models/** only) or 'admin' (everything)")
    return scope


def check_expiry_days(days: int | None) -> int | None:
    if days is None:
        return None
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_EXPIRES_IN_DAYS:
        raise ValidationError(f"expires_in_days {days!r} is not valid: use a whole number of days from 1 to "
                              f"{MAX_EXPIRES_IN_DAYS}, or leave it out for a key that does not expire")
    return days


class KeyStore:
    """The API keys of one data dir. Thread-safe (the store is); several processes may share it."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, name: str, scope: str = "read", expires_in_days: int | None = None, *,
               client: str | None = None, by: str | None = None) -> dict[str, Any]:
        """A new key: `{"name","scope","key","created_at","expires_at"}` — the only time `key` is seen."""
        check_key_name(name)
        check_scope(scope)
        check_expiry_days(expires_in_days)
        key = new_key()
        now = time.time()
        expires = now + expires_in_days * 86400 if expires_in_days else None
        created = isoformat(utc_now())
        with self.store.transaction() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE name = ?", (name,)).fetchone()  # noqa: S608
            if row is not None:
                old = KeyRecord(*row)
                if old.revoked_at is None:
                    state = "expired" if old.expired(now) else "live"
                    raise ConflictError(f"an API key named {name!r} exists ({state}): choose another name, or revoke "
                                        f"it first (DELETE /api/keys/{name} or `model-manager keys revoke {name}`)")
                db.execute("DELETE FROM api_keys WHERE name = ?", (name,))  # a revoked key's name is free
            db.execute("INSERT INTO api_keys (name, digest, scope, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                       (name, hash_token(key), scope, created, expires))
            until = iso_from_timestamp(expires) or "never"
            self.store._insert_audit(db, "key_created", client, f"{name}: {scope} scope, expires {until}{_by(by)}")
        return {"name": name, "scope": scope, "key": key, "created_at": created, "expires_at": iso_from_timestamp(expires)}

    def list(self) -> list[KeyRecord]:
        """Every key, revoked ones included, by name."""
        return [KeyRecord(*row) for row in self.store.query(f"SELECT {_COLUMNS} FROM api_keys ORDER BY name")]  # noqa: S608

    def get(self, name: str) -> KeyRecord:
        rows = self.store.query(f"SELECT {_COLUMNS} FROM api_keys WHERE name = ?", (name,))  # noqa: S608
        if not rows:
            raise NotFoundError(f"no API key named {name!r} (see GET /api/keys or `model-manager keys list`)")
        return KeyRecord(*rows[0])

    def revoke(self, name: str, *, client: str | None = None, by: str | None = None) -> tuple[KeyRecord, bool]:
        """Revoke a key (and audit it, in one transaction): (its record, True when it was live until
        now). Revoking a revoked key changes nothing. NotFoundError when there is no such key."""
        check_key_name(name)
        with self.store.transaction() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM api_keys WHERE name = ?", (name,)).fetchone()  # noqa: S608
            if row is None:
                raise NotFoundError(f"no API key named {name!r} (see GET /api/keys or `model-manager keys list`)")
            record = KeyRecord(*row)
            if record.revoked_at is not None:
                return record, False
            revoked_at = isoformat(utc_now())
            db.execute("UPDATE api_keys SET revoked_at = ? WHERE name = ?", (revoked_at, name))
            self.store._insert_audit(db, "key_revoked", client, f"{name}: {record.scope} scope{_by(by)}")
        return KeyRecord(**{**record.__dict__, "revoked_at": revoked_at}), True

    def lookup(self, digest: str) -> KeyRecord | None:
        """The key with this digest, revoked or expired ones included; None when there is none."""
        rows = self.store.query(f"SELECT {_COLUMNS} FROM api_keys WHERE digest = ?", (digest,))  # noqa: S608
        return KeyRecord(*rows[0]) if rows else None

    def touch(self, digest: str, when: float) -> None:
        """Record a use of a key (callers write at most once a `LAST_USED_WRITE_SECONDS` per key)."""
        with self.store.transaction() as db:
            db.execute("UPDATE api_keys SET last_used_at = ? WHERE digest = ? AND (last_used_at IS NULL OR last_used_at < ?)",
                       (when, digest, when))


def _by(who: str | None) -> str:
    return f", by {who}" if who else ""
