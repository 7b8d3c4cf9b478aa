"""Listing a model directory: which files form which group, and what every other file probably is."""
from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from model_manager.errors import PathError

# The model kinds in precedence order: the first one present is served (see `model_manager.artifacts`).
MODEL_KINDS = ("model.json", "model.ubj", "model.pkl")
KINDS = ("factors.txt", "ic.csv", "info.pkl", *MODEL_KINDS)
MODEL_SOURCES = {"model.json": "json", "model.ubj": "ubj", "model.pkl": "pkl"}
_TYPO_CUTOFF = 0.82  # difflib ratio from which `X_factor.txt` is taken for `X_factors.txt` (not `X_topic.csv` for `X_ic.csv`)
_BACKUP_SUFFIXES = (".bak", ".old", ".orig", ".tmp", ".swp", "~")
_NOT_UTF8 = "\ufffd"


def split_artifact_name(name: str) -> tuple[str, str] | None:
    """`SOLUSDT_mid_chg_1m_ic.csv` → ("SOLUSDT_mid_chg_1m", "ic.csv"); None for unrelated files."""
    if name.startswith("."):  # editor swap files, rsync temp files, macOS resource forks
        return None
    for kind in KINDS:
        suffix = "_" + kind
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], kind
    return None


def check_directory(path: str | os.PathLike) -> Path:
    """The resolved directory, or a PathError that says what is wrong with it (naming the path as
    given, never where a symlink leads)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise PathError(f"{p} does not exist") from None
    except PermissionError:
        raise PathError(f"{p} cannot be reached: a directory on the way is not searchable by the user model-manager "
                        "runs as; give that user execute (x) permission on each parent directory") from None
    except OSError as exc:
        raise PathError(f"{p} cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PathError(f"{p} is not a directory")
    if not os.access(p, os.R_OK | os.X_OK):
        raise PathError(f"{p} is not readable by the user model-manager runs as: give that user read and execute "
                        "(r-x) permission on it")
    return p.resolve()


def scan_directory(path: str | os.PathLike) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Group the artifact files of a directory: {group_key: {kind: filename}}, plus the sorted names
    of every other entry (a subdirectory's name ends with "/"; a name that is not UTF-8 is shown with
    U+FFFD in place of its bad bytes). `ignored_entries` says what those are."""
    root = check_directory(path)
    groups: dict[str, dict[str, str]] = {}
    ignored: list[str] = []
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        raise PathError(f"{Path(path)} cannot be listed: {exc.strerror or exc}") from None
    for entry in entries:
        try:
            entry.name.encode("utf-8")
        except UnicodeEncodeError:
            ignored.append(entry.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
            continue
        parts = split_artifact_name(entry.name)
        if parts is None:
            ignored.append(entry.name + ("/" if _is_dir(entry) else ""))
            continue
        key, kind = parts
        groups.setdefault(key, {})[kind] = entry.name
    return dict(sorted(groups.items())), sorted(ignored)


def scan_groups(root: Path, keys: Iterable[str]) -> dict[str, dict[str, str]]:
    """What `scan_directory` would say of these groups only ({group_key: {kind: filename}}, a group
    with no file left out), found by name instead of by listing the directory: a few stats a group
    where a listing of 20,000 files takes tens of milliseconds. (No kind's suffix ends another's, so
    `KEY_kind` is that group's file whatever the key.)"""
    base, groups = os.fspath(root), {}
    for key in sorted(set(keys)):
        if not key or key.startswith("."):
            continue
        files = {kind: f"{key}_{kind}" for kind in KINDS if os.path.lexists(f"{base}/{key}_{kind}")}
        if files:
            groups[key] = files
    return groups


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def file_signature(root: Path, files: dict[str, str]) -> tuple:
    """(kind, size, mtime_ns, inode) per file: changes whenever a file is rewritten."""
    sig, base = [], os.fspath(root)
    for kind, name in sorted(files.items()):
        try:
            st = os.stat(f"{base}/{name}")  # (a name, never a path; a Path join per file was a third of this)
            sig.append((kind, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            sig.append((kind, None, None, None))
    return tuple(sig)


# -- files that belong to no group ---------------------------------------------------------------
def ignored_entries(names: list[str], present: set[str] | frozenset[str] = frozenset()) -> list[dict]:
    """`[{"file": name, "hint": text or None}]` for the names `scan_directory` did not group.

    `present` holds the names that are read (the group files), so a near-miss whose intended name
    already exists says so instead of suggesting a rename onto it."""
    return [{"file": name, "hint": ignored_hint(name, present)} for name in names]


def ignored_hint(name: str, present: set[str] | frozenset[str] = frozenset()) -> str | None:
    """What a file that is not read was probably meant to be, or None when it looks unrelated."""
    if name.endswith("/"):
        return "a subdirectory: only files directly in the model directory are read"
    if _NOT_UTF8 in name:
        return "its name is not valid UTF-8, so it is not read; rename it"
    if name.startswith("."):
        return None
    meant, hint = _near_miss(name)
    if meant is not None:
        if meant in present:
            return f"not read: {meant} is the file that is read"
        return f"did you mean {meant}? (not read under this name)"
    return hint


def _near_miss(name: str) -> tuple[str | None, str | None]:
    """(the artifact name meant, or None; a hint when no single name is meant)."""
    lower = name.lower()
    if lower.endswith(_BACKUP_SUFFIXES):
        return None, "a backup or temporary copy: not read"
    for kind in KINDS:
        if lower.endswith(kind) and len(name) > len(kind) + 1:
            sep = name[-len(kind) - 1]
            if sep == "_":  # only the case differs: X_Factors.txt, X_model.JSON
                return name[: -len(kind)] + kind, None
            if sep in "-. ":  # X-factors.txt, X.ic.csv
                return name[: -len(kind) - 1] + "_" + kind, None
    if lower in KINDS or lower.lstrip("_") in KINDS:
        kind = lower.lstrip("_")
        return None, f"no group key: name it {{SYMBOL}}_{{RETURN}}_{kind}, e.g. SOLUSDT_mid_chg_1m_{kind}"
    stem, sep, tail = name.rpartition("_")
    if not sep or not stem:
        return None, None
    base, _, ext = tail.lower().partition(".")
    wrong_format = _wrong_format(stem, base, ext)
    if wrong_format is not None:
        return wrong_format
    return _typo(name), None


def _wrong_format(stem: str, base: str, ext: str) -> tuple[str | None, str | None] | None:
    """A known kind with an extension that is not read (`X_model.bin`, `X_info.pickle`)."""
    if base == "model" and ext not in ("json", "ubj", "pkl"):
        if ext in ("pickle", "pck"):
            return f"{stem}_model.pkl", None
        return None, (f"not a supported model format: save the model as {stem}_model.json or {stem}_model.ubj "
                      f"(XGBoost's save_model) or pickle it as {stem}_model.pkl")
    if base == "info" and ext != "pkl":
        if ext in ("pickle", "pck"):
            return f"{stem}_info.pkl", None
        return None, f"training metadata is read only from {stem}_info.pkl (a pickled dict)"
    if base == "factors" and ext != "txt":
        return None, f"the factor list is read only from {stem}_factors.txt (plain text, one factor per line)"
    if base == "ic" and ext != "csv":
        return None, f"the IC table is read only from {stem}_ic.csv (a CSV table with a factor column)"
    return None


def _typo(name: str) -> str | None:
    """`X_factor.txt` → `X_factors.txt`: the best close match of any `_`-separated tail to a kind."""
    best: tuple[float, str] | None = None
    for i, char in enumerate(name):
        if char != "_" or i == 0:
            continue
        tail = name[i + 1:].lower()
        for kind in KINDS:
            ratio = difflib.SequenceMatcher(None, tail, kind).ratio()
            if ratio >= _TYPO_CUTOFF and (best is None or ratio >= best[0]):
                best = (ratio, name[:i + 1] + kind)
    return best[1] if best else None


def near_misses(root: Path, group_key: str, present: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """[(file, hint)] for the files of the directory that look meant for `group_key` but are not read.

    Only called for a group that lacks a required file: it lists the directory once."""
    prefix = group_key.lower()
    found: list[tuple[str, str]] = []
    try:
        names = sorted(e.name for e in os.scandir(root) if e.name.lower().startswith(prefix))
    except OSError:
        return []
    for name in names:
        if split_artifact_name(name) is None:
            hint = ignored_hint(name, present)
            if hint:
                found.append((name, hint))
    return found
