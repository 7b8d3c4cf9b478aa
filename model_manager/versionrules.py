"""The rules of versions, as statements on a connection inside one write transaction (the caller's
`Store.transaction()`): which version is live, the live periods that record what was live when, the
rollback target, and retention. `versions.py` is the public surface over these.

The live version of a group: its pin, else (model held) the version it is held at, else the latest
version (unless that one's bytes are gone). A group's current live period is its `live_periods` row
with `live_until IS NULL`; `sync_live` closes it and opens another whenever the rule's answer changes,
and mirrors the latest period into the version rows' `live_from`/`live_until`.
"""
from __future__ import annotations

import sqlite3


def bump(db: sqlite3.Connection) -> None:
    """Tell other processes that what is live may have changed (they poll `version_state.seq`)."""
    db.execute("UPDATE version_state SET seq = seq + 1 WHERE id = 1")


def _one(db: sqlite3.Connection, sql: str, params: tuple):
    row = db.execute(sql, params).fetchone()
    return row[0] if row else None


def pinned_version(db: sqlite3.Connection, model: str, group: str) -> int | None:
    return _one(db, "SELECT version FROM pins WHERE model = ? AND group_key = ?", (model, group))


def held_version(db: sqlite3.Connection, model: str, group: str) -> int | None:
    return _one(db, "SELECT h.version FROM held_versions h JOIN holds USING (model) "
                    "WHERE h.model = ? AND h.group_key = ?", (model, group))


def is_held(db: sqlite3.Connection, model: str) -> bool:
    return _one(db, "SELECT 1 FROM holds WHERE model = ?", (model,)) is not None


def max_version(db: sqlite3.Connection, model: str, group: str) -> int:
    return _one(db, "SELECT MAX(version) FROM versions WHERE model = ? AND group_key = ?", (model, group)) or 0


def current_live(db: sqlite3.Connection, model: str, group: str) -> int | None:
    """The version of the open live period (what is being served), if any."""
    return _one(db, "SELECT version FROM live_periods WHERE model = ? AND group_key = ? AND live_until IS NULL "
                    "ORDER BY id DESC LIMIT 1", (model, group))


def wanted_live(db: sqlite3.Connection, model: str, group: str) -> int | None:
    """What the live rule says should be served now."""
    pinned = pinned_version(db, model, group)
    if pinned is not None:
        return pinned
    held = held_version(db, model, group)
    if held is not None:
        return held
    row = db.execute("SELECT version, pruned FROM versions WHERE model = ? AND group_key = ? "
                     "ORDER BY version DESC LIMIT 1", (model, group)).fetchone()
    return row[0] if row and not row[1] else None


def sync_live(db: sqlite3.Connection, model: str, group: str, now: str) -> bool:
    """Make the open live period agree with the rule; True when the live version changed."""
    want = wanted_live(db, model, group)
    have = current_live(db, model, group)
    if want == have:
        return False
    if have is not None:
        close_live(db, model, group, now)
    if want is not None:
        db.execute("INSERT INTO live_periods (model, group_key, version, live_from) VALUES (?, ?, ?, ?)",
                   (model, group, want, now))
        db.execute("UPDATE versions SET live_from = ?, live_until = NULL WHERE model = ? AND group_key = ? AND version = ?",
                   (now, model, group, want))
    bump(db)
    return True


def close_live(db: sqlite3.Connection, model: str, group: str, now: str) -> None:
    """End the open live period of a group (its version stops being served)."""
    have = current_live(db, model, group)
    if have is None:
        return
    db.execute("UPDATE live_periods SET live_until = ? WHERE model = ? AND group_key = ? AND live_until IS NULL",
               (now, model, group))
    db.execute("UPDATE versions SET live_until = ? WHERE model = ? AND group_key = ? AND version = ?",
               (now, model, group, have))


def rollback_target(db: sqlite3.Connection, model: str, group: str) -> int | None:
    """The most recently live version older than the live one: rolling back twice goes back twice,
    never forward to the version just rolled away from; a version never served is never a target."""
    live = current_live(db, model, group)
    if live is None:
        return None
    return _one(db, "SELECT version FROM live_periods WHERE model = ? AND group_key = ? AND version < ? "
                    "ORDER BY id DESC LIMIT 1", (model, group, live))


def prune(db: sqlite3.Connection, model: str, group: str, keep: int) -> list[str]:
    """Mark pruned every version outside the newest `keep`, the pinned, live and held ones and the
    rollback target (so a rollback always has its bytes). Returns the blob digests those versions
    referenced: the caller deletes the ones no kept version shares, after the commit."""
    kept = {v for (v,) in db.execute("SELECT version FROM versions WHERE model = ? AND group_key = ? "
                                      "ORDER BY version DESC LIMIT ?", (model, group, keep))}
    kept |= {v for v in (pinned_version(db, model, group), held_version(db, model, group),
                         current_live(db, model, group), rollback_target(db, model, group)) if v is not None}
    doomed = [(v, blob) for v, blob in db.execute(
        "SELECT version, blob_sha256 FROM versions WHERE model = ? AND group_key = ? AND pruned = 0", (model, group))
        if v not in kept]
    db.executemany("UPDATE versions SET pruned = 1 WHERE model = ? AND group_key = ? AND version = ?",
                   [(model, group, v) for v, _ in doomed])
    return sorted({blob for _, blob in doomed})


def live_groups(db: sqlite3.Connection, model: str) -> list[str]:
    """Groups of a model with an open live period."""
    return [g for (g,) in db.execute("SELECT DISTINCT group_key FROM live_periods WHERE model = ? AND live_until IS NULL "
                                     "ORDER BY group_key", (model,))]


def blob_in_use(db: sqlite3.Connection, digest: str) -> bool:
    return _one(db, "SELECT 1 FROM versions WHERE blob_sha256 = ? AND pruned = 0 LIMIT 1", (digest,)) is not None
