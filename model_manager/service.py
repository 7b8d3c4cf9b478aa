"""`ModelManager(settings)`: the application. One object owns a data dir — its sqlite `Store`, its
`CacheDir`, the password and its tokens (`Authenticator`) — and every operation a user can ask for:
register, unregister, refresh, password changes, audit, inspect and convert. The CLI commands and the
HTTP handlers are thin surfaces over it: they read their input, call one method and render.

Offline (the CLI) nothing is loaded into memory: a registration is validated, written to the store
and picked up by a running server. Serving (`start_serving`), the service also owns the `Registry`,
the in-memory view of every registered model, and the `Watcher` that keeps it fresh.

Everything here may block on disk or sqlite: the server calls it from worker threads, except the
in-memory reads (`symbols`, `factors`, `detail`, `payload`), which are dict lookups.
"""
from __future__ import annotations

import asyncio
import logging
import shlex
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_manager.artifacts import DirectorySnapshot, GroupSnapshot, load_directory
from model_manager.auth import Authenticator
from model_manager.cache import CacheDir
from model_manager.converter import ConvertResult, convert_file, pickles_in
from model_manager.errors import ConflictError, DuplicateSymbolError, ModelManagerError, NotFoundError, PathError, UsageError, ValidationError
from model_manager.fleet import Fleet
from model_manager.metrics import Metrics
from model_manager.registration import check_name, normalize_path
from model_manager.registry import Registry
from model_manager.settings import Settings
from model_manager.state import LoadedModel, PayloadBytes
from model_manager.store import ModelRow, Store
from model_manager.versions import VersionStore

log = logging.getLogger(__name__)

FOLLOW_INTERVAL = 1.0  # seconds between looks at versions changed by other processes

# Every event the audit trail records (the CLI checks `audit -e` against it).
AUDIT_EVENTS = ("bootstrap", "bootstrap_refused", "login", "login_failed", "logout", "password_changed",
                "password_change_failed", "register", "unregister", "refresh_failed",
                "pin", "unpin", "rollback", "hold", "release")


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


class ModelManager:
    """One data dir and everything done with it. `close()` (or `with`) when done."""

    def __init__(self, settings: Settings, *, store: Store | None = None):
        self.settings = settings
        self._store = store
        self._owns_store = store is None
        self._cache: CacheDir | None = None
        self._auth: Authenticator | None = None
        self._versions: VersionStore | None = None
        self._fleet: Fleet | None = None
        self.metrics: Metrics | None = None
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
            self._cache = CacheDir(self.settings.cache_dir)
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
            self._auth = Authenticator(self.settings, self.store)
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
            hook = self.registry.payload_hook(name, abspath, record=False)[0] if self.registry else None
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
            model = self.registry.install(name, abspath, row.registered_at, snap) if self.registry else None
        self._watch_set_changed()
        return Registration(name, abspath, True, snap, model)

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

    def registered(self) -> list[ModelRow]:
        return self.store.list_models()

    def _watch_set_changed(self) -> None:
        if self.watcher is not None:
            self.watcher.models_changed()

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

    # -- versions: history, pin, rollback, hold, diff (SPEC §6) -----------------------------------------
    def group_key(self, name: str, symbol: str) -> str:
        """The group a symbol of a registered model is in (from memory when serving, else its versions)."""
        if self.registry is not None:
            return self.registry.group(name, symbol).snapshot.group_key
        if self.store.get_model(name) is None:
            raise NotFoundError(f"no model named {name!r} is registered (see model-manager register --list)")
        keys = [k for (k,) in self.store.query("SELECT DISTINCT group_key FROM versions WHERE model = ? AND symbol = ?",
                                               (name, symbol))]
        if not keys:
            raise NotFoundError(f"model {name!r} has no versions of a symbol {symbol!r}: check the symbol "
                                f"(model-manager inspect shows them), or start the server once so it records them")
        if len(keys) > 1:
            raise NotFoundError(f"symbol {symbol!r} has versions in several groups of {name!r} ({', '.join(sorted(keys))})")
        return keys[0]

    def version_history(self, name: str, symbol: str) -> dict[str, Any]:
        """The versions object: every version of a symbol's group, newest first."""
        return self.versions.versions(name, self.group_key(name, symbol))

    def pin(self, name: str, symbol: str, version: int, *, reason: str = "", client: str | None = None) -> dict[str, Any]:
        """Serve `version` of a symbol until unpinned."""
        done = self.versions.pin(name, self.group_key(name, symbol), version, reason=reason, client=client)
        return self._followed(name, done)

    def unpin(self, name: str, symbol: str, *, reason: str = "", client: str | None = None) -> dict[str, Any]:
        done = self.versions.unpin(name, self.group_key(name, symbol), reason=reason, client=client)
        return self._followed(name, done)

    def rollback(self, name: str, symbol: str, *, reason: str = "", client: str | None = None) -> dict[str, Any]:
        """Pin the version that was live before the current one."""
        done = self.versions.rollback(name, self.group_key(name, symbol), reason=reason, client=client)
        return self._followed(name, done)

    def hold(self, name: str, *, reason: str = "", client: str | None = None) -> dict[str, Any]:
        """Keep every group of a model on its live version; new versions are recorded, not served."""
        self._require_model(name)
        self.versions.hold(name, reason=reason, client=client)
        return self._followed(name, self._model_object(name))

    def release(self, name: str, *, reason: str = "", client: str | None = None) -> dict[str, Any]:
        """End a hold: each group serves its latest version again (pins still win)."""
        self._require_model(name)
        self.versions.release(name, reason=reason, client=client)
        return self._followed(name, self._model_object(name))

    def diff(self, name: str, symbol: str, from_version: int | None = None, to_version: int | None = None) -> dict[str, Any]:
        """What changed between two versions of a symbol's group (defaults: the latest and the one before)."""
        return self.versions.diff(name, self.group_key(name, symbol), from_version, to_version)

    def version_payload(self, name: str, symbol: str, version: int) -> PayloadBytes:
        """The payload bytes of any kept version (serving only; blocking)."""
        return self.serving.version_payload(name, symbol, version)

    def _require_model(self, name: str) -> None:
        if (self.registry is not None and name not in self.registry.models) or self.store.get_model(name) is None:
            raise NotFoundError(f"no model named {name!r} is registered")

    def _model_object(self, name: str) -> dict[str, Any]:
        if self.registry is not None:
            model = self.registry.get(name)
            model.held = self.versions.hold_info(name) is not None
            return model.to_dict()
        row = self.store.get_model(name)
        return {"name": row.name, "path": row.path, "registered_at": row.registered_at,
                "held": self.versions.hold_info(name) is not None}

    def _followed(self, name: str, answer: dict[str, Any]) -> dict[str, Any]:
        """After a change of what is live: a serving service serves it now (other servers follow
        `versions.state_seq` within a second)."""
        if self.registry is not None:
            self.registry.follow_live(name)
            if "held" in answer and "versions" not in answer:
                answer = self.registry.get(name).to_dict()
        return answer

    # -- offline work --------------------------------------------------------------------------------
    def inspect(self, path: str | Path) -> DirectorySnapshot:
        """Read a model directory (never written) with every group parsed and checked."""
        return load_directory(path, max_bytes=self.settings.max_artifact_bytes)

    def convert(self, path: Path, output: Path | None = None, *, force: bool = False, verify: bool = True,
                progress: Callable[[int, int, Path], None] | None = None) -> list[ConvertResult]:
        """Convert a *_model.pkl file, or every one in a directory, to XGBoost JSON (see converter.py).
        `progress(done, total, next_file)` is called before each file."""
        sources = pickles_in(path)
        if output is not None:
            if output.exists() and not output.is_dir():
                raise PathError(f"--output {output} exists and is not a directory")
            output.mkdir(parents=True, exist_ok=True)
        results = []
        for done, src in enumerate(sources):
            if progress is not None:
                progress(done, len(sources), src)
            results.append(convert_file(src, output, force=force, verify=verify, max_bytes=self.settings.max_artifact_bytes))
        return results

    def ensure_demo(self) -> Path:
        """Write the demo model directory under the data dir (once) and register it as `demo`."""
        from model_manager.demo import DEMO_NAME, write_demo

        path = Path(self.settings.data_dir) / "demo-models"
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
            self.registry = Registry(self.settings, self.store, self.cache, self.versions, self.metrics)
        return self.registry

    async def start_serving(self) -> None:
        """Load the registered models in the background (the server answers /healthz meanwhile and
        holds model requests until `registry.ready`), then watch their directories."""
        self.serve()
        self._loading = asyncio.create_task(self._initial_load(), name="mm-initial-load")

    async def _initial_load(self) -> None:
        from model_manager.watcher import Watcher

        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, Registry.warm_up)
        try:
            await loop.run_in_executor(None, self.fleet.load)
            await loop.run_in_executor(None, self.registry.load_registered)
        finally:
            self.registry.ready.set()
        self.watcher = Watcher(self.registry, self.settings)
        await self.watcher.start()
        self._following = asyncio.create_task(self._follow_loop(), name="mm-follow-live")

    async def _follow_loop(self) -> None:
        """Serve live versions changed by other processes (a pin set with the CLI) within a second,
        and write the fleet's new sightings to the store."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(FOLLOW_INTERVAL)
            try:
                await loop.run_in_executor(None, self.registry.follow_live)
                await loop.run_in_executor(None, self.fleet.flush)
            except Exception:  # keep following whatever one look hit
                log.exception("following live versions failed")

    async def stop_serving(self) -> None:
        if self.registry is not None:  # open event streams and long polls end now, not at their timeout
            self.registry.events.close()
            self.registry.waiters.wake_all()
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
        return self.serving.refresh(name, client=client).to_dict()

    # -- in-memory reads (no I/O: fine on the event loop) ---------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        return [m.to_dict() for m in list(self.serving.models.values())]

    def symbols(self, name: str) -> dict[str, Any]:
        states = sorted(self.serving.get(name).view.groups.values(), key=lambda s: (s.snapshot.symbol, s.snapshot.group_key))
        return {"model_name": name, "symbols": [{**s.snapshot.summary(), "stale": s.stale} for s in states]}

    def factors(self, name: str) -> dict[str, Any]:
        view = self.serving.get(name).view
        return {"model_name": name, "symbol_count": len(view.symbols), "group_count": len(view.groups),
                "factor_count": len(view.factor_union), "factors": view.factor_union}

    def detail(self, name: str, symbol: str, group_key: str | None = None) -> dict[str, Any]:
        state = self.serving.group(name, symbol, group_key)
        detail = state.snapshot.detail(name)
        detail.update({"stale": state.stale, "served_updated_at": state.served.updated_at if state.served else None,
                       "refresh": state.refresh_info()})
        return detail

    def payload(self, name: str, symbol: str) -> PayloadBytes:
        return self.serving.payload(name, symbol)

    def fleet_view(self, name: str) -> dict[str, Any]:
        """Which client received which version of each group, and who is behind the live one."""
        view = self.serving.get(name).view
        groups = {k: (s.snapshot.symbol, s.payload.version if s.payload else None) for k, s in view.groups.items()}
        return self.fleet.view(name, groups)

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
                "fleet_clients_behind": self.fleet.behind(live), "long_polls_waiting": registry.waiters.count(),
                "event_streams_open": registry.events.subscribers()}


def group_summary(groups: Iterable[GroupSnapshot]) -> dict[str, int]:
    """How many groups are ok / warning / error."""
    counts = {"ok": 0, "warning": 0, "error": 0}
    for g in groups:
        counts[g.status] += 1
    return counts
