"""Versions of each group (SPEC §6): every servable payload is recorded, numbered 1, 2, 3… per group,
kept content-addressed in the data dir, and can be pinned, rolled back, held and compared.

Recording, in `VersionStore.record(candidate(...))`:
1. The candidate's *content digest* (the payload without `metadata.version` and `updated_at`, so a file
   rewritten with the same content or only touched makes no version) is compared with the latest
   version's: equal means no new version (the latest one's bytes are what is served).
2. Otherwise the next number N is read, the final body is built with `metadata.version = N`, gzipped,
   and written to the blob store durably — before any row names it.
3. One `BEGIN IMMEDIATE` transaction checks that N is still the next number (another process may have
   recorded meanwhile: then it starts again), makes sure the blob is still there, inserts the row,
   moves the live period if the live version changed and prunes what retention lets go.
A kill at any point leaves either no row (and at most an orphan blob, swept later) or a committed row
whose bytes are on disk: numbers never skip, never repeat.

A registration, whose versions may be written only once the registration is, does step 2 for each
group while the group is parsed and its model JSON is in memory (`prebuild`, without an fsync), and
steps 1 and 3 at the end: the blobs synced together (`make_durable`), then the rows a few hundred to
a transaction (`record_prebuilt`; a group it leaves out goes through `record(cand, prebuilt)`, which
syncs a blob that was not before naming it). A version's payload holds its model's JSON, which is
where a later version of the same model takes it from (`find_model_json`): it is written to disk once.
"""
from __future__ import annotations

import gzip
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

from model_manager import versionrules as rules
from model_manager.blobs import ORPHAN_GRACE_SECONDS, BlobStore
from model_manager.clock import isoformat, timestamp_from_iso, utc_now
from model_manager.conversion import sha256
from model_manager.errors import ConflictError, ModelManagerError, NotFoundError, UnprocessableError
from model_manager.fleet import LiveGroup
from model_manager.gz import LEVEL as GZIP_LEVEL
from model_manager.gz import gzip_both, gzip_bytes
from model_manager.store import Store
from model_manager.versiondiff import diff_versions
from model_manager.versionrecords import (
    Candidate,
    Prebuilt,
    Recorded,
    StoredPayload,
    VersionInfo,
    candidate,
    content_sha256,
)

__all__ = ["Candidate", "Prebuilt", "Recorded", "StoredPayload", "VersionInfo", "VersionStore", "candidate",
           "content_sha256"]

log = logging.getLogger(__name__)

RECORD_BATCH = 500  # versions written per transaction by `record_prebuilt` (the write lock is held that long)

_COLUMNS = ("model", "group_key", "version", "symbol", "etag", "payload_sha256", "blob_sha256", "size",
            "content_sha256", "model_sha256", "created_at", "live_from", "live_until", "dim", "factor_count",
            "model_source", "status", "pruned")
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM versions"  # noqa: S608 - fixed column names


class VersionStore:
    """Versions of every group of every model in one data dir: records and pins in the sqlite store,
    payload bytes in `data_dir/versions`. Thread-safe; several processes may share a data dir."""

    def __init__(self, store: Store, data_dir: Path, *, keep: int = 20,
                 compare: Callable[[bytes, bytes, int, str], dict] | None = None) -> None:
        self.store = store
        self.blobs = BlobStore(Path(data_dir) / "versions")
        self.keep = keep
        if compare is None:
            from model_manager.isolation import compare_predictions as compare
        self._compare = compare
        self._comparisons: dict[tuple[str, str], dict] = {}
        self._comparisons_lock = threading.Lock()

    # -- reads ------------------------------------------------------------------------------------
    def get(self, model: str, group_key: str, version: int) -> VersionInfo:
        """One version; NotFoundError when the group has no such version."""
        rows = self.store.query(f"{_SELECT} WHERE model = ? AND group_key = ? AND version = ?", (model, group_key, version))
        if not rows:
            raise NotFoundError(f"{model}/{group_key} has no version {version} (see its versions)")
        return _info(rows[0])

    def history(self, model: str, group_key: str) -> list[VersionInfo]:
        """Every version of a group, newest first."""
        rows = self.store.query(f"{_SELECT} WHERE model = ? AND group_key = ? ORDER BY version DESC", (model, group_key))
        return [_info(r) for r in rows]

    def live(self, model: str, group_key: str) -> VersionInfo | None:
        """The version the group serves now (None when it has none)."""
        rows = self.store.query("SELECT version FROM live_periods WHERE model = ? AND group_key = ? AND live_until IS NULL "
                                "ORDER BY id DESC LIMIT 1", (model, group_key))
        return self.get(model, group_key, rows[0][0]) if rows else None

    def live_versions(self, model: str, keys: Collection[str] | None = None) -> dict[str, int]:
        """{group_key: live version} of a model (or of its groups `keys`): what a server compares after
        `state_seq` moved."""
        only, args = _named(keys)
        rows = self.store.query(f"SELECT group_key, version FROM live_periods WHERE model = ?{only} "  # noqa: S608 - placeholders only
                                "AND live_until IS NULL", (model, *args))
        if keys is None:
            return dict(rows)
        wanted = set(keys)
        return {k: v for k, v in rows if k in wanted}

    def live_infos(self, model: str, keys: Collection[str] | None = None) -> dict[str, VersionInfo]:
        """{group_key: the version it serves now} of every group of `model` with one (or of `keys`),
        in one query (what a worker following another's re-read serves, without a query per group)."""
        columns = ", ".join(f"v.{c}" for c in _COLUMNS)
        only, args = _named(keys, "p.group_key")  # one group re-read among thousands: not all of them
        rows = self.store.query(f"SELECT {columns} FROM live_periods p JOIN versions v ON v.model = p.model "  # noqa: S608 - fixed column names
                                "AND v.group_key = p.group_key AND v.version = p.version "
                                f"WHERE p.model = ?{only} AND p.live_until IS NULL ORDER BY p.id", (model, *args))
        found = {row[1]: _info(row) for row in rows}  # the latest open period wins, as in `live`
        return found if keys is None else {k: found[k] for k in keys if k in found}

    def live_groups(self, model: str) -> dict[str, LiveGroup]:
        """{group_key: LiveGroup} of every group of a model with a live version, with when each of
        its live periods began (what the fleet view compares clients against, offline)."""
        starts: dict[str, list[float]] = {}
        for group_key, live_from in self.store.query("SELECT group_key, live_from FROM live_periods WHERE model = ? ORDER BY id",
                                                     (model,)):
            starts.setdefault(group_key, []).append(timestamp_from_iso(live_from))
        symbols = dict(self.store.query("SELECT group_key, symbol FROM versions WHERE model = ? GROUP BY group_key", (model,)))
        return {key: LiveGroup(symbols.get(key, key.split("_", 1)[0]), number, tuple(starts.get(key, ())))
                for key, number in self.live_versions(model).items()}

    def state_seq(self) -> int:
        """A number that grows whenever any live version, pin or hold changes (in any process)."""
        return self.store.query("SELECT seq FROM version_state WHERE id = 1")[0][0]

    def hold_info(self, model: str) -> dict | None:
        """{"held_at", "reason"} while the model is held, else None."""
        rows = self.store.query("SELECT held_at, reason FROM holds WHERE model = ?", (model,))
        return {"held_at": rows[0][0], "reason": rows[0][1]} if rows else None

    def payload(self, model: str, group_key: str, version: int | None = None, *, mapped: bool = False) -> StoredPayload:
        """The bytes of a version (default: the live one). NotFoundError when unknown or pruned,
        DamagedDataError when the stored bytes fail their hash check. `mapped`: see `BlobStore.get`
        (for the bytes a server keeps serving)."""
        info = self.live(model, group_key) if version is None else self.get(model, group_key, version)
        if info is None:
            raise NotFoundError(f"{model}/{group_key} has no live version")
        return self.stored(info, mapped=mapped)

    def stored(self, info: VersionInfo, *, mapped: bool = False) -> StoredPayload:
        """The bytes of the version `info` describes (see `payload`)."""
        model, group_key = info.model, info.group_key
        if info.pruned:
            raise NotFoundError(f"version {info.version} of {model}/{group_key} was pruned: its bytes are no longer "
                                "kept (MODEL_MANAGER_KEEP_VERSIONS); its record stays in the history")
        data = self.blobs.get(info.blob_sha256, f"version {info.version} of {model}/{group_key}", mapped=mapped)
        file = str(self.blobs.path(info.blob_sha256)) if isinstance(data, memoryview) else None
        return StoredPayload(info.version, info.etag, data, info.size, file)

    def versions(self, model: str, group_key: str) -> dict:
        """The SPEC §6 versions object of a group, newest first. NotFoundError when it has none."""
        infos = self.history(model, group_key)
        if not infos:
            raise NotFoundError(f"no versions are recorded for {model}/{group_key}")
        with self.store.transaction() as db:  # one consistent view of pins, hold and periods
            live = rules.current_live(db, model, group_key)
            pin = db.execute("SELECT version, reason, pinned_at FROM pins WHERE model = ? AND group_key = ?",
                             (model, group_key)).fetchone()
            hold = db.execute("SELECT held_at, reason FROM holds WHERE model = ?", (model,)).fetchone()
            periods: dict[int, list[list]] = {}
            for version, start, end in db.execute("SELECT version, live_from, live_until FROM live_periods "
                                                  "WHERE model = ? AND group_key = ? ORDER BY id", (model, group_key)):
                periods.setdefault(version, []).append([start, end])
        pinned = pin[0] if pin else None
        return {"model_name": model, "symbol": infos[0].symbol, "group_key": group_key, "live_version": live,
                "latest_version": infos[0].version, "pinned_version": pinned, "held": hold is not None,
                "pin": {"version": pin[0], "reason": pin[1], "pinned_at": pin[2]} if pin else None,
                "hold": {"held_at": hold[0], "reason": hold[1]} if hold else None,
                "versions": [i.to_dict(live=live, pinned=pinned, periods=periods.get(i.version)) for i in infos]}

    # -- recording --------------------------------------------------------------------------------
    def record(self, cand: Candidate, prebuilt: Prebuilt | None = None) -> Recorded:
        """Record `cand` as the group's next version unless it equals the latest one (see the module
        docstring); with the body `prebuild` stored when its number is still the next one.
        ConflictError only if other writers keep winning the race for the next number."""
        if cand.status == "error":
            raise UnprocessableError(f"{cand.group_key} has errors: it makes no version")
        model, group = cand.model_name, cand.group_key
        detail: str | None = None
        for _attempt in range(5):
            latest = self.history_head(model, group)
            if latest is not None and not latest.pruned and latest.content_sha256 == cand.content_sha256:
                self._heal(latest, cand)
                with self.store.transaction() as db:
                    changed = rules.sync_live(db, model, group, isoformat(utc_now()))
                return Recorded(latest, False, self.live(model, group), changed)
            number = (latest.version if latest else 0) + 1
            packed: bytes | None = None
            if prebuilt is None or prebuilt.version != number:
                prebuilt, packed = self._build(cand, number)
            if detail is None:
                detail = json.dumps(cand.detail(), separators=(",", ":"), allow_nan=False)
            with self.store.transaction() as db:
                if rules.max_version(db, model, group) != number - 1:
                    continue  # another process recorded first: look again
                blob = prebuilt.blob_sha256
                if packed is not None:
                    self.blobs.ensure(packed, blob)  # a concurrent sweep may have taken an unnamed blob
                elif not self._made_durable(blob) or not self.blobs.exists(blob):  # not syncable, or swept
                    prebuilt = None  # before its row was written: build it again
                    continue
                changed, doomed = self._insert(db, cand, prebuilt, detail, isoformat(utc_now()), rules.is_held(db, model))
            self._delete_blobs(doomed)
            info = self.get(model, group, number)
            return Recorded(info, True, self.live(model, group), changed,
                            StoredPayload(number, info.etag, packed, prebuilt.size) if packed is not None else None)
        raise ConflictError(f"versions of {model}/{group} kept changing while recording; try again")

    def _insert(self, db, cand: Candidate, prebuilt: Prebuilt, detail: str, now: str, held: bool) -> tuple[bool, list[str]]:
        """Write version `prebuilt.version` of `cand` (its number checked and its blob on disk by the
        caller, in the same transaction): its row, its place in a hold, the live period and the
        pruning. Returns (live version changed, blobs the pruning let go)."""
        model, group, number = cand.model_name, cand.group_key, prebuilt.version
        db.execute(f"INSERT INTO versions ({', '.join(_COLUMNS[:11])}, dim, factor_count, model_source, "
                   "status, detail) VALUES (" + ", ".join("?" * 16) + ")",
                   (model, group, number, cand.symbol, f'"{prebuilt.payload_sha256[:32]}"', prebuilt.payload_sha256,
                    prebuilt.blob_sha256, prebuilt.size, cand.content_sha256, cand.model_sha256, now, cand.dim,
                    cand.factor_count, cand.model_source, cand.status, detail))
        if held and rules.held_version(db, model, group) is None:
            # a group that first appears during a hold: its first version is what it is held at
            db.execute("INSERT INTO held_versions (model, group_key, version) VALUES (?, ?, ?)", (model, group, number))
        return rules.sync_live(db, model, group, now), rules.prune(db, model, group, self.keep)

    def record_prebuilt(self, items: list[tuple[Candidate, Prebuilt]], details: dict[str, str] | None = None
                        ) -> dict[str, Recorded]:
        """`record` of many groups of one model whose bodies `prebuild` stored (a registration's first
        versions), RECORD_BATCH groups to a transaction instead of one each. A group is recorded here
        only when its prebuilt number is still the next one, its content is not its latest version's
        and its blob is on disk and synced (`make_durable`, which the caller runs for all of them at
        once first); the others are left out of the answer, for `record`. `details`: their rows'
        details (`row_details`), when the caller made them already (while the blobs were synced)."""
        out: dict[str, Recorded] = {}
        for start in range(0, len(items), RECORD_BATCH):
            batch = items[start:start + RECORD_BATCH]
            try:
                out.update(self._record_batch(batch, details if details is not None
                                              else row_details(cand for cand, _ in batch)))
            except (ModelManagerError, sqlite3.Error, OSError) as exc:  # (what is left goes to `record`)
                log.warning("%s: versions not recorded together: %s", items[start][0].model_name, exc)
        return out

    def record_unchanged(self, cands: list[Candidate]) -> dict[str, Recorded]:
        """`record` of many groups of one model whose content is, as expected, their latest version's
        (a start restoring its groups): their heads read in one query and their live periods put right
        in one transaction, instead of a transaction each. The groups whose latest version is not
        theirs are left out of the answer, for `record`."""
        if not cands:
            return {}
        model = cands[0].model_name
        by_key = {c.group_key: c for c in cands if c.model_name == model and c.status != "error"}
        heads = self.heads(model, by_key)
        same = {k: heads[k][0] for k, c in by_key.items()
                if k in heads and not heads[k][1] and heads[k][2] == c.content_sha256}
        if not same:
            return {}
        only, args = _named(same)
        rows = self.store.query(f"{_SELECT} WHERE model = ?{only}", (model, *args))  # noqa: S608 - placeholders only
        infos = {info.group_key: info for info in map(_info, rows) if same.get(info.group_key) == info.version}
        for key, info in infos.items():
            self._heal(info, by_key[key])
        changed: dict[str, bool] = {}
        now = isoformat(utc_now())
        with self.store.transaction() as db:
            for key in infos:
                changed[key] = rules.sync_live(db, model, key, now)
        live = self.live_infos(model, list(infos))
        return {key: Recorded(info, False, live.get(key), changed[key]) for key, info in infos.items()}

    def _record_batch(self, items: list[tuple[Candidate, Prebuilt]], details: dict[str, str]) -> dict[str, Recorded]:
        model = items[0][0].model_name
        keys = [cand.group_key for cand, _ in items]
        written: dict[str, tuple[int, bool]] = {}
        doomed: list[str] = []
        with self.store.transaction() as db:
            sql, args = _heads_query(model, keys)
            heads = _heads_of(db.execute(sql, args).fetchall(), keys)
            held, now = rules.is_held(db, model), isoformat(utc_now())
            for cand, prebuilt in items:
                number, pruned, content = heads.get(cand.group_key, (0, False, None))
                if (cand.model_name != model or cand.group_key not in details or prebuilt.version != number + 1
                        or (number and not pruned and content == cand.content_sha256)
                        or not self._made_durable(prebuilt.blob_sha256) or not self.blobs.exists(prebuilt.blob_sha256)):
                    continue  # (`record` sorts it out)
                changed, let_go = self._insert(db, cand, prebuilt, details[cand.group_key], now, held)
                written[cand.group_key] = (prebuilt.version, changed)
                doomed += let_go
        self._delete_blobs(sorted(set(doomed)))
        if not written:
            return {}
        rows = self.store.query(f"{_SELECT} WHERE model = ? AND group_key IN ({', '.join('?' * len(written))})",  # noqa: S608 - placeholders only
                                (model, *written))
        infos = {info.group_key: info for info in map(_info, rows) if info.version == written[info.group_key][0]}
        live = self.live_infos(model, list(written))
        return {key: Recorded(infos[key], True, live.get(key), changed)
                for key, (_, changed) in written.items() if key in infos}

    def prebuild(self, cand: Candidate, number: int) -> Prebuilt:
        """Step 2 of recording `cand` as version `number`, ahead of its row (see the module docstring).
        A blob no row comes to name is an orphan, which the sweep removes."""
        if cand.status == "error":
            raise UnprocessableError(f"{cand.group_key} has errors: it makes no version")
        return self._build(cand, number, durable=False)[0]

    def make_durable(self, prebuilt: Collection[Prebuilt]) -> None:
        """Sync the blobs `prebuild` wrote, together (`BlobStore.make_durable`), before their rows are
        written; `record` syncs any left over one at a time."""
        failed = self.blobs.make_durable(p.blob_sha256 for p in prebuilt)
        if failed:  # (deleted: `record` builds them again, durably, or reports why it cannot)
            log.warning("%d prebuilt version blobs could not be synced to disk", len(failed))

    def _made_durable(self, blob: str) -> bool:
        """Whether blob `blob` is synced (it is deleted when it cannot be: see `BlobStore.make_durable`)."""
        return blob not in self.blobs.make_durable((blob,))

    def _build(self, cand: Candidate, number: int, *, durable: bool = True) -> tuple[Prebuilt, bytes]:
        """The body of version `number` built, gzipped and stored (durably unless told otherwise: see
        `BlobStore.make_durable`); and its gzip bytes."""
        raw = cand.build(number)
        packed = gzip_bytes(raw, GZIP_LEVEL)
        return Prebuilt(number, self.blobs.put(packed, durable=durable), sha256(raw), len(raw), cand.content_sha256), packed

    # -- the model JSON in versions' payloads (`cache.ModelJsonSource`) ---------------------------------
    def has_model_json(self, json_sha: str) -> bool:
        """Whether a kept version's payload (its blob still on disk) holds the model JSON with this sha256."""
        rows = self.store.query("SELECT blob_sha256 FROM versions WHERE model_sha256 = ? AND pruned = 0 "
                                "ORDER BY created_at DESC LIMIT 4", (json_sha,))
        return any(self.blobs.exists(blob) for (blob,) in rows)

    def kept_model_shas(self) -> set[str]:
        """The sha256 of every model JSON a kept version's payload holds (one query)."""
        return {sha for (sha,) in self.store.query("SELECT DISTINCT model_sha256 FROM versions "
                                                   "WHERE pruned = 0 AND model_sha256 IS NOT NULL")}

    def find_model_json(self, json_sha: str) -> bytes | None:
        """The model JSON with this sha256, out of a kept version's payload (checked against the sha256),
        or None when no kept version holds it or its bytes are damaged."""
        rows = self.store.query(f"{_SELECT} WHERE model_sha256 = ? AND pruned = 0 ORDER BY created_at DESC LIMIT 4",
                                (json_sha,))
        for info in map(_info, rows):
            try:
                data = self._model_json(info)
            except (ModelManagerError, OSError, ValueError, KeyError, TypeError):
                continue
            if sha256(data) == json_sha:
                return data
        return None

    def _heal(self, info: VersionInfo, cand: Candidate) -> None:
        """Rewrite a version's missing blob when the same content rebuilds exactly its payload (it
        does unless the files' mtimes moved since); otherwise reading it reports the damage. The
        gzip bytes may come out other than the lost ones (zlib wrote the first releases' blobs, zlib-ng
        the next ones', libdeflate ours): then the version's row names the new blob."""
        if self.blobs.exists(info.blob_sha256):
            return
        raw = cand.build(info.version)
        if sha256(raw) != info.payload_sha256:
            return
        ours, zlibs = gzip_both(raw, GZIP_LEVEL)
        if sha256(zlibs) == info.blob_sha256:
            self.blobs.put(zlibs)
            return
        blob = self.blobs.put(ours)
        if blob != info.blob_sha256:
            with self.store.transaction() as db:
                db.execute("UPDATE versions SET blob_sha256 = ? WHERE model = ? AND group_key = ? AND version = ?",
                           (blob, info.model, info.group_key, info.version))

    def history_head(self, model: str, group_key: str) -> VersionInfo | None:
        """The latest version of a group (pruned or not), or None."""
        rows = self.store.query(f"{_SELECT} WHERE model = ? AND group_key = ? ORDER BY version DESC LIMIT 1",
                                (model, group_key))
        return _info(rows[0]) if rows else None

    def heads(self, model: str, keys: Collection[str] | None = None) -> dict[str, tuple[int, bool, str]]:
        """{group_key: (number, pruned, content_sha256) of its latest version} for every group of `model`
        with versions (or of `keys`), in one query (SQLite takes the bare columns from the row with
        the MAX). Few `keys` are looked up by name; many read all of the model's groups."""
        sql, args = _heads_query(model, keys)
        return _heads_of(self.store.query(sql, args), keys)

    def group_removed(self, model: str, group_key: str) -> None:
        """A group's files are gone: its live period ends (its records, pin and numbers stay)."""
        with self.store.transaction() as db:
            if rules.current_live(db, model, group_key) is not None:
                rules.close_live(db, model, group_key, isoformat(utc_now()))
                rules.bump(db)

    # -- pins and holds -----------------------------------------------------------------------------
    def pin(self, model: str, group_key: str, version: int, *, reason: str = "", client: str | None = None) -> dict:
        """Serve `version` until unpinned. NotFoundError unknown version, ConflictError pruned one."""
        self.get(model, group_key, version)
        with self.store.transaction() as db:
            info = _info(db.execute(f"{_SELECT} WHERE model = ? AND group_key = ? AND version = ?",
                                    (model, group_key, version)).fetchone())  # pruned meanwhile? seen here
            self._pin(db, info, reason, client, "pin", f"{model}/{group_key} pinned to v{version}")
        return self.versions(model, group_key)

    def unpin(self, model: str, group_key: str, *, reason: str = "", client: str | None = None) -> dict:
        """Drop the pin: live follows the hold or the latest again."""
        self._require(model, group_key)
        with self.store.transaction() as db:
            pinned = rules.pinned_version(db, model, group_key)
            if pinned is not None:
                db.execute("DELETE FROM pins WHERE model = ? AND group_key = ?", (model, group_key))
                rules.bump(db)
                rules.sync_live(db, model, group_key, isoformat(utc_now()))
                self.store._insert_audit(db, "unpin", client, _with_reason(f"{model}/{group_key} unpinned from v{pinned}", reason))
                doomed = rules.prune(db, model, group_key, self.keep)
            else:
                doomed = []
        self._delete_blobs(doomed)
        return self.versions(model, group_key)

    def rollback(self, model: str, group_key: str, *, reason: str = "", client: str | None = None) -> dict:
        """Pin the most recently live version older than the live one. ConflictError when none."""
        self._require(model, group_key)
        with self.store.transaction() as db:
            live = rules.current_live(db, model, group_key)
            target = rules.rollback_target(db, model, group_key)
            if target is None:
                raise ConflictError(f"nothing to roll back to: no version of {model}/{group_key} older than the live one "
                                    f"(v{live}) has been served" if live else f"{model}/{group_key} serves no version")
            info = _info(db.execute(f"{_SELECT} WHERE model = ? AND group_key = ? AND version = ?",
                                    (model, group_key, target)).fetchone())
            self._pin(db, info, reason, client, "rollback", f"{model}/{group_key} rolled back from v{live} to v{target}")
        return self.versions(model, group_key)

    def hold(self, model: str, *, reason: str = "", client: str | None = None) -> bool:
        """Hold a model: each group keeps serving its live version while new ones are recorded.
        False when it was already held."""
        with self.store.transaction() as db:
            if rules.is_held(db, model):
                return False
            db.execute("INSERT INTO holds (model, held_at, reason) VALUES (?, ?, ?)", (model, isoformat(utc_now()), reason))
            db.execute("INSERT OR REPLACE INTO held_versions (model, group_key, version) SELECT model, group_key, version "
                       "FROM live_periods WHERE model = ? AND live_until IS NULL", (model,))
            rules.bump(db)
            self.store._insert_audit(db, "hold", client, _with_reason(f"{model} held", reason))
        return True

    def release(self, model: str, *, reason: str = "", client: str | None = None) -> bool:
        """End a hold: each group serves its latest version (pins still win). False when not held."""
        doomed: list[str] = []
        with self.store.transaction() as db:
            if not rules.is_held(db, model):
                return False
            groups = rules.live_groups(db, model)
            db.execute("DELETE FROM holds WHERE model = ?", (model,))
            db.execute("DELETE FROM held_versions WHERE model = ?", (model,))
            rules.bump(db)
            now = isoformat(utc_now())
            for group in groups:
                rules.sync_live(db, model, group, now)
                doomed += rules.prune(db, model, group, self.keep)
            self.store._insert_audit(db, "release", client, _with_reason(f"{model} released", reason))
        self._delete_blobs(doomed)
        return True

    def _pin(self, db, info: VersionInfo, reason: str, client: str | None, event: str, what: str) -> None:
        if info.pruned:
            raise ConflictError(f"version {info.version} of {info.model}/{info.group_key} was pruned: its bytes are gone, "
                                "so it cannot be served; pin a kept version")
        # pinning the version already pinned keeps the pin as it is (since when, and its reason unless
        # a new one is given): the pin did not change
        db.execute("INSERT INTO pins (model, group_key, version, reason, pinned_at) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT (model, group_key) DO UPDATE SET "
                   "reason = CASE WHEN pins.version = excluded.version AND excluded.reason = '' THEN pins.reason "
                   "ELSE excluded.reason END, "
                   "pinned_at = CASE WHEN pins.version = excluded.version THEN pins.pinned_at ELSE excluded.pinned_at END, "
                   "version = excluded.version",
                   (info.model, info.group_key, info.version, reason, isoformat(utc_now())))
        rules.bump(db)
        rules.sync_live(db, info.model, info.group_key, isoformat(utc_now()))
        self.store._insert_audit(db, event, client, _with_reason(what, reason))

    def _require(self, model: str, group_key: str) -> None:
        if self.history_head(model, group_key) is None:
            raise NotFoundError(f"no versions are recorded for {model}/{group_key}")

    # -- retention ----------------------------------------------------------------------------------
    def sweep(self) -> int:
        """Apply retention to every group, delete blobs no kept version names (and orphans of a
        killed writer once they are old enough). Returns how many blobs went."""
        doomed: list[str] = []
        with self.store.transaction() as db:
            for model, group in db.execute("SELECT DISTINCT model, group_key FROM versions WHERE pruned = 0").fetchall():
                doomed += rules.prune(db, model, group, self.keep)
        removed = self._delete_blobs(doomed)
        on_disk = self.blobs.all_digests()
        with self.store.transaction() as db:
            named = {d for (d,) in db.execute("SELECT DISTINCT blob_sha256 FROM versions")}
            in_use = {d for (d,) in db.execute("SELECT DISTINCT blob_sha256 FROM versions WHERE pruned = 0")}
            for digest, mtime in on_disk.items():
                orphan_old = digest not in named and time.time() - mtime > ORPHAN_GRACE_SECONDS
                if digest not in in_use and (digest in named or orphan_old):
                    removed += self.blobs.delete(digest)
        return removed

    def _delete_blobs(self, digests: list[str]) -> int:
        """Delete the given blobs unless a kept version still names them (checked inside a write
        transaction, so a writer that needs one again rewrites it in its own)."""
        if not digests:
            return 0
        removed = 0
        with self.store.transaction() as db:
            for digest in digests:
                if not rules.blob_in_use(db, digest):
                    removed += self.blobs.delete(digest)
        return removed

    # -- diff -----------------------------------------------------------------------------------------
    def diff(self, model: str, group_key: str, from_version: int | None = None, to_version: int | None = None) -> dict:
        """The SPEC §6 diff object (defaults: `to` the latest, `from` the version before it);
        NotFoundError for an unknown version or when there is nothing before `to`."""
        return diff_versions(self, model, group_key, from_version, to_version)

    def detail(self, info: VersionInfo) -> dict:
        """What a diff needs of one version (kept in its record, also once it is pruned)."""
        rows = self.store.query("SELECT detail FROM versions WHERE model = ? AND group_key = ? AND version = ?",
                                (info.model, info.group_key, info.version))
        return json.loads(rows[0][0])

    def compare(self, a: VersionInfo, b: VersionInfo) -> dict:
        """Both versions' models on the same inputs (cached per pair of blobs). ArtifactError when a
        model cannot be evaluated; NotFoundError / DamagedDataError as `payload`."""
        key = (a.blob_sha256, b.blob_sha256)
        with self._comparisons_lock:
            cached = self._comparisons.get(key)
        if cached is not None:
            return cached
        models = [self._model_json(i) for i in (a, b)]
        result = self._compare(models[0], models[1], a.dim, f"{a.model}/{a.group_key} v{a.version}/v{b.version}")
        with self._comparisons_lock:
            if len(self._comparisons) >= 256:
                self._comparisons.pop(next(iter(self._comparisons)))
            self._comparisons[key] = result
        return result

    def _model_json(self, info: VersionInfo) -> bytes:
        body = gzip.decompress(self.stored(info).gzip)
        return json.loads(body)["payload"]["model_json"].encode("utf-8")


NAMED_KEYS = 500  # up to this many groups are named in a query; more read the whole model's rows


def _named(keys: Collection[str] | None, column: str = "group_key") -> tuple[str, tuple]:
    """` AND column IN (?, …)` and its arguments for a few `keys`; nothing for None or many, whose
    callers read every group of the model and keep the ones they want."""
    if keys is None or len(keys) > NAMED_KEYS:
        return "", ()
    return f" AND {column} IN ({', '.join('?' * len(keys))})", tuple(keys)


def _heads_query(model: str, keys: Collection[str] | None) -> tuple[str, tuple]:
    """The query of `VersionStore.heads` (SQLite takes the bare columns from the row with the MAX)."""
    only, args = _named(keys)
    return (f"SELECT group_key, MAX(version), pruned, content_sha256 FROM versions "  # noqa: S608 - placeholders only
            f"WHERE model = ?{only} GROUP BY group_key", (model, *args))


def _heads_of(rows: list[tuple], keys: Collection[str] | None) -> dict[str, tuple[int, bool, str]]:
    wanted = None if keys is None else set(keys)
    return {key: (number, bool(pruned), content) for key, number, pruned, content in rows
            if wanted is None or key in wanted}


def row_details(cands: Iterable[Candidate]) -> dict[str, str]:
    """{group key: its row's `detail` JSON} of the candidates that make a version (one whose detail
    cannot be made is left out: `record` reports why)."""
    details: dict[str, str] = {}
    for cand in cands:
        if cand.status == "error":
            continue
        try:
            details[cand.group_key] = json.dumps(cand.detail(), separators=(",", ":"), allow_nan=False)
        except (LookupError, ValueError, OSError, ModelManagerError):
            continue
    return details


def _info(row: tuple) -> VersionInfo:
    values = dict(zip(_COLUMNS, row))
    values["pruned"] = bool(values["pruned"])
    return VersionInfo(**values)


def _with_reason(what: str, reason: str) -> str:
    return f"{what}: {reason}" if reason else what
