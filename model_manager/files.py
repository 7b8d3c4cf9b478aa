"""Careful file I/O: atomic writes for everything we produce, guarded reads for everything we parse.

Artifacts come from other people's training jobs and shared drives: a path named like an artifact can
be a FIFO that would block a read forever, a device, a symlink out of the directory, or a file far
larger than any model. `read_artifact` refuses all of those with an `ArtifactError` that says why.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from model_manager.errors import ArtifactError

_umask: int | None = None


def _file_mode() -> int:
    """0o666 less the process umask, read once (os.umask can only be read by setting it, which is
    not safe to do while other threads create files)."""
    global _umask
    if _umask is None:
        current = os.umask(0o022)
        os.umask(current)
        _umask = current
    return 0o666 & ~_umask


def atomic_write(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` via a temp file in the same directory and a rename: readers see the
    old file or the new one, never half of either. `durable=False` skips the fsync, for cache
    entries that are checked against their hash when read (a torn write is only a miss)."""
    target = Path(path)
    mode = _file_mode()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def read_artifact(path: Path, *, root: Path | None = None, max_bytes: int) -> bytes:
    """Read an artifact file whole, refusing what is not a plain, bounded file inside `root`.

    `root` is the resolved model directory: a symlinked directory is fine (`current -> v3`), but an
    artifact whose link leads outside it is refused.
    """
    name = path.name
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        try:
            target = os.readlink(path)
        except OSError:  # not a link (or gone)
            target = None
        if target is not None:
            raise ArtifactError(f"{name} is a symlink to {target!r}, which does not exist; fix or remove the link",
                                code="broken_symlink") from None
        raise ArtifactError(f"{name} disappeared while it was being read", code="missing_file") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop, on older Pythons
        why = "it is a symlink loop" if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP \
            else (getattr(exc, "strerror", None) or type(exc).__name__)
        raise ArtifactError(f"{name} cannot be resolved: {why}", code="unreadable") from None
    if root is not None and not _within(real, root):
        raise ArtifactError(f"{name} is a symlink that leads outside the model directory; copy the file in instead", code="outside_root")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:
        raise ArtifactError(f"{name} is not readable by this user (permission denied)", code="unreadable") from None
    except OSError as exc:
        raise ArtifactError(f"{name} cannot be opened: {exc.strerror or exc}", code="unreadable") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{name} is not a regular file (a FIFO, device or directory); replace it with a file", code="not_a_file")
        if st.st_size > max_bytes:
            raise ArtifactError(
                f"{name} is {st.st_size / 2**20:.1f} MiB, above the {max_bytes / 2**20:.0f} MiB limit "
                "(MODEL_MANAGER_MAX_ARTIFACT_MB)", code="too_large")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:  # grew while we read
                raise ArtifactError(f"{name} grew above the {max_bytes / 2**20:.0f} MiB limit while being read", code="too_large")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise ArtifactError(f"{name} could not be read: {exc.strerror or exc}", code="unreadable") from None
    finally:
        os.close(fd)
