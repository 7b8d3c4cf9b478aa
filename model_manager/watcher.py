"""Keep registered models fresh while training jobs rewrite their files (SPEC §3).

One watchfiles task covers every registered directory. Events are mapped to `(model, group_key)`
and a group is re-parsed once its files have been quiet for the debounce time, so a burst of writes
costs one parse. Only changed groups are re-read; parsing runs in the registry's worker threads.

Each directory's parent is watched too (non-recursively), because with inotify a root that is deleted
and recreated loses its watch: when a root appears, disappears or its identity changes (a symlink
`current -> v3` flipped to v4), the whole model is re-read and the watch set rebuilt. Every
`interval` seconds a tick also picks up registrations made by the CLI and re-checks the roots, which
covers file systems that deliver no events at all.
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from pathlib import Path
from typing import Protocol

from model_manager.artifacts import split_artifact_name

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 600.0  # seconds between cache sweeps (see Watched.sweep_cache)
STEP_MS = 25  # watchfiles yields the changes seen once none came for this long
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "afs", "ceph", "glusterfs", "lustre"}


def filesystem_type(path: str) -> str | None:
    """The mount type of `path` from /proc/mounts (None where that cannot be read)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    real, best, fstype = os.path.realpath(path), "", None
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3:
            mount = parts[1].replace("\\040", " ")
            if (real == mount or real.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                best, fstype = mount, parts[2]
    return fstype


class _LibraryChatter(logging.Filter):
    """watchfiles logs "N changes detected" at INFO for every batch. It goes to DEBUG (shown only when
    this module logs at DEBUG); its "all changes filtered out" lines are dropped, as they would
    describe our own log file's writes when that file is in a watched directory."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        if str(record.msg).startswith("all changes filtered out"):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return log.isEnabledFor(logging.DEBUG)


_CHATTER = _LibraryChatter()


def event_target(path: str, dirs: dict[str, str]) -> tuple[str, str] | None:
    """(model, group_key or "*" for the whole directory) an event is about, or None to ignore it.

    Events count for a model's directory itself (created, deleted, replaced: seen in its parent) and
    for artifact files in it. Anything else, including every other file in a parent directory (a log
    file written there, say), is ignored, so what the service writes next to a model directory
    cannot make it react to itself."""
    path = path.rstrip("/")
    if path in dirs:
        return dirs[path], "*"
    directory, name = os.path.split(path)
    model = dirs.get(directory)
    parts = split_artifact_name(name)
    if model is None or parts is None:
        return None
    return model, parts[0]


def _identity(path: str) -> tuple | None:
    try:
        st = os.stat(path)  # follows a symlinked root: a flipped link is a new identity
        return (st.st_dev, st.st_ino)
    except OSError:
        return None


class Watched(Protocol):
    """What the watcher drives (the registry). Every method may block: it runs them in threads."""

    def directories(self) -> dict[str, tuple[str, bool]]:
        """{model name: (directory path, whether the directory itself is unusable)}."""

    def sync_registrations(self) -> bool:
        """Follow registrations made by other processes; True when the set of models changed."""

    def reread(self, name: str) -> int:
        """Re-read a whole model directory; returns its group count."""

    def refresh_groups(self, name: str, keys: set[str]) -> None:
        """Re-read these groups of a model."""

    def changed_groups(self, name: str) -> set[str]:
        """Groups whose files changed since they were read (a stat-only check)."""

    def following(self, name: str) -> bool:
        """Whether another worker is registering this model (its groups are not read here yet)."""

    def sweep_cache(self) -> int:
        """Delete cache entries nothing uses any more."""


class Watcher:
    def __init__(self, models: Watched, settings):
        self.models = models
        self.settings = settings
        self.debounce = float(settings.watch_debounce)
        self.interval = float(settings.watch_interval)
        self._pending: dict[tuple[str, str], float] = {}
        self._tasks: list[asyncio.Task] = []
        self._stop = asyncio.Event()
        self._rewatch = asyncio.Event()
        self._identities: dict[str, tuple | None] = {}
        self._last_sweep = -SWEEP_INTERVAL  # the first tick sweeps the cache (after the initial load)
        self.parse_count = 0  # group refreshes done, for tests and diagnostics

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if _CHATTER not in logging.getLogger("watchfiles.main").filters:
            logging.getLogger("watchfiles.main").addFilter(_CHATTER)
        self._identities = {name: _identity(path) for name, (path, _) in self.models.directories().items()}
        self._tasks = [asyncio.create_task(self._tick_loop(), name="mm-tick")]
        if self.settings.watch_enabled:
            self._tasks += [asyncio.create_task(self._watch_loop(), name="mm-watch"),
                            asyncio.create_task(self._debounce_loop(), name="mm-debounce")]

    async def stop(self) -> None:
        self._stop.set()
        self._rewatch.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- periodic: registrations and roots ---------------------------------------------------------
    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval)
                return
            except TimeoutError:
                pass
            try:
                changed = await loop.run_in_executor(None, self.models.sync_registrations)
                changed |= await loop.run_in_executor(None, self.check_roots)
                if changed:
                    self._rewatch.set()
                if self.settings.watch_enabled:
                    await self._catch_up()
                if time.monotonic() - self._last_sweep >= SWEEP_INTERVAL:
                    self._last_sweep = time.monotonic()
                    await loop.run_in_executor(None, self.models.sweep_cache)
            except Exception:  # keep watching whatever one tick hit
                log.exception("watch tick failed")

    def check_roots(self) -> bool:
        """Re-read models whose root appeared, vanished or changed identity. True if any did."""
        changed = False
        directories = self.models.directories()
        for name, (path, broken) in directories.items():
            ident = _identity(path)
            if name not in self._identities:  # just registered (and just loaded)
                self._identities[name] = ident
                changed = True
                continue
            if ident != self._identities.get(name) or (ident is None and not broken) or (ident and broken):
                self._identities[name] = ident
                log.info("model %s: directory %s %s, re-reading", name, path, "is back" if ident else "is gone")
                self.models.reread(name)
                changed = True
        for name in list(self._identities):
            if name not in directories:
                self._identities.pop(name)
        return changed

    def queue_length(self) -> int:
        """Changed groups waiting for their debounce."""
        return len(self._pending)

    def models_changed(self) -> None:
        """Called (from any thread) after a registration or removal: rebuild the watch set now."""
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._rewatch.set)

    async def _catch_up(self) -> None:
        """Queue groups whose files changed without an event reaching us (a restart of the watch,
        a file system that drops events). Stat-only: cheap even for large directories."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        for name in list(self.models.directories()):
            if self.models.following(name):  # none of its groups is installed yet: all would look new,
                continue                     # and be parsed again once it is (a look after it finds changes)
            for key in await loop.run_in_executor(None, self.models.changed_groups, name):
                self._pending.setdefault((name, key), now)

    # -- file events -------------------------------------------------------------------------------
    def _targets(self) -> tuple[dict[str, str], list[str]]:
        """{directory as events name it: model} and the paths to watch (roots and their parents)."""
        dirs: dict[str, str] = {}
        paths: set[str] = set()
        for name, (path, _) in self.models.directories().items():
            for form in {path, os.path.realpath(path)}:
                dirs[form] = name
            if os.path.isdir(path):
                paths.add(path)
            parent = os.path.dirname(path.rstrip("/")) or "/"
            if os.path.isdir(parent):
                paths.add(parent)
        return dirs, sorted(paths)

    async def _watch_loop(self) -> None:
        from watchfiles import awatch

        while not self._stop.is_set():
            self._rewatch.clear()
            dirs, paths = self._targets()
            if not paths:
                await self._rewatch.wait()
                continue
            polling = self.settings.watch_polling or any(filesystem_type(p) in NETWORK_FS for p in paths)
            # changes made while the watch was being (re)built have no event: look for them once it runs
            asyncio.get_running_loop().call_later(0.2, lambda: asyncio.ensure_future(self._catch_up()))
            try:
                def relevant(_change, path: str, dirs: dict[str, str] = dirs) -> bool:
                    return event_target(path, dirs) is not None  # unrelated events never wake us (or watchfiles' log)

                async for changes in awatch(*paths, watch_filter=relevant, recursive=False, debounce=50, step=STEP_MS,
                                            stop_event=self._rewatch, force_polling=polling,
                                            poll_delay_ms=int(self.interval * 1000),
                                            yield_on_timeout=False, ignore_permission_denied=True):
                    self._on_changes(changes, dirs)
            except FileNotFoundError:  # a root vanished between listing and watching
                await asyncio.sleep(min(self.interval, 1.0))
            except Exception:
                log.exception("file watcher failed; restarting it")
                await asyncio.sleep(min(self.interval, 1.0))

    def _on_changes(self, changes, dirs: dict[str, str]) -> None:
        # watchfiles yields once no change came for STEP_MS: the files have been quiet that long already
        now = time.monotonic() - STEP_MS / 1000
        for _change, path in changes:
            target = event_target(path, dirs)
            if target is None:
                continue
            if target[1] == "*":  # a root itself was added/deleted under its parent
                self._rewatch.set()
            self._pending[target] = now

    async def _debounce_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            # until the first pending group is due (a change seen meanwhile is due later), at most 0.1 s
            first = min(self._pending.values(), default=math.inf) + self.debounce
            await asyncio.sleep(min(max(first - time.monotonic(), 0.005), 0.1))
            now = time.monotonic()
            due = [k for k, t in self._pending.items() if now - t >= self.debounce]
            if not due:
                continue
            by_model: dict[str, set[str]] = {}
            for key in due:
                self._pending.pop(key, None)
                by_model.setdefault(key[0], set()).add(key[1])
            for name, keys in by_model.items():
                try:
                    if "*" in keys:
                        await loop.run_in_executor(None, self._full_reload, name)
                    else:
                        await loop.run_in_executor(None, self.models.refresh_groups, name, keys)
                        self.parse_count += len(keys)
                except Exception:
                    log.exception("refresh of %s failed", name)

    def _full_reload(self, name: str) -> None:
        path = self.models.directories().get(name, (None, False))[0]
        if path is not None:
            self._identities[name] = _identity(path)
            self.parse_count += self.models.reread(name)
