"""The in-memory serving view: every registered model directory, loaded and ready to serve.

Each servable group carries a `PayloadBytes`: the gzip bytes of its payload and a strong ETag, built
once at load or refresh time, so a request is a dict lookup. Loads build new group states in worker
threads and swap them in with one assignment, so readers always see a consistent model; a group
whose new files are broken keeps serving its last good payload (marked `stale`) until a later change
fixes it.

Every servable payload is recorded as a version of its group (`versions.VersionStore`), and what a
group serves is its *live* version: pinned, else held, else the latest. `follow_live` swaps in live
versions changed elsewhere (a pin set through the API or by the CLI).

The registry does not decide what is registered: the service (`service.ModelManager`) validates and
persists registrations and hands the loaded result to `install`; `sync_registrations` follows
registrations made by other processes (the CLI). The watcher drives it through the `Watched`
interface (see watcher.py): `directories`, `sync_registrations`, `reread`, `refresh_groups`,
`changed_groups` and `sweep_cache`.

Over 400 lines on purpose: loading, version recording and live-version following share the
per-model lock and the install step, and are one piece.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from model_manager.artifacts import (
    DirectorySnapshot,
    GroupSnapshot,
    check_directory,
    file_signature,
    load_directory,
    scan_directory,
    scan_groups,
    served_json_again,
)
from model_manager.cache import CacheDir, LiveEntries, PlainBodies
from model_manager.clock import now_iso
from model_manager.errors import DuplicateSymbolError, ModelManagerError, NotFoundError, PathError, UnprocessableError
from model_manager.events import ChangeWaiters, EventBus, announce
from model_manager.heap import FREEZE_MIN_GROUPS, freeze_loaded
from model_manager.isolation import set_check_memory, start_checker
from model_manager.metrics import Metrics
from model_manager.state import GroupState, LoadedModel, PayloadBytes, snapshot_from_record, snapshot_record
from model_manager.store import Store
from model_manager.versionrecords import content_sha256
from model_manager.versions import Candidate, Prebuilt, Recorded, StoredPayload, VersionInfo, VersionStore, candidate, row_details

log = logging.getLogger(__name__)

ADOPT_SECONDS = 120.0  # how long the primary worker waits for another worker to record a registration's groups
FILES_LOOK_DELAY = 0.5  # seconds from versions that moved to a worker that does not watch looking at the files
FEW_GROUPS = 64  # up to this many groups are looked up by name (6 stats each), more by listing the directory
REGISTERING_LOOK_SECONDS = 10.0  # how often a worker looks unasked at a registration another worker is recording

Built = tuple[PayloadBytes | None, str | None]  # a group's payload, or why there is none


@dataclasses.dataclass
class _Registering:
    """A model another worker is registering, as this one follows it (see `Registry._follow_new`)."""

    records: dict[str, GroupSnapshot]  # its groups' parse records, read once
    look_at: float                     # when to look again unasked (monotonic seconds)
    adopt_at: float                    # when the primary worker loads what is still unrecorded itself


class Registry:
    """All registered models in memory, kept in step with the store and the files."""

    def __init__(self, settings, store: Store, cache: CacheDir, versions: VersionStore, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.cache = cache
        self.versions = versions
        self._live_seq: int | None = None  # versions.state_seq() when live versions were last followed
        self._files_look_at: float | None = None  # when `follow_live(files=True)` looks at the files next
        self._pending: dict[str, set[str]] = {}  # changed groups the primary worker has not recorded yet (see _follow_files_of)
        self._registering: dict[str, _Registering] = {}  # another worker's registrations being followed (_follow_new)
        self.follows_registrations = False  # one of several workers, past its first load: see _follow_new
        self.adopts_unrecorded = False      # the primary worker: see _follow_new and _follow_files_of
        self.events = EventBus(idle=settings.events_keepalive)  # what happened, for the event stream
        self.waiters = ChangeWaiters()  # long polls waiting for a group's payload to change
        self._unserved: list[tuple[str, str, int, str]] = []  # versions recorded but not live (model, group, n, etag)
        self._unserved_lock = threading.Lock()
        self._announced: dict[tuple[str, str], int] = {}  # (model, group): the newest version announced here
        workers = settings.load_workers or os.cpu_count() or 2
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mm-load")
        self._research = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mm-research")  # see queue_research
        self.models: dict[str, LoadedModel] = {}
        self.lock = threading.RLock()  # held while the set of models changes
        self.plain_bodies = PlainBodies(cache)
        self.ready = asyncio.Event()  # set once the registered models are loaded
        # after a re-read is installed: (model, the groups re-read, or None for all) (tells the other workers)
        self.on_reloaded: Callable[[str, set[str] | None], None] | None = None
        # a registration's versions are written: (model, identities of its fresh blobs) (peers.poke)
        self.on_recorded: Callable[[str, dict], None] | None = None
        # what the worker registering a model offers of its fresh blobs (peers.offer_fresh, BlobStore.trust)
        self.offered_blobs: Callable[[str], dict] | None = None
        self.on_dropped: Callable[[str], None] | None = None  # a model is no longer served (forgets its fleet)
        set_check_memory(settings.check_memory_mb)  # the server's limit, not the environment's, before any check

    # -- the first load ------------------------------------------------------------------------
    def load_registered(self) -> None:
        """Load every registered model (blocking; the server runs it in a thread at start)."""
        started = time.monotonic()
        try:
            self.sync_registrations()
        except Exception:
            log.exception("loading the registered models failed")
        groups = sum(len(m.groups) for m in list(self.models.values()))
        log.info("loaded %d models (%d groups) in %.1fs", len(self.models), groups, time.monotonic() - started)

    def restore_registered(self) -> list[str]:
        """The first load of a worker that does not check files (not worker 0 of several): serve at
        once every registered model whose groups all restore from their parse records, as worker 0
        restores them (unchanged files, their version recorded and live: the same live version, pins
        and holds from the store; read only). A model with a group worker 0 has to check first (new or
        changed files, a broken group it re-checks, no record yet) is left empty for `load_recorded`,
        which serves it once worker 0 has recorded it; returns the names of those. Nothing is parsed
        here."""
        started, waiting = time.monotonic(), []
        with self.lock:
            for row in self.store.list_models():
                model = self.models[row.name] = LoadedModel(row.name, row.path, row.registered_at)
                try:
                    root = check_directory(model.path)
                    scanned, _ = scan_directory(root)
                except PathError:  # unusable now: `_load` below records it as worker 0 does
                    scanned, usable = {}, {}
                else:  # (a group with no live version: worker 0's restore opens its live period again)
                    restored, live = self._restore(model, root, scanned), self.versions.live_versions(model.name)
                    heads = self.versions.heads(model.name)
                    usable = {k: g for k, g in restored.items() if k in live and _is_recorded(model.name, g, heads)}
                if len(usable) < len(scanned):
                    waiting.append(model.name)
                else:
                    self._load(model, set(usable), recorded=usable)
        groups = sum(len(m.groups) for m in list(self.models.values()))
        log.info("restored %d models (%d groups) from their parse records in %.1fs; %d wait for worker 0",
                 len(self.models) - len(waiting), groups, time.monotonic() - started, len(waiting))
        return waiting

    def load_recorded(self, patience: float = 30.0) -> None:
        """Serve what `restore_registered` left waiting from the parse records and versions worker 0
        wrote (call it once worker 0's first load is over): `follow_live(files=True)` sees every group
        of an empty model as changed. A group worker 0 has not recorded yet (it is checking a file that
        changed since) is waited for up to `patience` seconds, then left to later `follow_live` calls."""
        started = time.monotonic()
        self.follow_live(files=True, look=True)
        deadline = started + patience
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.2)
            self._follow_pending()
        if self._pending:
            log.warning("groups not yet recorded by worker 0, served once they are: %s",
                        "; ".join(f"{name}: {', '.join(sorted(keys)[:10])}" for name, keys in self._pending.items()))
        groups = sum(len(m.groups) for m in list(self.models.values()))
        log.info("loaded %d models (%d groups), the rest from worker 0's records in %.1fs",
                 len(self.models), groups, time.monotonic() - started)

    def build_research(self) -> None:
        """Queue the research indexes the first load left pending (it serves payloads without them)."""
        for model in list(self.models.values()):
            self.queue_research(model)

    def queue_research(self, model: LoadedModel) -> None:
        """Build `model`'s pending research index in the background thread, one build at a time. A
        re-read returns once its payloads are served, so the watcher's next change does not wait
        behind an index build (1.2 s at 1,000 groups of 150 factors). A build queued behind another
        of the same model finds the index built and returns (`LoadedModel.finish_research`); a
        research read that comes first builds the index itself (`LoadedModel.researched`)."""
        with contextlib.suppress(RuntimeError):  # closing: a reader still builds it
            self._research.submit(self._build_research, model)

    def after_research(self, work: Callable[[], object]) -> None:
        """Run `work` in the research thread once the index builds queued so far are done (background
        work of a start or a large install that should not compete with its answers)."""
        with contextlib.suppress(RuntimeError):  # closing
            self._research.submit(work)

    @staticmethod
    def _build_research(model: LoadedModel) -> None:
        try:
            model.finish_research()
        except Exception:  # its first reader builds it again (and answers the error)
            log.exception("the research index of %s was not built", model.name)

    def warm_up(self) -> None:
        """Start the model check process now (it takes ~1 s), ahead of the first check."""
        start_checker(self.settings.check_memory_mb)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self._research.shutdown(wait=False, cancel_futures=True)

    # -- what is registered ----------------------------------------------------------------------
    def sync_registrations(self) -> bool:
        """Load models registered elsewhere (the CLI), drop unregistered ones. True if anything changed."""
        with self.lock:
            rows = {r.name: r for r in self.store.list_models()}
            changed = False
            for name in list(self.models):
                if name not in rows or rows[name].path != self.models[name].path:
                    self._dropped(name, self.models.pop(name))
                    changed = True
            for name, row in rows.items():
                if name not in self.models:
                    model = LoadedModel(row.name, row.path, row.registered_at)
                    if not (self.follows_registrations and self._follow_new(model)):
                        self._load(model, None)
                    self.models[name] = model
                    changed = True
            return changed

    def _follow_new(self, model: LoadedModel) -> bool:
        """Serve a model another worker registered (through the API) from that worker's parse records
        and versions, as it records them: the registering worker wrote every group's record before
        the registration, and records each version before it answers. Nothing is checked or recorded
        here. False when some group has no usable record: a registration made outside the server (the
        CLI), which this worker then loads itself. The primary worker also loads any group still not
        recorded after ADOPT_SECONDS (a registering worker that died half-way)."""
        try:
            root = check_directory(model.path)
            scanned, _ = scan_directory(root)
        except PathError:
            return False
        restored = self._restore(model, root, scanned, broken=True)
        if len(restored) < len(scanned):
            return False
        # the registering worker asks every worker to follow once it is done (peers.py): until then, or
        # if it cannot ask, looking at thousands of records every second only takes CPU from it, and the
        # model is installed whole, once (see `_follow_files_of`)
        now = time.monotonic()
        self._registering[model.name] = _Registering(
            restored, now + REGISTERING_LOOK_SECONDS, now + ADOPT_SECONDS if self.adopts_unrecorded else math.inf)
        self._follow_files_of(model, set(scanned))
        if model.name not in self._pending:  # recorded already: nothing to follow
            self._registering.pop(model.name, None)
        return True

    def _due(self, name: str, asked: bool) -> bool:
        """Whether to look at a model's pending groups now (a registration another worker is recording:
        when asked, or every REGISTERING_LOOK_SECONDS; anything else: always)."""
        following = self._registering.get(name)
        if following is None:
            return True
        if name not in self._pending:  # complete
            del self._registering[name]
            return True
        if asked or time.monotonic() >= following.look_at:
            following.look_at = time.monotonic() + REGISTERING_LOOK_SECONDS
            return True
        return False

    def payload_hook(self, model_name: str, root: str,
                     keys: Collection[str] | None) -> tuple[Callable[[GroupSnapshot], None], dict[str, Prebuilt], set[str]]:
        """A `load_directory(prepare=...)` hook for a re-read of `keys` (None: all; a registration's:
        `registration_hook`), run in the worker
        that just parsed a group, and what it fills: the body of each changed group's new version is
        built, gzipped and stored there and then (`VersionStore.prebuild`), so the converted JSON is
        compressed and dropped at once instead of every group's JSON waiting in memory (360 MB for
        200 groups of 300-tree models); and the keys of the groups parsed. The rows are written only
        once the re-read is accepted (`_states`): a refused one (a duplicate symbol) records nothing."""
        heads = self.versions.heads(model_name, keys)
        prebuilt: dict[str, Prebuilt] = {}
        parsed: set[str] = set()

        def hook(group: GroupSnapshot) -> None:
            parsed.add(group.group_key)
            if group.errors:
                group.model_json = None  # makes no version
            if group.model_json is None:
                return
            number, pruned, content = heads.get(group.group_key, (0, False, None))
            try:
                cand = candidate(model_name, group, group.model_json)
                if pruned or content != cand.content_sha256:  # (unchanged content makes no version)
                    prebuilt[group.group_key] = self.versions.prebuild(cand, number + 1)
            except (OSError, ModelManagerError) as exc:  # (a full disk) `_states` records it the usual way
                log.warning("%s/%s: version not built ahead: %s", model_name, group.group_key, exc)
                return
            group.model_json = None  # (the model file is read again in the rare case it is needed)
        return hook, prebuilt, parsed

    def registration_hook(self, model_name: str, root: str) -> tuple[Callable[[GroupSnapshot], None], dict[str, Prebuilt]]:
        """`payload_hook` for a registration, whose versions are written only once the registration is
        (`install` writes the rows). Each group's parse is also recorded here and then, so the other
        workers restore the group instead of checking it."""
        prebuild, prebuilt, _ = self.payload_hook(model_name, root, None)  # (a name registered before keeps its numbers)

        def hook(group: GroupSnapshot) -> None:
            prebuild(group)
            self._write_record(root, group)
        return hook, prebuilt

    def install(self, name: str, path: str, registered_at: str, snap: DirectorySnapshot,
                prebuilt: dict[str, Prebuilt] | None = None) -> LoadedModel:
        """Serve a model the service has just registered: record each group's first version (with the
        body `registration_hook` built ahead, if any) and serve it."""
        model = LoadedModel(name, path, registered_at)
        # (its research index is built here, before the answer, while the other workers install it: built
        # in the background, it shared the heap with the answer's last allocations, and kept 20 MB more
        # at 5,000 groups)
        model.install(self._states(model, snap, {}, prebuilt=prebuilt or {}, registering=True))
        model.hold = self.versions.hold_info(name)
        self._announce(model, {})
        with self.lock:
            self.models[name] = model
        if len(snap.groups) >= FREEZE_MIN_GROUPS:  # (in the research thread, while the others are waited for)
            self.after_research(freeze_loaded)
        return model

    def drop(self, name: str) -> None:
        with self.lock:
            model = self.models.pop(name, None)
        if model is not None:
            self._dropped(name, model)

    def _dropped(self, name: str, model: LoadedModel) -> None:
        """A model is no longer served: its long polls answer now (404) and its event streams hear it."""
        for key in model.groups:
            self.waiters.changed(name, key)
        self.events.publish(name, "model", {"event": "unregistered"})
        if self.on_dropped is not None:
            self.on_dropped(name)

    def get(self, name: str) -> LoadedModel:
        model = self.models.get(name)
        if model is None:
            raise NotFoundError(f"no model named {name!r} is registered (see GET /api/models)")
        return model

    # -- refresh -------------------------------------------------------------------------------
    def refresh(self, name: str, *, client: str | None = None) -> LoadedModel:
        """Re-read a whole directory now (POST …/refresh). A duplicate symbol refuses the change
        (previous state kept) and raises DuplicateSymbolError."""
        model = self.get(name)
        self._load(model, None, raise_duplicates=True, client=client)
        return model

    def reread(self, name: str) -> int:
        """Re-read a whole directory (its root appeared, vanished or moved). Returns the group count."""
        model = self.models.get(name)
        if model is None:
            return 0
        if self._recorded_elsewhere(name):  # not while another worker registers it (see _follow_new)
            return len(model.groups)
        self._load(model, None)
        return len(model.groups)

    def refresh_groups(self, name: str, keys: set[str]) -> None:
        """Re-read only `keys` (the watcher's changed groups); groups whose files are gone disappear.
        Groups another worker is recording for its registration are its to check, not ours."""
        model = self.models.get(name)
        keys = keys - self._recorded_elsewhere(name)
        if model is not None and keys:
            self._load(model, keys)

    def following(self, name: str) -> bool:
        """Whether this worker is following another worker's registration of `name` (see _follow_new):
        its groups are installed from that worker's records, not looked at here meanwhile."""
        return name in self._registering

    def _recorded_elsewhere(self, name: str) -> set[str]:
        """The groups of a model another worker registered and is still recording (see _follow_new)."""
        return self._pending.get(name, set()) if name in self._registering else set()

    def directories(self) -> dict[str, tuple[str, bool]]:
        """{model name: (directory path, whether the directory itself is unusable)}."""
        return {m.name: (m.path, bool(m.error)) for m in list(self.models.values())}

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
        changed |= {k for k, files in scanned.items()
                    if k not in groups or file_signature(root, files) != groups[k].snapshot.signature}
        return changed

    def _load(self, model: LoadedModel, only: set[str] | None, *, raise_duplicates: bool = False,
              client: str | None = None, recorded: dict[str, GroupSnapshot] | None = None, wait: bool = True) -> None:
        """Parse the directory (or the groups in `only`) and install the result, unless it would put a
        symbol in several groups or the directory is unusable (then the previous state stays).
        `recorded`: the groups of `only` as another worker parsed them (nothing is parsed here).
        Without `wait`, nothing is done while another re-read of the model runs."""
        started, outcome = time.monotonic(), "failed"
        try:
            outcome = self._reload(model, only, raise_duplicates, client, recorded, wait)
        except DuplicateSymbolError:
            outcome = "refused"
            raise
        finally:
            if self.metrics is not None and recorded is None:  # (following another worker's re-read: it counted it)
                self.metrics.refreshes.labels(outcome).inc()
                self.metrics.refresh_seconds.observe(time.monotonic() - started)

    def _reload(self, model: LoadedModel, only: set[str] | None, raise_duplicates: bool, client: str | None,
                recorded: dict[str, GroupSnapshot] | None, wait: bool = True) -> str:
        def refresh_failed(detail: str) -> None:  # audited once: by the worker that re-read the files
            if recorded is None:
                self.store.audit("refresh_failed", client=client, detail=f"{model.name}: {detail}")

        with _holding(model.lock, wait) as held:
            if not held:
                return "busy"
            try:
                root = check_directory(model.path)
                scanned = _scan(root, only)
                prebuilt: dict[str, Prebuilt] = {}
                parsed: set[str] = set()
                if recorded is not None:
                    snap = DirectorySnapshot(str(root), dict(recorded))
                else:
                    restored = self._restore(model, root, scanned) if only is None and not model.groups else {}
                    hook, prebuilt, parsed = self.payload_hook(model.name, str(root), only)
                    snap = load_directory(str(root), cache=self.cache, max_bytes=self.settings.max_artifact_bytes,
                                          executor=self.executor, only=set(scanned) - set(restored) if restored else only,
                                          scanned=scanned, prepare=hook)
                    snap.groups.update(restored)
            except PathError as exc:
                model.error = f"{exc} (last good state kept; it recovers when the directory returns)"
                refresh_failed(str(exc))
                return "failed"
            # the groups not re-read stay (one whose files went has its own event, or the watcher's look)
            kept = {k: g for k, g in model.groups.items() if k in scanned} if only is None else \
                {k: g for k, g in model.groups.items() if k not in only}
            merged = {**{k: g.snapshot for k, g in kept.items()}, **snap.groups}
            dupes = DirectorySnapshot(snap.path, merged).duplicate_symbols()
            if dupes:
                exc = DuplicateSymbolError(dupes)
                model.error = f"change refused: {exc} (previous state kept and still served)"
                refresh_failed(str(exc))
                if raise_duplicates:
                    raise exc
                return "refused"
            new_states = self._states(model, snap, model.groups, follow=recorded is not None, prebuilt=prebuilt, parsed=parsed)
            with model.install_lock:
                previous = model.groups
                for key in set(previous) - set(scanned) - set(kept):
                    self._group_removed(model.name, key)
                    self.waiters.changed(model.name, key)
                # a pin or rollback made while this re-read ran installed its version (it does not wait
                # for the re-read): the unchanged groups are taken as they are now, and every group re-read
                # serves what the store says is live, so no long poll or event stream is told of a version
                # the pin has just replaced (a pin made by another process: `_follow_model` below)
                groups = {**{k: previous[k] for k in kept if k in previous}, **new_states}
                corrected = self._live_corrections(model.name, groups, new_states.keys())
                self._unserved_new(model.name, {k: new_states[k] for k in corrected if k in new_states}, previous)
                groups.update(corrected)
                model.install(dict(sorted(groups.items())), defer_research=True)
                model.error = None
                self._announce(model, previous)  # long polls and event streams: the new payloads are live
            if self.on_reloaded is not None and recorded is None:  # the other workers install them too, before
                self.on_reloaded(model.name, only)                    # our research index (what we followed, they have)
            if self.ready.is_set():  # (a start's first load queues them all once every model is served)
                self.queue_research(model)
            # a pin, rollback or hold made while this re-read ran (it does not wait for the re-read)
            # is served now, and a hold set by another process is announced
            self._follow_model(model)
            self.events.publish(model.name, "model", {"event": "refreshed"})
            failed = [k for k, s in new_states.items() if s.outcome in ("failed", "kept_previous")]
            if failed:
                refresh_failed(", ".join(failed[:20]))
            return "partial" if failed else "ok"

    def _states(self, model: LoadedModel, snap: DirectorySnapshot, previous: dict[str, GroupState], *,
                follow: bool = False, prebuilt: dict[str, Prebuilt] | None = None,
                parsed: Collection[str] = (), registering: bool = False) -> dict[str, GroupState]:
        # each group's version recorded (with the body built ahead, if any) and its payload. The parse
        # records of the groups `parsed` here are written; the others were restored from their records,
        # or are a registration's, whose hook wrote them. Groups another worker recorded (`follow`) are
        # served from its versions: nothing is recorded here.
        if follow:
            live = self.versions.live_infos(model.name, snap.groups.keys())
            if previous:
                self._follow_unserved(model.name, snap.groups.keys(), previous, live)
            futures = {k: self.executor.submit(self._followed_payload, model.name, g, live.get(k))
                       for k, g in snap.groups.items()}
        else:
            root, prebuilt = str(snap.path), prebuilt or {}
            # the blobs synced all at once, before any row names them; meanwhile (the fsyncs wait on the
            # disk, 1 s at 5,000 groups) the rows of the bodies built ahead for a registration are made,
            # to be written a few hundred to a transaction
            synced = self.executor.submit(self.versions.make_durable, list(prebuilt.values())) if prebuilt else None
            ahead = {k: (self._candidate(model.name, g, root, prebuilt[k].content_sha256), prebuilt[k])
                     for k, g in snap.groups.items() if k in prebuilt and k not in parsed and not g.errors and g.model_sha256}
            details = row_details(cand for cand, _ in ahead.values())
            if synced is not None:
                synced.result()
            recorded = self.versions.record_prebuilt(list(ahead.values()), details)  # (what it leaves out: `record`)
            if registering and self.on_recorded is not None:  # the other workers install it meanwhile, from
                # these versions and the parse records, trusting the blobs as this worker does (blobs.py)
                self.on_recorded(model.name, self.versions.blobs.fresh(p.blob_sha256 for p in prebuilt.values()))
            # the groups restored from their parse records (a start): their versions, looked up together
            kept = {k: self._candidate(model.name, g, root) for k, g in snap.groups.items()
                    if k not in prebuilt and k not in parsed and not g.errors and g.model_sha256}
            if kept:
                recorded.update(self._unchanged(model.name, kept))
            cands = {**{k: cand for k, (cand, _) in ahead.items()}, **kept}
            futures = {k: self.executor.submit(self._build_payload, model.name, g, root, parsed=k in parsed,
                                               prebuilt=prebuilt.get(k), cand=cands.get(k),
                                               recorded=recorded.get(k))
                       for k, g in snap.groups.items()}
        stamp, out = now_iso(), {}
        for key, group in snap.groups.items():
            payload, failure = futures[key].result()
            old = previous.get(key)
            generation = old.generation + 1 if old else 1
            if payload is not None:
                out[key] = GroupState(group, group, payload, stamp, "updated" if old else "loaded", generation=generation)
            elif old is not None and old.payload is not None and old.served is not None:
                msg = failure or "; ".join(i.message for i in group.errors)
                out[key] = GroupState(group, old.served, old.payload, stamp, "kept_previous",
                                      f"new files rejected, still serving the version of {old.served.updated_at}: {msg}",
                                      generation)
            else:
                out[key] = GroupState(group, None, None, stamp, "failed",
                                      failure or "; ".join(i.message for i in group.errors), generation)
        return out

    def _unchanged(self, model_name: str, cands: dict[str, Candidate]) -> dict[str, Recorded]:
        try:
            return self.versions.record_unchanged(list(cands.values()))
        except (ModelManagerError, sqlite3.Error, OSError) as exc:  # each group on its own, below (`record`)
            log.warning("%s: versions of the restored groups not looked up together: %s", model_name, exc)
            return {}

    def _build_payload(self, model_name: str, group: GroupSnapshot, root: str, *, parsed: bool,
                       prebuilt: Prebuilt | None = None, cand: Candidate | None = None,
                       recorded: Recorded | None = None) -> Built:
        """Record a valid group's payload as a version (a new one only when its content changed; with
        the body built ahead, if any) and return what the group serves: its live version. `cand`: the
        group's candidate made already; `recorded`: what recording it did already (`record_prebuilt`).
        The parse of a group `parsed` here is recorded for the next start and the other workers (see
        `_restore`): a served one, or a broken one."""
        if group.errors:
            group.model_json = None
            if parsed:  # the other workers show the trouble too (a restart re-reads it)
                self._write_record(root, group)
            return None, None
        if parsed and group.signature and file_signature(Path(root), group.files) != group.signature:
            # replaced since this read: a later read (another refresh, the watcher) has the newer files,
            # and may have recorded them already; this one must not record the older ones over them
            group.model_json = None
            return None, "its files changed again since they were read: the next read of them is served"
        try:
            if recorded is None:
                content = prebuilt.content_sha256 if prebuilt is not None else None
                recorded = self.versions.record(cand or self._candidate(model_name, group, root, content), prebuilt)
            payload = self._live_payload(recorded)
            if recorded.created and self.metrics is not None:
                self.metrics.versions.labels(model_name).inc()
            if recorded.created and (recorded.live is None or recorded.live.version != recorded.version.version):
                with self._unserved_lock:  # announced once the load is installed (see _announce)
                    self._unserved.append((model_name, group.group_key, recorded.version.version, recorded.version.etag))
            if recorded.created:
                self._told(model_name, group.group_key, recorded.version.version)
        except LookupError as exc:
            return None, str(exc)
        except ModelManagerError as exc:  # damaged version bytes, or a race lost five times
            log.warning("%s/%s: %s", model_name, group.group_key, exc)
            return None, str(exc)
        if parsed:
            self._write_record(root, group)
        return payload, None

    def _candidate(self, model_name: str, group: GroupSnapshot, root: str, content: str | None = None) -> Candidate:
        """The group's version candidate; its model JSON is dropped from the group and read again
        only when a new version has to be built (from a version that serves the same model, or the
        model file). `content`: its digest, made when its body was built ahead."""
        in_memory, sha = group.model_json, group.model_sha256
        model_file, source, max_bytes = group.model_file, group.model_source, self.settings.max_artifact_bytes

        def model_json() -> bytes:  # only called when a new version is built
            data = in_memory or self.cache.model_json(sha)  # (or from a version that serves the same model)
            if data is None and model_file and source:  # no copy kept: the model file is the source
                data = served_json_again(Path(root).resolve(), model_file, source, sha, max_bytes)
            if data is None:
                raise LookupError(f"{model_file or 'the model file'} changed or could not be read again since it "
                                  "was parsed; it is checked again at the next change of the group's files")
            return data

        group.model_json = None  # the JSON need not stay in memory
        return candidate(model_name, group, model_json, content)

    def _follow_unserved(self, name: str, keys: Collection[str], previous: dict[str, GroupState],
                         live: dict[str, VersionInfo]) -> None:
        """The versions another worker recorded in the re-read this one follows and does not serve (a
        hold or a pin): queued for `_announce`, as the recording worker queues its own, so every
        worker's event stream tells of them, once each."""
        for key, (newest, _, _) in self.versions.heads(name, keys).items():
            old = previous.get(key)
            serving = live[key].version if key in live else 0
            told = self._told(name, key, newest)  # (what was told before)
            floor = max(told, serving, old.payload.version if old is not None and old.payload is not None else 0)
            if newest <= floor:
                continue
            with self._unserved_lock:
                self._unserved.extend((name, key, info.version, info.etag)
                                      for info in reversed(self.versions.history(name, key))
                                      if floor < info.version and info.version != serving)

    def _followed_payload(self, model_name: str, group: GroupSnapshot, live: VersionInfo | None) -> Built:
        """What a group another worker recorded serves: its live version's bytes (read only)."""
        group.model_json = None
        if group.errors or live is None:
            return None, None
        try:
            return _payload_bytes(self.versions.stored(live, mapped=True), group.group_key), None
        except ModelManagerError as exc:
            log.warning("%s/%s: live version %s not served: %s", model_name, group.group_key, live.version, exc)
            return None, str(exc)

    def _live_payload(self, recorded: Recorded) -> PayloadBytes | None:
        """What a group serves: its live version's bytes, mapped from the blob file (a version just
        recorded too: the worker processes of a server then share one copy in the page cache)."""
        live = recorded.live
        if live is None:
            return None
        return _payload_bytes(self.versions.stored(live, mapped=True), live.group_key)

    def _group_removed(self, model_name: str, group_key: str) -> None:
        try:
            self.versions.group_removed(model_name, group_key)
        except ModelManagerError as exc:
            log.warning("%s/%s: %s", model_name, group_key, exc)

    # -- live versions changed elsewhere (pins, holds, releases) ------------------------------------
    def follow_live(self, name: str | None = None, *, files: bool = False, look: bool = False) -> bool:
        """Serve each group's live version where it differs from what is served (one model, or every
        model when the versions changed in any process since the last look, or `look` says so). With
        `files` (a worker that does not watch the directories; the primary when another worker asks it
        to follow), first install the groups another worker re-read (see `_follow_files_of`). True if
        anything moved."""
        seq, now = None, time.monotonic()
        # the files (a stat of every one) are looked at a little after the versions moved, not at once:
        # the primary's poke names the groups it re-read within milliseconds (`follow_groups`), and
        # should not wait behind this look; the look finds what no poke named
        files_due = files and (look or (self._files_look_at is not None and now >= self._files_look_at))
        if name is None:
            seq = self.versions.state_seq()
            if seq == self._live_seq and not look and not files_due:
                return self._follow_pending(look) if files or self._pending else False
            if files and not files_due and seq != self._live_seq and self._files_look_at is None:
                self._files_look_at = now + FILES_LOOK_DELAY
        names = [name] if name is not None else list(self.models)
        moved = False
        for model_name in names:
            model = self.models.get(model_name)
            if model is not None:
                # (a directory in trouble: every group, to see it come back; another worker's registration
                # being followed: every group it recorded, none of which is installed here yet)
                if files_due and self._due(model_name, look):
                    following = self._registering.get(model_name)
                    keys = (set(following.records) if following is not None else
                            set(model.groups) if model.error else self.changed_groups(model.name))
                    moved |= self._follow_files_of(model, keys)
                moved |= self._follow_model(model)
        if not files and self._pending:  # the primary: registrations another worker is recording
            moved |= self._follow_pending(look)
        if files_due and name is None:
            self._files_look_at = None
        if seq is not None:
            self._live_seq = seq  # only once followed: a look that failed half-way is made again
        return moved

    def follow_registered(self, name: str) -> bool:
        """Serve a model another worker has just registered and recorded (call `sync_registrations`
        first): installed whole from its parse records and versions, unless it is already. Unlike
        `follow_live(look=True)`, nothing else is looked at: not the other models, nor the new
        model's files or live versions once it is installed (its registering worker read the files,
        the install served the live versions, and the watcher, the look every second and the
        worker that pins or rolls back see to what changed since). True if it was installed now."""
        model = self.models.get(name)
        if model is None or not self._due(name, True):
            return False
        following = self._registering.get(name)
        return following is not None and self._follow_files_of(model, set(following.records))

    # -- a worker that does not watch: groups the primary worker re-read ------------------------------
    def follow_groups(self, name: str, keys: set[str]) -> bool:
        """Install the groups of `name` the primary worker says it has just re-read, from its parse
        records and versions, without looking at the rest of the directory; then its live versions.
        (`follow_live` looks at every group each second, for anything this missed.)"""
        model = self.models.get(name)
        if model is None or model.error or self.following(name):
            return self.follow_live(files=True, look=True)
        moved = self._follow_files_of(model, set(keys) | self._pending.get(name, set()))
        return self._follow_model(model) or moved

    def _follow_pending(self, asked: bool = False) -> bool:
        """Look again at the groups `_follow_files_of` left waiting (see `_due`)."""
        moved = False
        for name, keys in list(self._pending.items()):
            model = self.models.get(name)
            if model is None:
                self._pending.pop(name, None)
            elif name in self._registering and time.monotonic() > self._registering[name].adopt_at:
                self._pending.pop(name, None)
                del self._registering[name]
                log.warning("%s: %d groups still not recorded by the worker that registered it; loading them here",
                            name, len(keys))
                self._load(model, keys)
                moved = True
            elif self._due(name, asked):
                moved |= self._follow_files_of(model, keys)
        return moved

    def _follow_files_of(self, model: LoadedModel, keys: set[str]) -> bool:
        """Install the groups among `keys` (whose files changed) that the primary worker has re-read:
        from its parse record and its recorded version only, never a check or a version of our own. A
        group whose record or version is not written yet (the primary is at it, or the new files are
        broken) is kept as it is and looked at again on the next call. True if anything was installed."""
        self._pending.pop(model.name, None)
        if not keys and not model.error:
            return False
        following = self._registering.get(model.name)
        own_error = model.error is not None and following is None and self.adopts_unrecorded
        try:
            root = check_directory(model.path)
            scanned = _scan(root, None if own_error else keys)
        except PathError as exc:  # as the primary says it (it re-reads the directory when it returns)
            model.error = f"{exc} (last good state kept; it recovers when the directory returns)"
            return False
        error, model.error = model.error, None
        if own_error:  # the primary's own re-read failed or was refused: only one of every group replaces it
            keys = set(keys) | set(scanned)
        present = {k: scanned[k] for k in keys if k in scanned}
        heads = self.versions.heads(model.name, present)
        if following is not None:  # another worker's registration: all of it once it is recorded, or nothing
            records = following.records
            if not all(k in records and _is_recorded(model.name, records[k], heads) for k in present):
                self._pending[model.name] = set(present)  # stops at the first group not recorded yet
                return False
            ready = {k: records[k] for k in present}
            if self.offered_blobs is not None:  # its blobs, just written and hashed by the registering worker
                self.versions.blobs.trust(self.offered_blobs(model.name))
        else:
            restored = self._restore(model, root, present, broken=True)
            ready = {k: g for k, g in restored.items() if k in present and _is_recorded(model.name, g, heads)}
        gone = {k for k in keys if k not in scanned and k in model.groups}
        waiting = set(present) - set(ready)
        if own_error and waiting:  # another worker's re-read did not cover what this one refused: it stands
            model.error = error
            return False
        # (the primary follows another worker's re-read, a refresh asked of it; a group nobody recorded
        # yet is its own watcher's to re-read, not one to wait for)
        if waiting and (following is not None or not self.adopts_unrecorded):
            self._pending[model.name] = waiting
        if not ready and not gone:
            return False
        # the primary never waits behind its own re-read (a pin it is asked to serve meanwhile would
        # wait too): that re-read installs what the files hold now
        self._load(model, set(ready) | gone, recorded=ready, wait=following is not None or not self.adopts_unrecorded)
        if following is not None:  # another worker's registration, installed whole: this worker's model now
            self._registering.pop(model.name, None)  # (its watcher looks at it, a poke is followed directly)
            if len(ready) >= FREEZE_MIN_GROUPS:  # (after its research index: the registering worker waits)
                self.after_research(freeze_loaded)
        return True

    def _follow_model(self, model: LoadedModel) -> bool:
        with model.install_lock:  # not `model.lock`: an emergency rollback must not wait for a long re-read
            changed = self._live_corrections(model.name, model.groups)
            hold = self.versions.hold_info(model.name)
            if not changed and hold == model.hold:
                return False
            previous = model.groups
            if changed:
                model.install({**model.groups, **changed})
            if (hold is None) != (model.hold is None):
                self.events.publish(model.name, "model", {"event": "held" if hold else "released"})
            model.hold = hold
            self._announce(model, previous)
            return True

    def _unserved_new(self, name: str, replaced: dict[str, GroupState], previous: dict[str, GroupState]) -> None:
        """Versions this re-read made live that a pin or rollback replaced before they were served:
        new versions all the same, queued for `_announce` as not live."""
        with self._unserved_lock:
            for key, state in replaced.items():
                old = previous.get(key)
                if state.payload is not None and state.payload.version > (old.payload.version if old and old.payload else 0):
                    self._unserved.append((name, key, state.payload.version, state.payload.etag))

    def _live_corrections(self, name: str, groups: dict[str, GroupState],
                          keys: Collection[str] | None = None) -> dict[str, GroupState]:
        """The states of `groups` (or of those among `keys`) that do not serve the version the store
        says is live (a pin, a rollback, an unpin or a release made since they were built), each with
        its live version."""
        live = self.versions.live_versions(name, keys)
        changed: dict[str, GroupState] = {}
        for key, state in (groups.items() if keys is None else ((k, groups[k]) for k in keys if k in groups)):
            number = live.get(key)
            if number is None or (state.payload is not None and state.payload.version == number):
                continue
            try:
                payload = _payload_bytes(self.versions.payload(name, key, number, mapped=True), key)
            except ModelManagerError as exc:
                log.warning("%s/%s: live version %s not served: %s", name, key, number, exc)
                continue
            changed[key] = dataclasses.replace(state, payload=payload, refreshed_at=now_iso(), outcome="live_changed",
                                               message=f"now serving version {number}")
        return changed

    def _announce(self, model: LoadedModel, previous: dict[str, GroupState]) -> None:
        """Tell the event stream and the waiting long polls what an install changed."""
        with self._unserved_lock:
            unserved = [u[1:] for u in self._unserved if u[0] == model.name]
            self._unserved = [u for u in self._unserved if u[0] != model.name]
        announce(self.events, self.waiters, model.name, previous, model.groups, unserved)
        for key, state in model.groups.items():  # told of as live: never "new" again (see _follow_unserved)
            old = previous.get(key)
            if state.payload is not None and (old is None or old.payload is not state.payload):
                self._told(model.name, key, state.payload.version)

    def _told(self, name: str, key: str, version: int) -> int:
        """Note that the event streams were told of a group's `version` (threads of several re-reads
        and pins note at once: the newest stays); returns what was noted before."""
        with self._unserved_lock:
            before = self._announced.get((name, key), 0)
            self._announced[(name, key)] = max(before, version)
            return before

    def version_payload(self, name: str, symbol: str, version: int) -> PayloadBytes:
        """The bytes of any kept version of a symbol's group (blocking: sqlite and a file read)."""
        key = self.group(name, symbol).snapshot.group_key
        return _payload_bytes(self.versions.payload(name, key, version), key)

    # -- parse records: a restart skips re-parsing unchanged groups ---------------------------------
    def _write_record(self, root: str, group: GroupSnapshot) -> None:
        try:
            self.cache.write_record(root, group.group_key, snapshot_record(group))
        except (OSError, TypeError, ValueError) as exc:  # a full disk or an odd value: the next start re-parses
            log.debug("parse record of %s not written: %s", group.group_key, exc)

    def _restore(self, model: LoadedModel, root: Path, scanned: dict[str, dict[str, str]], *,
                 broken: bool = False) -> dict[str, GroupSnapshot]:
        """{group_key: snapshot} for the groups whose files are exactly those of their parse record
        (names, sizes, mtimes and inodes: the signature the watcher trusts). Used for a model's first
        load in this process, so a restart reads a small record instead of unpickling, hashing and
        parsing again; its version (unchanged content makes none) then gives the bytes to serve.
        A broken group's record (`broken`) only serves the other workers: a start checks it again, and
        also a group whose model JSON no kept version holds (a registering worker that died before
        recording it): the model file is then the only place it can come from."""
        kept = None if broken else self.versions.kept_model_shas()

        def one(key: str) -> GroupSnapshot | None:
            fields = self.cache.read_record(str(root), key)
            group = snapshot_from_record(fields) if fields is not None else None
            if group is None or group.files != scanned[key] or group.signature != file_signature(root, scanned[key]):
                return None
            if broken:
                return group
            if group.errors or (group.model_sha256 not in kept and not self.cache.has_json(group.model_sha256)):
                return None
            return group

        keys = list(scanned)
        found = self.executor.map(one, keys)
        return {key: group for key, group in zip(keys, found) if group is not None}

    def sweep_cache(self) -> int:
        """Delete cache entries no loaded group uses any more (superseded by retraining, removed
        groups, unregistered models). Without this the cache grows by a plain body at every
        rewrite. Returns how many files went."""
        live = LiveEntries()
        for model in list(self.models.values()):
            for state in model.view.groups.values():
                for snap in (state.snapshot, state.served):
                    if snap is not None and snap.model_sha256:
                        live.json.add(snap.model_sha256)
                if state.payload is not None:
                    live.etags.add(state.payload.etag.strip('"'))
        removed = self.cache.sweep(live) + self.versions.sweep()
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

    def payload(self, name: str, symbol: str) -> PayloadBytes:
        state = self.group(name, symbol)
        if state.payload is None:
            problems = "; ".join(f"{i.code}: {i.message}" for i in state.snapshot.errors) or state.message
            raise UnprocessableError(f"{state.snapshot.group_key} has errors, so its model is not served: {problems}")
        return state.payload

    # -- plain bodies (see cache.PlainBodies) --------------------------------------------------------
    def plain_body_cached(self, payload: PayloadBytes) -> bytes | None:
        """The plain body if it costs no more than a page-cache read, else None (event loop safe)."""
        return self.plain_bodies.cached(payload.etag, payload.size)

    def plain_body(self, payload: PayloadBytes) -> bytes:
        """The plain body for clients without gzip (blocking: call it from a worker thread)."""
        return self.plain_bodies.get(payload.etag, payload.gzip, payload.size)


@contextlib.contextmanager
def _holding(lock: threading.Lock, wait: bool):
    """`with lock`, or without `wait` only if it is free: yields whether it is held."""
    held = lock.acquire(blocking=wait)
    try:
        yield held
    finally:
        if held:
            lock.release()


def _scan(root: Path, keys: Collection[str] | None) -> dict[str, dict[str, str]]:
    """The files of the groups `keys` (None: every group) as `scan_directory` gives them: found by
    name when they are a few (a re-read of what a watcher event named), else by listing."""
    if keys is not None and len(keys) <= FEW_GROUPS:
        return scan_groups(root, keys)
    scanned, _ = scan_directory(root)
    return scanned if keys is None else {k: files for k, files in scanned.items() if k in keys}


def _is_recorded(model_name: str, group: GroupSnapshot, heads: dict[str, tuple[int, bool, str]]) -> bool:
    """Whether the primary has finished with a group's parse: its version is recorded (`heads`: the
    model's `VersionStore.heads`), or it is broken (a broken group makes no version; its previous
    payload stays served)."""
    if group.errors:
        return True
    head = heads.get(group.group_key)
    return head is not None and not head[1] and head[2] == content_sha256(model_name, group)


def _payload_bytes(stored: StoredPayload, group_key: str) -> PayloadBytes:
    return PayloadBytes(stored.etag, stored.gzip, stored.size, stored.version, group_key, stored.file)
