"""`ModelManager(settings)`: the application. One object owns a data dir — its sqlite `Store`, its
`CacheDir`, the password and its tokens (`Authenticator`) — and every operation a user can ask for:
register, unregister, refresh, versions, API keys, password changes, audit, inspect and convert. The CLI commands and the
HTTP handlers are thin surfaces over it: they read their input, call one method and render.

Offline (the CLI) nothing is loaded into memory: a registration is validated, written to the store
and picked up by a running server. Serving (`start_serving`), the service also owns the `Registry`,
the in-memory view of every registered model, and the `Watcher` that keeps it fresh.

Everything here may block on disk or sqlite: the server calls it from worker threads, except the
in-memory reads (`symbols`, `factors`, `detail`, `payload`), which are dict lookups.

Serving as one of several workers (`role`, see workers.py), it also follows what the others change
(`_follow`) and tells them what it changed (`_changed`, through peers.py).

(Over 400 lines: this is the one surface every command and route calls, one short method per
operation; the rules live in the modules it composes.)
"""
from __future__ import annotations

import asyncio
import json
import logging
import shlex
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_manager.artifacts import DirectorySnapshot, GroupSnapshot, load_directory
from model_manager.auth import Authenticator
from model_manager.cache import CacheDir
from model_manager.converter import ConvertResult, convert_file, pickles_in
from model_manager.errors import ConflictError, DuplicateSymbolError, ModelManagerError, NotFoundError, PathError, UsageError, ValidationError
from model_manager.files import private_dir
from model_manager.fleet import Fleet, LiveGroup
from model_manager.heap import freeze_loaded
from model_manager.keys import KeyStore
from model_manager.metrics import Metrics, SharedMetrics
from model_manager.peers import Peers
from model_manager.registration import check_name, normalize_path
from model_manager.registry import Registry
from model_manager.settings import Settings
from model_manager.state import LoadedModel, PayloadBytes
from model_manager.store import ModelRow, Store
from model_manager.versioncommands import VersionCommands
from model_manager.versions import VersionStore, candidate
from model_manager.workers import WorkerRole

log = logging.getLogger(__name__)

FOLLOW_INTERVAL = 1.0  # seconds between looks at versions changed by other processes
FLEET_GAUGE_SECONDS = 10.0  # how stale the fleet gauge of several workers may be
REPLAY_MARGIN_MS = 2000  # several workers: an event stream resumes from this long before its Last-Event-ID

# Every event the audit trail records (the CLI checks `audit -e` against it).
AUDIT_EVENTS = ("bootstrap", "bootstrap_refused", "login", "login_failed", "logout", "password_changed",
                "password_change_failed", "register", "unregister", "refresh_failed",
                "pin", "unpin", "rollback", "hold", "release", "key_created", "key_revoked")


def check_audit_event(event: str | None) -> None:
    """UsageError unless `event` is None or one of AUDIT_EVENTS (the message lists them)."""
    if event is not None and event not in AUDIT_EVENTS:
        raise UsageError(f"unknown audit event {event!r}: use one of {', '.join(AUDIT_EVENTS)}")


@dataclass
class Registration:
    """The outcome of `ModelManager.register`."""

    name: str
    path: str
    created: bool                            # False: exactly this name and path were registered already
    snapshot: DirectorySnapshot | None       # what was read (None when nothing new was registered)
    model: LoadedModel | None = None         # the served model, when the service is serving

    @property
    def error_groups(self) -> list[str]:
        groups = self.snapshot.groups.values() if self.snapshot else ()
        return [g.group_key for g in groups if g.status == "error"]


class ModelManager(VersionCommands):
    """One data dir and everything done with it. `close()` (or `with`) when done."""

    def __init__(self, settings: Settings, *, store: Store | None = None, role: WorkerRole | None = None):
        self.settings = settings
        self.role = role or WorkerRole()  # serving: which worker of `serve --workers N` this is
        self._store = store
        self._owns_store = store is None
        self._cache: CacheDir | None = None
        self._auth: Authenticator | None = None
        self._versions: VersionStore | None = None
        self._fleet: Fleet | None = None
        self.metrics: Metrics | None = None
        self.shared_metrics: SharedMetrics | None = None
        self.peers: Peers | None = None  # the other workers of this server (see peers.py)
        self._follow_lock = threading.Lock()
        self._behind: tuple[float, int] | None = None  # (when, clients behind): see _clients_behind
        self.registry: Registry | None = None
        self.watcher = None
        self._register_lock = threading.Lock()
        self._loading: asyncio.Task | None = None
        self._following: asyncio.Task | None = None

    def __enter__(self) -> ModelManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what it owns (opened on first use, so `inspect` and `convert` need no data dir) -------------
    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.settings.db_path)
        return self._store

    @property
    def cache(self) -> CacheDir:
        if self._cache is None:
            self._cache = CacheDir(self.settings.cache_dir, models_elsewhere=self.versions)
        return self._cache

    @property
    def versions(self) -> VersionStore:
        if self._versions is None:
            self._versions = VersionStore(self.store, self.settings.data_dir, keep=self.settings.keep_versions)
        return self._versions

    @property
    def fleet(self) -> Fleet:
        if self._fleet is None:
            self._fleet = Fleet(self.store)
        return self._fleet

    @property
    def auth(self) -> Authenticator:
        if self._auth is None:
            self._auth = Authenticator(self.settings, self.store, setup_code=self.role.setup_code)
        return self._auth

    def has_database(self) -> bool:
        return self._store is not None or self.settings.db_path.is_file()

    def close(self) -> None:
        if self.registry is not None:
            self.registry.close()
        if self._store is not None and self._owns_store:
            self._store.close()
            self._store = None

    # -- registration ----------------------------------------------------------------------------
    def register(self, name: str, path: str, *, client: str | None = None, require_servable: bool = False) -> Registration:
        """Validate a model directory and register it under `name` (SPEC `POST /api/models`): a valid
        name, a readable directory with at least one group, no symbol in several groups, and a name
        not taken by another path. The row and its audit event are one transaction, written after
        the directory was read (and, when serving, its payloads built), so a failure or a kill
        half-way leaves nothing half-registered. The same name and path again is not an error.
        `require_servable` (the CLI's rule) also refuses a directory in which every group has an error."""
        check_name(name)
        abspath = normalize_path(path)
        # serving, the registry's lock: its sync with the store must not load this model meanwhile
        with self.registry.lock if self.registry else self._register_lock:
            existing = self.store.get_model(name)
            if existing is not None:
                if existing.path != abspath:
                    raise ConflictError(f"model name {name!r} is already registered for {existing.path}: "
                                        "choose another name or remove it first")
                model = self._served(name)
                return Registration(name, abspath, False, None, model)
            hook, prebuilt = self.registry.registration_hook(name, abspath) if self.registry else (None, None)
            snap = load_directory(abspath, cache=self.cache, max_bytes=self.settings.max_artifact_bytes,
                                  executor=self.registry.executor if self.registry else None, prepare=hook)
            if not snap.groups:
                raise PathError(f"{abspath} has no model groups "
                                "(expected files like SYMBOL_RETURN_factors.txt and SYMBOL_RETURN_model.json)")
            dupes = snap.duplicate_symbols()
            if dupes:
                raise DuplicateSymbolError(dupes)
            if require_servable and all(g.status == "error" for g in snap.groups.values()):
                raise ValidationError(f"nothing in {abspath} is servable: all {len(snap.groups)} groups have errors "
                                      f"(see `model-manager inspect {shlex.quote(abspath)}`); nothing was registered")
            row = self.store.add_model(name, abspath, client=client,
                                       detail=f"{name} -> {abspath} ({len(snap.groups)} groups)")
            # versions are recorded once the registration is written: a refused one leaves none
            if self.registry is not None:
                model = self.registry.install(name, abspath, row.registered_at, snap, prebuilt)
            else:
                model = None
                self._record_first_versions(name, snap)
        self._watch_set_changed()
        self._changed(registered=name)
        if self.peers is not None:  # (the others have installed it: see `_recorded`)
            self.peers.withdraw_fresh(name)
        return Registration(name, abspath, True, snap, model)

    def _record_first_versions(self, name: str, snap: DirectorySnapshot) -> None:
        """Offline (the CLI), record version 1 of every servable group, as a server would: a running
        server then finds the same content and makes no new version."""
        for group in snap.groups.values():
            if group.errors:
                continue
            model_json = group.model_json or self.cache.model_json(group.model_sha256)
            if model_json is None:  # not kept (a full disk): the server records it when it loads
                continue
            try:
                self.versions.record(candidate(name, group, model_json))
            except ModelManagerError as exc:
                log.warning("%s/%s: no version recorded: %s", name, group.group_key, exc)

    def _served(self, name: str) -> LoadedModel | None:
        if self.registry is None:
            return None
        if name not in self.registry.models:
            self.registry.sync_registrations()
        return self.registry.get(name)

    def unregister(self, name: str, *, client: str | None = None) -> None:
        """Forget a registration (its files are never touched)."""
        check_name(name)
        if not self.store.remove_model(name, client=client):
            where = "GET /api/models" if self.registry else "model-manager register --list"
            raise NotFoundError(f"no model named {name!r} is registered (see {where})")
        if self.registry is not None:
            self.registry.drop(name)
        self.fleet.forget_model(name)
        self._watch_set_changed()
        self._changed()

    def registered(self) -> list[ModelRow]:
        return self.store.list_models()

    def _watch_set_changed(self) -> None:
        if self.watcher is not None:
            self.watcher.models_changed()

    def _changed(self, registered: str | None = None) -> None:
        """After a change made through this worker: every other worker of the server serves it
        before we answer (see peers.py; blocking). The change is made: trouble here is only logged.
        `registered`: the change is that model's registration (the others need only serve it)."""
        if self.peers is not None:
            try:
                self.peers.sync(model=registered)
            except Exception:  # the others follow the store on their own within a second
                log.exception("the other workers were not told of a change")

    # -- password and audit ------------------------------------------------------------------------
    def init_password(self, password: str, *, client: str | None = None) -> None:
        """Set the first password (ConflictError when one is set)."""
        if self.store.is_initialized():
            raise ConflictError("a password is already set: change it with `model-manager password set`")
        self.store.init_password(password, client=client)

    def set_password(self, password: str, *, client: str | None = None) -> int:
        """Set or replace the password and revoke every token; returns how many were revoked."""
        return self.store.set_password(password, client=client)

    def audit_events(self, *, limit: int = 200, event: str | None = None) -> list[dict]:
        """The audit trail, newest first; `event` must be one of AUDIT_EVENTS."""
        check_audit_event(event)
        return self.store.audit_events(limit=limit, event=event)

    # -- API keys (SPEC §7; the rules are keys.py's) ----------------------------------------------------
    def create_key(self, name: str, scope: str = "read", expires_in_days: int | None = None, *,
                   client: str | None = None, by: str | None = None) -> dict[str, Any]:
        """A new API key: `{"name","scope","key","created_at","expires_at"}`; `key` is never shown again."""
        return KeyStore(self.store).create(name, scope, expires_in_days, client=client, by=by)

    def list_keys(self) -> list[dict[str, Any]]:
        """Every key (never the key itself), with uses this server noted but has not written yet."""
        noted = self._auth.tokens.last_used if self._auth is not None else lambda _digest: None
        return [record.to_dict(noted(record.digest)) for record in KeyStore(self.store).list()]

    def revoke_key(self, name: str, *, client: str | None = None, by: str | None = None) -> bool:
        """Revoke a key now (other server processes within `auth.TOKEN_RECHECK_SECONDS`); False when
        it was revoked already. NotFoundError for an unknown name."""
        record, revoked = KeyStore(self.store).revoke(name, client=client, by=by)
        if self._auth is not None:
            self._auth.tokens.forget(record.digest)
        self._changed()
        return revoked

    # -- offline work --------------------------------------------------------------------------------
    def inspect(self, path: str | Path) -> DirectorySnapshot:
        """Read a model directory (never written) with every group parsed and checked."""
        return load_directory(path, max_bytes=self.settings.max_artifact_bytes)

    def convert(self, path: Path, output: Path | None = None, *, force: bool = False, verify: bool = True,
                progress: Callable[[int, int, Path], None] | None = None) -> list[ConvertResult]:
        """Convert a *_model.pkl file, or every one in a directory, to XGBoost JSON (see converter.py).
        `progress(done, total, next_file)` is called before each file."""
        sources = pickles_in(path)  # (before the output directory is made: a bad PATH leaves none behind)
        if output is not None:
            try:
                output.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                reason = "it exists and is not a directory" if isinstance(exc, FileExistsError) else exc.strerror or str(exc)
                raise PathError(f"cannot create the output directory {output}: {reason}") from None
        results = []
        for done, src in enumerate(sources):
            if progress is not None:
                progress(done, len(sources), src)
            results.append(convert_file(src, output, force=force, verify=verify, max_bytes=self.settings.max_artifact_bytes))
        return results

    def ensure_demo(self) -> Path:
        """Write the demo model directory under the data dir (once) and register it as `demo`."""
        from model_manager.demo import DEMO_NAME, write_demo

        path = private_dir(Path(self.settings.data_dir) / "demo-models")  # under the data dir: private like the rest
        if not any(path.glob("*_factors.txt")):
            write_demo(path)
        if self.store.get_model(DEMO_NAME) is None:
            self.register(DEMO_NAME, str(path), client="serve --demo")
        return path

    # -- serving -------------------------------------------------------------------------------------
    def serve(self) -> Registry:
        """Create the in-memory registry (empty until `start_serving` loads it)."""
        if self.registry is None:
            self.metrics = Metrics()
            self.metrics.watch_state(self._gauges)
            if self.role.shared and self.role.shared_dir is not None:
                self.shared_metrics = SharedMetrics(self.metrics, self.role.shared_dir, self.role.index)
            self.registry = Registry(self.settings, self.store, self.cache, self.versions, self.metrics)
            self.registry.on_dropped = self.fleet.forget_memory
            if self.role.shared:  # event ids of another worker are a moment off ours (see events.py)
                self.registry.events.replay_margin = REPLAY_MARGIN_MS
        return self.registry

    async def start_serving(self) -> None:
        """Load the registered models in the background (the server answers /healthz meanwhile and
        holds model requests until `registry.ready`), then watch their directories."""
        self.serve()
        self._loading = asyncio.create_task(self._initial_load(), name="mm-initial-load")

    async def _initial_load(self) -> None:
        from model_manager.watcher import Watcher

        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self.fleet.load)
            await loop.run_in_executor(None, self._first_load)
        finally:
            self.registry.ready.set()
            self.role.primary_loaded()
        # the research indexes, left for after the payloads are served (a reader builds its own first);
        # then what the load left (indexes included) goes out of later full collections (heap.py): that
        # collection stops every thread (0.1 s at 200 large groups), not a moment to have it as the first
        # polls come in
        self.registry.build_research()
        self.registry.after_research(freeze_loaded)
        # a registration made through another worker is served from its records, not checked again here
        self.registry.follows_registrations = self.role.shared
        self.registry.adopts_unrecorded = self.role.primary
        if self.role.primary:
            # the model check process, for the first change the watcher sees (about 1.5 CPU-s: it imports
            # xgboost). Not beside the first load, which starts it when it has a file to check: at a warm
            # restart it would only share the cores with the workers' restores (and, just after, with
            # their research indexes: it waits for them). With several workers the supervisor started
            # it for all of them, and this wakes it.
            self.registry.after_research(self.registry.warm_up)
            self.watcher = Watcher(self.registry, self.settings)  # the other workers follow what it records (_follow)
            await self.watcher.start()
        if self.role.shared and self.role.shared_dir is not None:
            self._start_peers()
        self._following = asyncio.create_task(self._follow_loop(), name="mm-follow-live")

    def _first_load(self) -> None:
        """Load the registered models (blocking). Worker 0 (or the only worker) reads every directory,
        restoring unchanged groups from their parse records and checking the rest. Any other worker
        checks nothing: it serves at once the models whose groups all restore from the records (a
        warm restart: its load runs beside worker 0's instead of after it), and serves the others
        from the records and versions worker 0 writes, once worker 0's first load is over.

        `registry.ready` (which holds every model request and makes /healthz say `models_loaded`) is
        set once this returns, so it keeps the meaning it had when every worker waited for worker 0's
        whole first load: every group that will be served is served. An engine asking for a group
        worker 0 is still checking is held, never answered 404 (or from a stale record) by a worker
        that does not have it yet. The price: while one model waits for worker 0, requests for the
        restored ones wait too. At a warm restart with unchanged files nothing waits, and this worker
        is ready as soon as its own restore is done."""
        if not self.role.shared or self.role.primary:
            self.registry.load_registered()
            return
        try:
            waiting = bool(self.registry.restore_registered())
        except Exception:  # what could not be restored is served from worker 0's records below
            log.exception("restoring the registered models failed")
            waiting = True
        if waiting:
            self.role.wait_for_primary()
            self.registry.load_recorded()

    def _start_peers(self) -> None:
        peers = Peers(self.role.shared_dir, self.role.index, self.role.count, self._follow_now, self._follow_groups,
                      self._follow_registered)
        try:
            peers.start()
        except OSError as exc:
            log.error("worker %d cannot reach the other workers (%s): changes made through them reach it "
                      "within a second instead of before they are answered", self.role.index, exc)
            return
        self.peers = peers
        self.auth.changed = self._changed
        # a registration's versions: the others install it while this one does
        self.registry.on_recorded = self._recorded
        self.registry.offered_blobs = peers.fresh_from_others
        if self.role.primary:  # what the watcher re-read: the others follow at once, not at their next look
            self.registry.on_reloaded = peers.poke

    def _recorded(self, name: str, fresh: dict) -> None:
        """A registration made here has its versions written: the other workers install it now, and
        need not hash again the blobs this worker has just written (`BlobStore.trust`)."""
        if self.peers is not None:
            self.peers.offer_fresh(name, fresh)
            self.peers.poke(name, registered=True)

    async def _follow_loop(self) -> None:
        """Every FOLLOW_INTERVAL, in a worker thread: `_follow`."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL)
            try:
                await loop.run_in_executor(None, self._follow_now, False)
            except Exception:  # keep following whatever one look hit
                log.exception("following live versions failed")

    def _follow_now(self, asked: bool = True) -> None:
        """`_follow`, one at a time. `asked`: another worker made a change (a key revoked, a logout, a
        broken file found) and waits: look at everything, and forget the cached token checks too, so
        a revoked one is refused at once."""
        with self._follow_lock:
            self._follow(look=asked)
        if asked and self._auth is not None:
            self._auth.tokens.clear()

    def _follow_groups(self, name: str, keys: set[str]) -> None:
        """The groups of a model the primary worker has just re-read (its poke names them): served now."""
        with self._follow_lock:
            self.registry.follow_groups(name, keys)

    def _follow_registered(self, name: str) -> None:
        """A model another worker has just registered (its sync names it): served now."""
        with self._follow_lock:
            if self.role.shared and self.registry.sync_registrations():
                self._watch_set_changed()
            self.registry.follow_registered(name)

    def _follow(self, look: bool = False) -> None:
        """Serve live versions changed by other processes (a pin set with the CLI) within a second,
        and write the fleet's new sightings to the store. Of several workers, each also follows
        registrations made through another, a worker other than the primary serves the groups the
        primary re-read, and each leaves its metrics for the others."""
        if self.role.shared and self.registry.sync_registrations():
            self._watch_set_changed()
        # the primary re-reads its directories itself; it installs what another worker re-read (a
        # refresh asked of that one) when that worker asks it to follow
        self.registry.follow_live(files=not self.role.primary or look, look=look)
        if self.peers is not None:
            self.peers.retry_missed()
        self.fleet.flush()
        if self.shared_metrics is not None:
            self.shared_metrics.publish()

    def end_waits(self) -> None:
        """Answer the waiting long polls (with what is served: a 304) and end the event streams now:
        the server stops, and they should not be cut off (500) when its grace period runs out."""
        if self.registry is not None:
            self.registry.events.close()
            self.registry.waiters.wake_all()

    async def stop_serving(self) -> None:
        if self.peers is not None:
            self.peers.close()
        self.end_waits()
        for task in (self._loading, self._following):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.watcher is not None:
            await self.watcher.stop()
        if self.registry is not None:
            self.registry.close()
            try:
                self.fleet.flush()
            except ModelManagerError as exc:
                log.warning("fleet not written: %s", exc)

    @property
    def serving(self) -> Registry:
        if self.registry is None:
            raise RuntimeError("the service is not serving: call start_serving() first")
        return self.registry

    def refresh(self, name: str, *, client: str | None = None) -> dict[str, Any]:
        """Re-read a model directory now; the model object (SPEC `model`)."""
        model = self.serving.refresh(name, client=client)
        self._changed()
        return model.to_dict()

    # -- in-memory reads (no I/O: fine on the event loop) ---------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        return [m.to_dict() for m in list(self.serving.models.values())]

    def symbols(self, name: str) -> dict[str, Any]:
        return {"model_name": name, "symbols": self.serving.get(name).view.symbols_list()}

    def symbols_json(self, name: str) -> bytes:
        """`symbols(name)` as JSON, from the bytes prebuilt when the model's groups last changed."""
        view = self.serving.get(name).view
        body = view.symbols_body
        if body is None:  # a refresh has just installed new groups and is still building it
            body = json.dumps(view.symbols_list(), separators=(",", ":"), allow_nan=False).encode()
        return b'{"model_name":' + json.dumps(name).encode() + b',"symbols":' + body + b"}"

    def factors(self, name: str) -> dict[str, Any]:
        view = self.serving.get(name).researched()
        return {"model_name": name, "symbol_count": len(view.symbols), "group_count": len(view.groups),
                "factor_count": len(view.factor_union), "factors": view.factor_union, "usage": view.research.usage,
                "metrics": view.research.metrics}

    def matrix(self, name: str, metric: str, top: int | None = None) -> dict[str, Any]:
        """The factor × symbol matrix of one IC metric or importance type (SPEC §11), prebuilt."""
        return self.serving.get(name).researched().research.matrix(metric).to_dict(name, top)

    def detail(self, name: str, symbol: str, group_key: str | None = None) -> dict[str, Any]:
        state = self.serving.group(name, symbol, group_key)
        detail = state.snapshot.detail(name)
        detail.update({"stale": state.stale, "served_updated_at": state.served.updated_at if state.served else None,
                       "importance": state.served.importance if state.served else None,
                       "refresh": state.refresh_info()})
        return detail

    def payload(self, name: str, symbol: str) -> PayloadBytes:
        return self.serving.payload(name, symbol)

    def caught_up_payload(self, name: str, symbol: str) -> PayloadBytes:
        """The payload after following the store's live versions of the model now (blocking): of
        several workers, a client may hold an ETag that another one served a moment before this one
        followed the change; answering it from here would hand it the version it just left."""
        self.serving.follow_live(name)
        return self.payload(name, symbol)

    def metrics_text(self) -> bytes:
        """The Prometheus text of this server, of all its workers (blocking: they exchange files)."""
        if self.shared_metrics is not None:
            return self.shared_metrics.render()
        if self.metrics is None:
            raise RuntimeError("the service is not serving: call start_serving() first")
        return self.metrics.render()

    def fleet_view(self, name: str) -> dict[str, Any]:
        """Which client received which version of each group, and who is behind the live one
        (serving: this process's sightings and live versions; reads the live periods from sqlite)."""
        view = self.serving.get(name).view
        stored = self.versions.live_groups(name)
        groups = {k: LiveGroup(s.snapshot.symbol, s.payload.version if s.payload else None,
                               stored[k].live_starts if k in stored else ())
                  for k, s in view.groups.items()}
        fleet = self.fleet.merged(name) if self.role.shared else self.fleet  # the other workers' sightings too
        return fleet.view(name, groups)

    def fleet_report(self, name: str) -> dict[str, Any]:
        """The fleet object of a model, offline: what every server sharing the data dir has flushed
        to the store (within a second or two of each payload answer), against the live versions."""
        if self.registry is not None:
            return self.fleet_view(name)
        if self.store.get_model(name) is None:
            raise NotFoundError(f"no model named {name!r} is registered (see model-manager register --list)")
        return Fleet.stored(self.store, name).view(name, self.versions.live_groups(name))

    def _clients_behind(self, live: dict[tuple[str, str], int]) -> int:
        """The fleet gauge: of this process, or of every worker (from the store, read at most every
        FLEET_GAUGE_SECONDS: each worker publishes its metrics every second)."""
        if not self.role.shared:
            return self.fleet.behind(live)
        now = time.monotonic()
        if self._behind is None or now - self._behind[0] > FLEET_GAUGE_SECONDS:
            self._behind = (now, Fleet.stored(self.store).behind(live))
        return self._behind[1]

    def _gauges(self) -> dict[str, Any]:
        """The state metrics read at scrape time (see metrics.StateCollector)."""
        registry = self.serving
        groups: dict[tuple[str, str], int] = {}
        live: dict[tuple[str, str], int] = {}
        for model in list(registry.models.values()):
            for key, state in model.groups.items():
                groups[(model.name, state.snapshot.status)] = groups.get((model.name, state.snapshot.status), 0) + 1
                if state.payload is not None:
                    live[(model.name, key)] = state.payload.version
        return {"groups": groups, "watcher_queue": self.watcher.queue_length() if self.watcher else 0,
                "fleet_clients_behind": self._clients_behind(live), "long_polls_waiting": registry.waiters.count(),
                "event_streams_open": registry.events.subscribers()}


def group_summary(groups: Iterable[GroupSnapshot]) -> dict[str, int]:
    """How many groups are ok / warning / error."""
    counts = {"ok": 0, "warning": 0, "error": 0}
    for g in groups:
        counts[g.status] += 1
    return counts
