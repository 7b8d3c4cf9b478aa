"""The rules of registering a model directory, shared by `POST /api/models` and the CLI `register`:
a valid name, a readable directory with at least one group, and no symbol in several groups."""
from __future__ import annotations

import os
import re

from model_manager.artifacts import DirectorySnapshot, load_directory
from model_manager.conversion import ConversionCache
from model_manager.errors import ConflictError, DuplicateSymbolError, PathError, ValidationError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError(f"model name {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


def normalize_path(path: str) -> str:
    """Absolute, but symlinks kept: `current -> v3` must follow the link when it moves."""
    if not isinstance(path, str) or not path.strip():
        raise PathError("path is empty: give the model directory's absolute path")
    if "\x00" in path:
        raise PathError("path contains a NUL byte")
    absolute = os.path.abspath(os.path.expanduser(path.strip()))
    try:
        absolute.encode("utf-8")  # bytes that are not UTF-8 arrive as lone surrogates
    except UnicodeEncodeError:
        shown = absolute.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise PathError(f"path {shown!r} is not valid UTF-8: rename the directory, or register a symlink "
                        "with a UTF-8 name that points to it") from None
    return absolute


def validate_registration(store, name: str, path: str, *, max_bytes: int, cache: ConversionCache | None = None,
                          executor=None, prepare=None) -> tuple[str, DirectorySnapshot | None]:
    """The rules of `POST /api/models`, shared by the CLI. Returns (normalized path, snapshot); the
    snapshot is None when exactly this name+path is already registered."""
    check_name(name)
    abspath = normalize_path(path)
    existing = store.get_model(name)
    if existing is not None:
        if existing.path == abspath:
            return abspath, None
        raise ConflictError(f"model name {name!r} is already registered for {existing.path}: choose another name or remove it first")
    snap = load_directory(abspath, cache=cache, max_bytes=max_bytes, executor=executor, prepare=prepare)
    if not snap.groups:
        raise ValidationError(f"{abspath} has no model groups (expected files like SYMBOL_RETURN_factors.txt and SYMBOL_RETURN_model.json)")
    dupes = snap.duplicate_symbols()
    if dupes:
        raise DuplicateSymbolError(dupes)
    return abspath, snap
