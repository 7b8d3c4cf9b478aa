"""What a registration is made of: a valid model name and a normalized directory path. The rules of
registering itself are `service.ModelManager.register`."""
from __future__ import annotations

import os
import re

from model_manager.errors import PathError, ValidationError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str, what: str = "model name") -> str:
    """`name` when it is a valid model (or API key) name, else ValidationError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError(f"{what} {name!r} is not valid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
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


def check_client_path(path: str) -> str:
    """A path sent to the server over the API: absolute, since `~` and relative paths would mean the
    server's home and working directory — which the client cannot know and must not learn."""
    stripped = path.strip() if isinstance(path, str) else path
    if isinstance(stripped, str) and stripped and not os.path.isabs(stripped):
        raise PathError(f"path {path!r} is not absolute: give the model directory's full path, starting with / "
                        "(the server does not expand ~ or resolve relative paths)")
    return path
