"""Careful file I/O: atomic writes for everything we produce, guarded reads for everything we parse.

Artifacts come from other people's training jobs and shared drives: a path named like an artifact can
be a FIFO that would block a read forever, a device, a symlink out of the directory, a file far larger
than any model, or a name that someone swaps for a symlink between our check and our read.
`read_artifact` refuses all of those with an `ArtifactError` that says why. It walks the path itself,
one `openat` per component with `O_NOFOLLOW`, following only the links that stay inside the model
directory, and reads only the file it checked (same device and inode).

Files we write under the data dir are private: `private_dir` makes a directory 0700, and
`atomic_write` gives a file 0600 when its directory is private (and the umask's mode elsewhere,
such as a `convert` output directory the user chose).
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections import deque
from pathlib import Path

from model_manager.errors import ArtifactError

_umask: int | None = None
_MIB = 1024 * 1024
# Text artifacts are parsed whole, in the server: a factor list or an IC table far above any real one
# is refused before it is read (a model file gets the general limit and is decoded in a child).
TEXT_LIMITS = {"_factors.txt": (1 * _MIB, "a factor list"), "_ic.csv": (16 * _MIB, "an IC table")}
_MAX_HOPS = 40  # symlinks followed for one artifact, as the kernel's own limit
_O_PATH = getattr(os, "O_PATH", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _file_mode() -> int:
    """0o666 less the process umask, read once (os.umask can only be read by setting it, which is
    not safe to do while other threads create files)."""
    global _umask
    if _umask is None:
        current = os.umask(0o022)
        os.umask(current)
        _umask = current
    return 0o666 & ~_umask


def private_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and missing parents) as a 0700 directory, or make an existing one 0700."""
    target = Path(path)
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(target.stat().st_mode) != 0o700:
        os.chmod(target, 0o700)
    return target


def atomic_write(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `path` via a temp file in the same directory and a rename: readers see the
    old file or the new one, never half of either. `durable=False` skips the fsync, for cache
    entries that are checked against their hash when read (a torn write is only a miss).
    In a directory closed to group and others the file is 0600; elsewhere it follows the umask."""
    target = Path(path)
    private = stat.S_IMODE(os.stat(target.parent).st_mode) & 0o077 == 0
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")  # 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        if not private:
            os.chmod(tmp, _file_mode())
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

    `root` is the resolved model directory: a symlinked directory is fine (`current -> v3`), and so is
    an artifact linked to another file inside it, but a link that leads outside it is refused, even if
    it appears between our check and our read. Without `root` (a file named on the command line) the
    path's links are resolved first, and the file they lead to is read the same careful way.
    `*_factors.txt` and `*_ic.csv` have their own, lower limits (TEXT_LIMITS).
    """
    path = Path(path)
    name = path.name
    limit, what = max_bytes, None
    for suffix, (cap, kind) in TEXT_LIMITS.items():
        if name.endswith(suffix) and cap < limit:
            limit, what = cap, kind
    if root is None or not _within(path, root):
        real = _resolve(path)
        if root is not None and not _within(real, root):
            raise ArtifactError(f"{name} is a symlink that leads outside the model directory; copy the file in instead",
                                code="outside_root")
        root, path = real.parent, real
    fd = _open_beneath(Path(root), path.relative_to(root).parts, name)
    try:
        return _read_bounded(fd, name, limit, what)
    except OSError as exc:
        raise ArtifactError(f"{name} could not be read: {exc.strerror or exc}", code="unreadable") from None
    finally:
        os.close(fd)


def _resolve(path: Path) -> Path:
    """`path` with every link resolved, or the ArtifactError that says why it cannot be."""
    name = path.name
    try:
        return path.resolve(strict=True)
    except FileNotFoundError:
        try:
            target = os.readlink(path)
        except OSError:  # not a link (or gone)
            target = None
        if target is not None:
            raise _broken_link(name, target) from None
        raise ArtifactError(f"{name} disappeared while it was being read", code="missing_file") from None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop, on older Pythons
        raise _unresolvable(name, exc) from None


def _broken_link(name: str, target: str) -> ArtifactError:
    return ArtifactError(f"{name} is a symlink to {target!r}, which does not exist; fix or remove the link",
                         code="broken_symlink")


def _unresolvable(name: str, exc: BaseException) -> ArtifactError:
    why = "it is a symlink loop" if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP \
        else (getattr(exc, "strerror", None) or type(exc).__name__)
    return ArtifactError(f"{name} cannot be resolved: {why}", code="unreadable")


def _open_beneath(root: Path, parts: tuple[str, ...], name: str) -> int:
    """Open `root/parts` for reading without ever leaving `root`: each component is opened relative
    to its directory with O_NOFOLLOW (O_PATH: nothing is really opened, so a device or a FIFO is
    only looked at); links are read and followed by hand while they stay inside `root`. The file is
    then opened for reading by name, again without following links, and must be the very inode
    that was checked: a swap in between is refused, never read."""
    try:
        top = os.open(root, (_O_PATH or os.O_RDONLY) | os.O_DIRECTORY | _CLOEXEC)
    except OSError as exc:
        raise _unresolvable(name, exc) from None
    dirs, todo, hops, first_link = [top], deque(parts), 0, None
    try:
        while todo:
            part = todo.popleft()
            if part in ("", "."):
                continue
            if part == "..":
                if len(dirs) == 1:
                    raise _outside(name)
                os.close(dirs.pop())
                continue
            here, last = dirs[-1], not todo
            try:
                fd = os.open(part, (_O_PATH or os.O_RDONLY | os.O_NONBLOCK) | _NOFOLLOW | _CLOEXEC, dir_fd=here)
            except FileNotFoundError:
                if first_link is not None:
                    raise _broken_link(name, first_link) from None
                raise ArtifactError(f"{name} disappeared while it was being read", code="missing_file") from None
            except OSError as exc:
                if exc.errno != errno.ELOOP or _O_PATH:  # without O_PATH, ELOOP means "a link": read it below
                    raise _cannot_open(name, exc) from None
                fd = None
            st = os.fstat(fd) if fd is not None else os.lstat(part, dir_fd=here)
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                target = _read_link(part, here, fd, name)
                if hops > _MAX_HOPS:
                    raise _unresolvable(name, OSError(errno.ELOOP, "loop"))
                first_link = target if first_link is None else first_link
                todo.extendleft(reversed(_link_parts(target, root, name, dirs)))
                continue
            if not last:
                if not stat.S_ISDIR(st.st_mode):
                    os.close(fd)
                    raise _unresolvable(name, OSError(errno.ENOTDIR, "a path component is not a directory"))
                dirs.append(fd)
                continue
            if fd is not None:
                os.close(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ArtifactError(f"{name} is not a regular file (a FIFO, device or directory); replace it with a file",
                                    code="not_a_file")
            return _open_checked(part, here, st, name)
        raise _unresolvable(name, OSError(errno.EISDIR, "it names the model directory itself"))
    finally:
        for fd in dirs:
            os.close(fd)


def _read_link(part: str, dir_fd: int, fd: int | None, name: str) -> str:
    """The target of the link just looked at: read through its own O_PATH descriptor (so it is that
    link, even if the name has been swapped since), which this closes."""
    try:
        return os.readlink("", dir_fd=fd) if fd is not None else os.readlink(part, dir_fd=dir_fd)
    except OSError:  # without O_PATH, the name stopped being a link since we looked
        raise _swapped(name) from None
    finally:
        if fd is not None:
            os.close(fd)


def _link_parts(target: str, root: Path, name: str, dirs: list[int]) -> list[str]:
    """The components to walk for a link's target. A relative target continues from the link's
    directory; an absolute one restarts at `root` when it leads into it, else it is refused."""
    if not os.path.isabs(target):
        return target.split("/")
    real = Path(os.path.realpath(target))
    if not _within(real, root):
        raise _outside(name)
    while len(dirs) > 1:
        os.close(dirs.pop())
    return list(real.relative_to(root).parts)


def _open_checked(part: str, dir_fd: int, checked: os.stat_result, name: str) -> int:
    try:
        # O_NONBLOCK: should a FIFO appear here after the check, opening it must not wait for a writer
        fd = os.open(part, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        raise ArtifactError(f"{name} disappeared while it was being read", code="missing_file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a symlink since the check
            raise _swapped(name) from None
        raise _cannot_open(name, exc) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (checked.st_dev, checked.st_ino):
        os.close(fd)
        raise _swapped(name)
    return fd


def _read_bounded(fd: int, name: str, limit: int, what: str | None) -> bytes:
    """The file's bytes, read in one piece where possible (one allocation of the final size: the
    server's memory goes back to the system once the bytes are dropped)."""
    size = os.fstat(fd).st_size
    if size > limit:
        raise _too_large(name, size, limit, what)
    chunks = [os.read(fd, size + 1)] if size else []
    total = len(chunks[0]) if chunks else 0
    while total <= limit and (chunk := os.read(fd, 1 << 20)):  # to the end: it may have grown
        chunks.append(chunk)
        total += len(chunk)
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(data) > limit:
        raise ArtifactError(f"{name} grew above the {limit / _MIB:.0f} MiB limit while being read", code="too_large")
    return data


def _too_large(name: str, size: int, limit: int, what: str | None) -> ArtifactError:
    why = f"the {limit / _MIB:.0f} MiB limit for {what}" if what else \
        f"the {limit / _MIB:.0f} MiB limit (MODEL_MANAGER_MAX_ARTIFACT_MB)"
    return ArtifactError(f"{name} is {size / _MIB:.1f} MiB, above {why}; it is not read", code="too_large")


def _outside(name: str) -> ArtifactError:
    return ArtifactError(f"{name} is a symlink that leads outside the model directory; copy the file in instead",
                         code="outside_root")


def _swapped(name: str) -> ArtifactError:
    return ArtifactError(f"{name} was replaced while it was being opened, so it was not read; "
                         "it is read again on the next change or refresh", code="unreadable")


def _cannot_open(name: str, exc: OSError) -> ArtifactError:
    if isinstance(exc, PermissionError):
        return ArtifactError(f"{name} is not readable by this user (permission denied)", code="unreadable")
    if exc.errno == errno.ELOOP:
        return _unresolvable(name, exc)
    return ArtifactError(f"{name} cannot be opened: {exc.strerror or exc}", code="unreadable")
