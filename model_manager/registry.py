"""Registered model directories, loaded in memory and ready to serve.

Each valid group carries a `PreparedPayload`: the gzip bytes of its payload and a strong ETag, built
once at load or refresh time. A request is a dict lookup. Refreshes build new group states off the
event loop and swap them in with one assignment, so readers always see a consistent model; a group
whose new files are broken keeps serving its last good payload (marked `stale`) until a later change
fixes it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from model_manager import __version__
from model_manager.artifacts import (
    DirectorySnapshot,
    GroupSnapshot,
    Issue,
    build_payload_bytes,
    check_directory,
    file_signature,
    load_directory,
    payload_key,
    scan_directory,
)
from model_manager.conversion import ConversionCache, sha256
from model_manager.errors import DuplicateSymbolError, NotFoundError, PathError, UnprocessableError
from model_manager.files import atomic_write
from model_manager.isolation import start_checker
from model_manager.registration import validate_registration
from model_manager.state import GroupState, LoadedModel, PreparedPayload, now_iso

log = logging.getLogger(__name__)

GZIP_LEVEL = 6
SNAPSHOT_VERSION = f"{__version__}/1"  # parse records of another release are not trusted
SNAPSHOT_FIELDS = tuple(f.name for f in dataclasses.fields(GroupSnapshot) if f.name != "model_json")


class Registry:
    """All registered models in memory, kept in step with the store and the files."""

    def __init__(self, settings, store):
        self.settings = settings
        self.store = store
        self.cache = ConversionCache(settings.cache_dir)
        (self.cache.root / "snapshots").mkdir(exist_ok=True)
        workers = settings.load_workers or os.cpu_count() or 2
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mm-load")
        self.models: dict[str, LoadedModel] = {}
        self._lock = threading.RLock()
        self._raw_verified: set[str] = set()  # ETags whose plain-body file was checked (see _raw_file)
        self.watcher = None
        self.ready = asyncio.Event()  # set once the registered models are loaded
        self._loading: asyncio.Task | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the registered models in the background (the server answers /healthz meanwhile and
        holds model requests until `ready`), then start the watcher."""
        self._loading = asyncio.create_task(self._initial_load(), name="mm-initial-load")

    async def _initial_load(self) -> None:
        from model_manager.watcher import Watcher

        started = time.monotonic()
        loop = asyncio.get_running_loop()
        # the model check process takes ~1 s to start: start it now, beside the first load, not at
        # the first model that needs it (a warm start may need none)
        loop.run_in_executor(None, start_checker)
        try:
            await loop.run_in_executor(None, self.sync_with_store)
        except Exception:
            log.exception("loading the registered models failed")
        finally:
            self.ready.set()
        groups = sum(len(m.groups) for m in list(self.models.values()))
        log.info("loaded %d models (%d groups) in %.1fs", len(self.models), groups, time.monotonic() - started)
        self.watcher = Watcher(self, self.settings)
        await self.watcher.start()

    async def stop(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
            await asyncio.gather(self._loading, return_exceptions=True)
        if self.watcher is not None:
            await self.watcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def sync_with_store(self) -> bool:
        """Load models registered elsewhere (the CLI), drop unregistered ones. True if anything changed."""
        with self._lock:
            rows = {r.name: r for r in self.store.list_models()}
            changed = False
            for name in list(self.models):
                if name not in rows or rows[name].path != self.models[name].path:
                    self.models.pop(name)
                    changed = True
            for name, row in rows.items():
                if name not in self.models:
                    model = LoadedModel(row.name, row.path, row.registered_at)
                    self.reload_model(model, None)
                    self.models[name] = model
                    changed = True
            return changed

    # -- registration ---------------------------------------------------------------------------
    def register(self, name: str, path: str, *, client: str | None = None) -> tuple[LoadedModel, bool]:
        """Validate, persist and load a model directory. Returns (model, created)."""
        with self._lock:
            prepared: dict = {}
            abspath, snap = validate_registration(self.store, name, path, max_bytes=self.settings.max_artifact_bytes,
                                                  cache=self.cache, executor=self.executor,
                                                  prepare=self._preparer(name, prepared, path))
            if snap is None:
                if name not in self.models:
                    self.sync_with_store()
                return self.get(name), False
            # payloads first, the row last: a failure (or a kill) here must not leave a half-registered model
            model = LoadedModel(name, abspath, now_iso())
            states = self._states(model, snap, {}, prepared)
            row = self.store.add_model(name, abspath, client=client,
                                       detail=f"{name} -> {abspath} ({len(snap.groups)} groups)")
            model.registered_at = row.registered_at
            model.install(states)
            self.models[name] = model
        self._watch_set_changed()
        return model, True

    def unregister(self, name: str, *, client: str | None = None) -> None:
        with self._lock:
            self.get(name)
            self.store.remove_model(name, client=client)
            self.models.pop(name, None)
        self._watch_set_changed()

    def _watch_set_changed(self) -> None:
        if self.watcher is not None:
            self.watcher.models_changed()

    def get(self, name: str) -> LoadedModel:
        model = self.models.get(name)
        if model is None:
            raise NotFoundError(f"no model named {name!r} is registered (see GET /api/models)")
        return model

    # -- refresh --------------------------------------------------------------------------------
    def refresh(self, name: str, *, client: str | None = None) -> LoadedModel:
        """Re-read the whole directory. A duplicate symbol refuses the change (previous state kept)."""
        model = self.get(name)
        self.reload_model(model, None, raise_duplicates=True, client=client)
        return model

    def refresh_groups(self, name: str, keys: set[str]) -> None:
        """Re-read only `keys` (the watcher's changed groups); groups whose files are gone disappear."""
        model = self.models.get(name)
        if model is not None:
            self.reload_model(model, keys)

    def changed_groups(self, name: str) -> set[str]:
        """Groups whose files differ from what was last parsed (by size, mtime and inode), plus
        added and removed ones: a stat-only check the watcher runs to catch events it missed."""
        model = self.models.get(name)
        if model is None or model.error:
            return set()
        try:
            root = check_directory(model.path)
            scanned, _ = scan_directory(root)
        except PathError:
            return set()
        groups = model.groups
        changed = {k for k in groups if k not in scanned}
        changed |= {k for k, files in scanned.items() if k not in groups or file_signature(root, files) != groups[k].snapshot.signature}
        return changed

    def reload_model(self, model: LoadedModel, only: set[str] | None, *, raise_duplicates: bool = False,
                client: str | None = None) -> None:
        with model.lock:
            try:
                root = check_directory(model.path)
                scanned, _ = scan_directory(root)
                prepared: dict = {}
                restored = self._restore(model, root, scanned) if only is None and not model.groups else {}
                snap = load_directory(str(root), cache=self.cache, max_bytes=self.settings.max_artifact_bytes,
                                      executor=self.executor, only=set(scanned) - set(restored) if restored else only,
                                      scanned=scanned, prepare=self._preparer(model.name, prepared, str(root)))
                for key, (group, payload) in restored.items():
                    snap.groups[key] = group
                    prepared[key] = (payload, None)
            except PathError as exc:
                model.error = f"{exc} (last good state kept; it recovers when the directory returns)"
                self.store.audit("refresh_failed", client=client, detail=f"{model.name}: {exc}")
                return
            groups = {k: model.groups[k] for k in scanned if k in model.groups and (only is None or k not in only)}
            merged = {**{k: g.snapshot for k, g in groups.items()}, **snap.groups}
            dupes = DirectorySnapshot(snap.path, merged).duplicate_symbols()
            if dupes:
                exc = DuplicateSymbolError(dupes)
                model.error = f"change refused: {exc} (previous state kept and still served)"
                self.store.audit("refresh_failed", client=client, detail=f"{model.name}: {exc}")
                if raise_duplicates:
                    raise exc
                return
            new_states = self._states(model, snap, model.groups, prepared)
            groups.update(new_states)
            model.install(dict(sorted(groups.items())))
            model.error = None
            failed = [k for k, s in new_states.items() if s.outcome in ("failed", "kept_previous")]
            if failed:
                self.store.audit("refresh_failed", client=client, detail=f"{model.name}: {', '.join(failed[:20])}")

    def _states(self, model: LoadedModel, snap: DirectorySnapshot, previous: dict[str, GroupState],
                prepared: dict | None = None) -> dict[str, GroupState]:
        prepared = prepared or {}
        futures = {k: self.executor.submit(self._prepare, model.name, g) for k, g in snap.groups.items() if k not in prepared}
        stamp, out = now_iso(), {}
        for key, group in snap.groups.items():
            payload, failure = prepared[key] if key in prepared else futures[key].result()
            old = previous.get(key)
            generation = old.generation + 1 if old else 1
            if payload is not None:
                outcome = "updated" if old else "loaded"
                out[key] = GroupState(group, group, payload, stamp, outcome, generation=generation)
            elif old is not None and old.payload is not None and old.served is not None:
                msg = failure or "; ".join(i.message for i in group.errors)
                out[key] = GroupState(group, old.served, old.payload, stamp, "kept_previous",
                                      f"new files rejected, still serving the version of {old.served.updated_at}: {msg}",
                                      generation)
            else:
                out[key] = GroupState(group, None, None, stamp, "failed",
                                      failure or "; ".join(i.message for i in group.errors), generation)
        return out

    def _preparer(self, model_name: str, into: dict, root: str):
        """A `load_directory` hook that prebuilds each group's payload in the worker that just parsed
        it: the converted JSON is compressed and dropped at once, instead of every group's JSON
        waiting in memory for a second pass (360 MB for 200 groups of 300-tree models). A group
        that is served gets its parse recorded for the next start (see `_restore`)."""
        def prepare(group: GroupSnapshot) -> None:
            into[group.group_key] = result = self._prepare(model_name, group)
            if result[0] is not None:
                self._record(root, group)
        return prepare

    # -- parse records: a restart skips re-parsing unchanged groups ---------------------------------
    def _record_path(self, root: str, group_key: str) -> Path:
        name = sha256(f"{os.path.realpath(os.path.expanduser(root.strip()))}\0{group_key}".encode())
        return self.cache.root / "snapshots" / f"{name}.json"

    def _record(self, root: str, group: GroupSnapshot) -> None:
        """Keep a served group's parse (everything but the model JSON) beside the payload cache."""
        fields = {name: getattr(group, name) for name in SNAPSHOT_FIELDS}
        fields["issues"] = [i.to_dict() for i in group.issues]
        body = json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False)
        record = {"version": SNAPSHOT_VERSION, "sha256": sha256(body.encode()), "fields": body}
        try:
            atomic_write(self._record_path(root, group.group_key), json.dumps(record).encode(), durable=False)
        except (OSError, TypeError, ValueError) as exc:  # a full disk or an odd value: the next start re-parses
            log.debug("parse record of %s not written: %s", group.group_key, exc)

    def _restore(self, model: LoadedModel, root: Path, scanned: dict[str, dict[str, str]]) -> dict:
        """{group_key: (snapshot, payload)} for the groups whose files are exactly those of their
        parse record (names, sizes, mtimes and inodes: the signature the watcher trusts) and whose
        payload is in the cache. Used for a model's first load in this process, so a restart reads
        a small record and the prebuilt payload instead of unpickling, hashing and parsing again."""
        def one(key: str):
            try:
                record = json.loads(self._record_path(str(root), key).read_bytes())
                if record.get("version") != SNAPSHOT_VERSION or sha256(record["fields"].encode()) != record["sha256"]:
                    return None
                fields = json.loads(record["fields"])
                if set(fields) != set(SNAPSHOT_FIELDS) or fields["files"] != scanned[key]:
                    return None
                fields["signature"] = tuple(tuple(item) for item in fields["signature"])
                if fields["signature"] != file_signature(root, scanned[key]):
                    return None
                fields["issues"] = [Issue(**issue) for issue in fields["issues"]]
                group = GroupSnapshot(**fields)
                hit = self.cache.payload(payload_key(model.name, group))
            except (OSError, ValueError, KeyError, TypeError):
                return None
            if hit is None:
                return None
            return group, PreparedPayload(hit[0], hit[1], _gzip_size(hit[1]), payload_key(model.name, group))

        keys = list(scanned)
        found = self.executor.map(one, keys)
        return {key: result for key, result in zip(keys, found) if result is not None}

    def _prepare(self, model_name: str, group: GroupSnapshot) -> tuple[PreparedPayload | None, str | None]:
        """Prebuild the payload of a valid group (from the payload cache when possible)."""
        if group.errors:
            group.model_json = None
            return None, None
        key = payload_key(model_name, group)
        hit = self.cache.payload(key)
        if hit is not None:
            group.model_json = None
            etag, gz = hit
            return PreparedPayload(etag, gz, _gzip_size(gz), key), None
        model_json = group.model_json or self.cache.model_json(group.model_sha256)
        if model_json is None:
            return None, "converted model missing from the cache; it will be rebuilt on the next change"
        raw = build_payload_bytes(model_name, group, model_json)
        group.model_json = None  # raw JSON need not stay in memory
        prepared = PreparedPayload(f'"{sha256(raw)[:32]}"', gzip.compress(raw, GZIP_LEVEL, mtime=0), len(raw), key)
        try:
            self.cache.put_payload(key, prepared.etag, prepared.gzip)
        except OSError as exc:
            log.warning("payload cache not written: %s", exc)
        return prepared, None

    # -- cache housekeeping ----------------------------------------------------------------------
    def sweep_cache(self) -> int:
        """Delete cache entries no loaded group uses any more (superseded by retraining, removed
        groups, unregistered models). Without this the cache grows by a model's JSON and payload
        at every rewrite. Returns how many files went."""
        live_json, live_payloads, live_etags = set(), set(), set()
        for model in list(self.models.values()):
            for state in model.view.groups.values():
                for snap in (state.snapshot, state.served):
                    if snap is not None and snap.model_sha256:
                        live_json.add(snap.model_sha256)
                if state.payload is not None:
                    live_payloads.add(state.payload.cache_key)
                    live_etags.add(state.payload.etag.strip('"'))
        removed = self.cache.sweep(live_json, live_payloads, live_etags)
        if removed:
            log.info("cache: removed %d unused entries", removed)
        return removed

    # -- reads (event loop; no locks, no I/O) ------------------------------------------------------
    def group(self, name: str, symbol: str, group_key: str | None = None) -> GroupState:
        view = self.get(name).view
        keys = view.symbols.get(symbol, [])
        if group_key is not None:
            if group_key not in keys:
                raise NotFoundError(f"model {name!r} has no group {group_key!r} for symbol {symbol!r}")
            return view.groups[group_key]
        if not keys:
            raise NotFoundError(f"model {name!r} has no symbol {symbol!r} (see GET /api/models/{name}/symbols)")
        if len(keys) > 1:
            raise NotFoundError(f"symbol {symbol!r} is in several groups of {name!r} ({', '.join(keys)}): "
                                "ask for its detail with ?group_key=")
        return view.groups[keys[0]]

    def payload(self, name: str, symbol: str) -> PreparedPayload:
        state = self.group(name, symbol)
        if state.payload is None:
            problems = "; ".join(f"{i.code}: {i.message}" for i in state.snapshot.errors) or state.message
            raise UnprocessableError(f"{state.snapshot.group_key} has errors, so its model is not served: {problems}")
        return state.payload

    def raw_ready(self, payload: PreparedPayload) -> bytes | None:
        """The plain body when it costs no more than a read from the page cache (its file exists and
        was checked), else None; never decompresses. Cheap enough for the event loop."""
        if payload.etag not in self._raw_verified:
            return None
        try:
            body = self._raw_path(payload).read_bytes()
        except OSError:
            return None
        if len(body) != payload.size:
            self._raw_verified.discard(payload.etag)
            return None
        return body

    def raw(self, payload: PreparedPayload) -> bytes:
        """Uncompressed body for clients without gzip (blocking: call it from a worker thread)."""
        return self._raw_file(payload)

    def _raw_path(self, payload: PreparedPayload) -> Path:
        return self.cache.root / "payloads" / f"raw-{payload.etag.strip(chr(34))}.json"

    def _raw_file(self, payload: PreparedPayload) -> bytes:
        """The plain body kept as a file beside the payload cache, written at its first request.

        Decompressing a 2 MB payload costs 5-10 ms per request; reading it back from the page cache
        a fraction of a millisecond, and the page cache is not the server's memory. The file is
        named by the ETag (the sha256 of the body) and checked against it at its first read by
        this process, so a damaged file is only ever a miss."""
        path = self._raw_path(payload)
        try:
            body = path.read_bytes()
        except OSError:
            body = None
        if body is not None and len(body) == payload.size and (
                payload.etag in self._raw_verified or f'"{sha256(body)[:32]}"' == payload.etag):
            self._raw_verified.add(payload.etag)
            return body
        body = gzip.decompress(payload.gzip)
        try:
            atomic_write(path, body, durable=False)
            self._raw_verified.add(payload.etag)
        except OSError as exc:
            log.warning("plain payload not cached: %s", exc)
        return body


def _gzip_size(gz: bytes) -> int:
    """Uncompressed size from the gzip trailer (ISIZE, mod 2**32: payloads are far below 4 GiB)."""
    return int.from_bytes(gz[-4:], "little") if len(gz) >= 4 else 0
