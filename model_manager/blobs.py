"""Content-addressed payload bytes in the data dir: `versions/ab/<sha256>.gz`, named by the sha256 of
the gzip bytes they hold.

A blob is written atomically (temp file, rename) and made durable (fsync of the file and of its
directory) before any record that refers to it is committed, and checked against its name whenever it
is read: a damaged blob is a `DamagedDataError`, never bytes served silently. Identical bytes are
stored once. One read is not hashed again: the first, by the process that wrote the blob, of the
file it wrote, untouched since (the same inode, size and mtime). Those bytes were hashed as they were
written, and are read back from the page cache moments later; a registration of 5,000 groups spent
0.3 s of its answer hashing its own 160 MB a second time. The writer can hand that knowledge to the
other workers of its server, which read the same blobs next (`fresh`, `trust`, and peers.py): the
other worker that installs a registration of 5,000 groups hashed them all while the answer waited.

A registration writes thousands of blobs before it records any of them. Those are written with
`durable=False` and made durable together by `make_durable` just before their rows are committed:
fsyncs issued at once share the filesystem journal's commits, where one after each write made the
registering thread wait for a commit per blob. A blob whose fsync fails is deleted (after a failed
writeback Linux reports the error once and a second fsync succeeds, so it is never tried again): its
row is not written, or the bytes are built and written again. A durable `put` that finds the blob on
disk already syncs it too: another process may have written it without syncing it yet.
"""
from __future__ import annotations

import contextlib
import errno
import mmap
import os
import re
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from model_manager.conversion import sha256
from model_manager.errors import DamagedDataError
from model_manager.files import atomic_write, private_dir

ORPHAN_GRACE_SECONDS = 600  # a blob written moments ago may belong to a record about to be committed
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
SYNC_THREADS = 16  # fsyncs in flight at once in `make_durable`
FRESH_MAX = 100_000  # blobs written and not read yet that `get` remembers (see the module docstring)


class BlobStore:
    """The blob directory of one data dir."""

    def __init__(self, root: Path) -> None:
        self.root = private_dir(root)
        self._made: set[str] = set()
        self._unsynced: dict[str, int] = {}  # digest -> puts(durable=False) `make_durable` has not synced yet
        self._fresh: dict[str, tuple[int, int, int]] = {}  # digest -> `_identity` of a file written here, not read yet
        self._lock = threading.Lock()

    def path(self, digest: str) -> Path:
        if _HEX_DIGEST.fullmatch(digest) is None:
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return self.root / digest[:2] / f"{digest}.gz"

    def put(self, data: bytes, *, durable: bool = True) -> str:
        """Store `data` (0600) and return its sha256. Existing identical bytes are kept. With
        `durable=False` the blob must go through `make_durable` before a row may name it (even when it
        was on disk already: another process may have written it so and died before syncing it)."""
        digest = sha256(data)
        target = self.path(digest)
        if not durable:
            with self._lock:  # (counted: a `make_durable` running meanwhile must not take this one as synced)
                self._unsynced[digest] = self._unsynced.get(digest, 0) + 1
        if self._intact(target, digest):
            with contextlib.suppress(OSError):  # stored again now: not an orphan the sweep may take yet
                os.utime(target)
            if not durable:
                return digest
            # (written by a `put(durable=False)`, here or in another process, and not synced yet?)
            if _synced(target):
                _fsync_dir(target.parent, strict=True)
                return digest
            with contextlib.suppress(OSError):  # its fsync failed: it is written again, below
                target.unlink()
        if target.parent.name not in self._made:  # 256 subdirectories at most: made once each
            target.parent.mkdir(exist_ok=True, mode=0o700)
            self._made.add(target.parent.name)
        try:
            atomic_write(target, data, durable=durable)
        except FileNotFoundError:  # the subdirectory was removed behind our back
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(target, data, durable=durable)
        os.chmod(target, 0o600)  # payloads are as private as the db (a brief 0644 window holds no secret)
        if durable:
            _fsync_dir(target.parent)
        with contextlib.suppress(OSError):
            st = os.stat(target)
            with self._lock:
                if len(self._fresh) >= FRESH_MAX:  # (blobs never read: a version that lost a race)
                    self._fresh.clear()
                self._fresh[digest] = _identity(st)
        return digest

    def make_durable(self, digests: Iterable[str]) -> set[str]:
        """fsync the blobs among `digests` that were `put(durable=False)` and their directories, all
        at once (a blob already durable costs nothing). Returns the digests that could not be synced:
        their files are deleted (see the module docstring). A blob that is gone is left to the caller,
        which checks that it exists before naming it."""
        with self._lock:
            due = {d: self._unsynced[d] for d in dict.fromkeys(digests) if d in self._unsynced}
        if not due:
            return set()
        paths = {d: self.path(d) for d in due}
        if len(paths) == 1:
            failed = {d for d, p in paths.items() if not _synced(p)}
        else:
            with ThreadPoolExecutor(min(SYNC_THREADS, len(paths)), thread_name_prefix="blob-sync") as pool:
                failed = {d for d, ok in zip(paths, pool.map(_synced, paths.values())) if not ok}
        for directory in {p.parent for p in paths.values()}:
            try:
                _fsync_dir(directory, strict=True)
            except OSError:
                failed |= {d for d, p in paths.items() if p.parent == directory}
        for digest in failed:
            with contextlib.suppress(OSError):
                paths[digest].unlink()
        with self._lock:
            for digest, puts in due.items():
                if digest in failed or self._unsynced.get(digest) == puts:  # (not put again meanwhile)
                    self._unsynced.pop(digest, None)
        return failed

    def ensure(self, data: bytes, digest: str) -> None:
        """Make sure the blob `digest` that `put` has just checked or written is still on disk (rewrite
        it from `data` if a sweep took it). Only its presence is looked at: the bytes are checked
        whenever they are read."""
        if not self.exists(digest):
            self.put(data)

    def get(self, digest: str, what: str = "payload", *, mapped: bool = False) -> bytes | memoryview:
        """The bytes of blob `digest`, checked against it: DamagedDataError when the file is missing,
        unreadable or no longer matches its hash. `mapped`: the file mapped into memory (read-only)
        instead of copied: the page cache then holds the bytes once for every worker process that
        serves them. A blob file is never changed in place (a new one is a new file; a sweep unlinks
        it, and a mapping outlives that), so mapped bytes never change under a reader."""
        with self._lock:
            fresh = self._fresh.pop(digest, None)
        try:
            data, identity = _read(self.path(digest), mapped)
        except OSError as exc:
            raise DamagedDataError(f"the stored bytes of {what} cannot be read from the data dir "
                                   f"({self.path(digest).name}: {exc.strerror or exc}); pin another version") from None
        if (fresh is None or fresh != identity) and sha256(data) != digest:
            raise DamagedDataError(f"the stored bytes of {what} are damaged (they no longer match their sha256 "
                                   f"{digest[:12]}…) and are not served; pin another version")
        return data

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def fresh(self, digests: Iterable[str]) -> dict[str, tuple[int, int, int]]:
        """The identities of the blobs among `digests` that this process wrote and has not read yet,
        for another process of the server that is about to read them (`trust`)."""
        with self._lock:
            return {d: self._fresh[d] for d in digests if d in self._fresh}

    def trust(self, identities: dict) -> int:
        """Let the first read of these blobs skip the hash, as their writer's would: `identities` are
        `fresh` of the process that wrote and hashed them moments ago (a worker that has just registered
        a model, handing its blobs to the others). As for the writer, only while each file is still the
        one written (inode, size, mtime). Entries that are not a digest and three integers are ignored.
        Returns how many were taken."""
        taken = 0
        with self._lock:
            for digest, identity in identities.items():
                if len(self._fresh) >= FRESH_MAX:
                    break
                if (isinstance(digest, str) and _HEX_DIGEST.fullmatch(digest) and isinstance(identity, list | tuple)
                        and len(identity) == 3 and all(type(part) is int for part in identity)):
                    self._fresh.setdefault(digest, (identity[0], identity[1], identity[2]))
                    taken += 1
        return taken

    def delete(self, digest: str) -> bool:
        with self._lock:  # (a swept orphan: nothing will sync it)
            self._unsynced.pop(digest, None)
        try:
            self.path(digest).unlink()
            return True
        except FileNotFoundError:
            return False

    def all_digests(self) -> dict[str, float]:
        """{digest: mtime} of every blob on disk; stray temp files older than the grace period are removed."""
        out: dict[str, float] = {}
        now = time.time()
        for sub in self.root.iterdir() if self.root.is_dir() else ():
            if not sub.is_dir():
                continue
            for entry in sub.iterdir():
                try:
                    mtime = entry.stat().st_mtime
                except OSError:
                    continue
                if entry.name.endswith(".tmp"):  # left by a process killed mid-write
                    if now - mtime > ORPHAN_GRACE_SECONDS:
                        entry.unlink(missing_ok=True)
                elif entry.name.endswith(".gz"):
                    out[entry.name[:-3]] = mtime
        return out

    @staticmethod
    def _intact(path: Path, digest: str) -> bool:
        try:
            return sha256(path.read_bytes()) == digest
        except OSError:
            return False


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns


def _read(path: Path, mapped: bool) -> tuple[bytes | memoryview, tuple[int, int, int]]:
    """A file's bytes, copied or mapped, and the `_identity` of the file they came from."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        identity = _identity(st)
        if not mapped or st.st_size == 0:
            return fh.read(), identity
        try:
            return memoryview(mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)), identity
        except (OSError, ValueError):  # no mapping left (vm.max_map_count): a copy will do
            return fh.read(), identity


def _fsync_file(path: Path) -> None:
    """fsync a file (OSError when it fails; a file that is not there is left to the caller)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # swept or never written: the caller's existence check reports it
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _synced(path: Path) -> bool:
    try:
        _fsync_file(path)
        return True
    except OSError:
        return False


def _fsync_dir(directory: Path, *, strict: bool = False) -> None:
    """Make a rename in `directory` durable (a power cut must not lose a blob a committed row names).
    `strict`: a failure raises OSError (a filesystem that cannot fsync a directory is no failure)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if strict and exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
