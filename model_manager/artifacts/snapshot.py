"""What a parse produces: issues, one group's snapshot and a whole directory's."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_manager.artifacts.packed import Packed
from model_manager.jsonsafe import scrub

STATUSES = ("ok", "warning", "error")


@dataclass(frozen=True)
class Issue:
    severity: str  # "error" | "warning"
    code: str
    message: str
    file: str | None = None

    def __post_init__(self) -> None:
        # messages quote file content and exception text, which may hold unencodable characters
        object.__setattr__(self, "message", scrub(self.message))

    def to_dict(self) -> dict:
        return {"severity": self.severity, "code": self.code, "message": self.message, "file": self.file}


@dataclass
class GroupSnapshot:
    """One group as parsed at one moment. `model_json` may be None when a cache holds it.

    `dim` is the model's feature count, None when no model file could be read. `model_file` is the
    file the model was read from (see the precedence rule in `model_manager.artifacts`).
    `importance` is {importance type: {factor: value}} of a servable group's model (SPEC §11), None
    for a group with errors (its dimension→factor mapping cannot be trusted).

    A server holds one snapshot per group in every worker, thousands at a desk, so the fields read
    only now and then (`files`, `ic`, `info`, `importance`, `model_summary`, `signature`) are kept
    packed and each read returns a fresh copy (see `packed.py`: read a field once into a local when
    it is used many times), and factor names, which thousands of groups share, are interned.
    """

    group_key: str
    symbol: str
    return_name: str
    files: dict[str, str] = Packed()  # type: ignore[assignment]  # required
    factors: list[str] = field(default_factory=list)
    ic: dict | None = Packed(None)  # type: ignore[assignment]
    info: dict | None = Packed(None)  # type: ignore[assignment]
    importance: dict[str, dict[str, float]] | None = Packed(None)  # type: ignore[assignment]
    dim: int | None = None
    model_source: str | None = None
    model_file: str | None = None
    model_sha256: str | None = None
    model_json: bytes | None = None
    model_summary: dict | None = Packed(None)  # type: ignore[assignment]  # `modelsummary.model_summary` of the served JSON
    updated_at: str | None = None
    signature: tuple = Packed(())  # type: ignore[assignment]
    issues: list[Issue] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.factors = [sys.intern(f) if type(f) is str else f for f in self.factors]
        for name in ("return_name", "model_source"):  # a handful of distinct values across a desk
            value = getattr(self, name)
            if type(value) is str:
                setattr(self, name, sys.intern(value))

    @property
    def status(self) -> str:
        if any(i.severity == "error" for i in self.issues):
            return "error"
        return "warning" if self.issues else "ok"

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    def kendall_by_factor(self) -> dict[str, Any]:
        return self.ic_by_factor("kendall_tau")

    def ic_by_factor(self, metric: str) -> dict[str, Any]:
        """{factor: value} of one ic.csv column (the first row of a factor listed twice); {} without it."""
        return ic_column(self.ic, metric)

    def summary(self) -> dict:
        """The `symbol` object of SPEC §2."""
        return {
            "symbol": self.symbol, "group_key": self.group_key, "return_name": self.return_name,
            "dim": self.dim, "factor_count": len(self.factors), "model_source": self.model_source,
            "status": self.status, "issues": [i.to_dict() for i in self.issues],
        }

    def detail(self, model_name: str) -> dict:
        """The symbol `detail` object of SPEC §2."""
        return {
            "model_name": model_name, "symbol": self.symbol, "group_key": self.group_key,
            "return_name": self.return_name, "dim": self.dim, "factors": list(self.factors),
            "ic": self.ic, "importance": self.importance, "info": self.info, "files": self.files, "status": self.status,
            "issues": [i.to_dict() for i in self.issues], "updated_at": self.updated_at,
        }


def ic_column(ic: dict | None, metric: str) -> dict[str, Any]:
    """{factor: value} of one column of a parsed IC table (the first row of a factor listed twice)."""
    if not ic or metric not in ic["columns"][1:]:
        return {}
    col = ic["columns"].index(metric)
    out: dict[str, Any] = {}
    for row in ic["rows"]:
        out.setdefault(row[0], row[col])
    return out


@dataclass
class DirectorySnapshot:
    """Every group of a directory, the files that belong to none, and directory-level problems.

    `ignored` lists the entries that are not part of any group, sorted by name, each as
    `{"file": name, "hint": text or None}` (a subdirectory's name ends with "/"); the hint says what
    the file was probably meant to be (`X_factor.txt` → `X_factors.txt`). It is JSON-ready as is.

    `problems` are errors of the directory as a whole (today: a symbol in more than one group, which
    the server refuses). A summary counts them beside the groups: see `counts` and `status`.
    """

    path: Path
    groups: dict[str, GroupSnapshot]
    ignored: list[dict] = field(default_factory=list)

    def duplicate_symbols(self) -> dict[str, list[str]]:
        """Symbols that appear in more than one group → their group keys (sorted)."""
        seen: dict[str, list[str]] = {}
        for key, group in self.groups.items():
            seen.setdefault(group.symbol, []).append(key)
        return {sym: sorted(keys) for sym, keys in seen.items() if len(keys) > 1}

    def by_symbol(self, symbol: str) -> list[GroupSnapshot]:
        return [g for g in self.groups.values() if g.symbol == symbol]

    @property
    def problems(self) -> list[Issue]:
        """Directory-level errors: each makes the whole directory unservable (registration is refused)."""
        return [Issue("error", "duplicate_symbol",
                      f"symbol {symbol} is in several groups ({', '.join(keys)}): the server refuses this directory; "
                      "remove or rename all but one of them", None)
                for symbol, keys in sorted(self.duplicate_symbols().items())]

    def counts(self) -> dict[str, int]:
        """Groups per status, plus the directory-level `problems` (for a summary line)."""
        out = {status: 0 for status in STATUSES}
        for group in self.groups.values():
            out[group.status] += 1
        out["problems"] = len(self.problems)
        return out

    @property
    def status(self) -> str:
        """"error" when the server would refuse the directory or a group has an error, else the worst
        group status ("ok" for a directory with no groups and no problems)."""
        if self.problems:
            return "error"
        worst = {g.status for g in self.groups.values()}
        return next((s for s in ("error", "warning") if s in worst), "ok")
