"""THE artifact module: scan a model directory into groups, parse every file tolerantly, validate,
and build the structures the CLI and the server show and serve.

A group is the set of files `{group_key}_{kind}` (SPEC §1). Parsing never raises for a bad file: each
problem becomes an `Issue` on the group, and errors block the model payload. Nothing here writes into
the model directory.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_manager.cache import CacheDir
from model_manager.clock import iso_from_timestamp
from model_manager.conversion import ModelInfo, sha256
from model_manager.errors import ArtifactError, PathError
from model_manager.files import read_artifact
from model_manager.isolation import check_info, check_model
from model_manager.jsonsafe import scrub

log = logging.getLogger(__name__)

KINDS = ("factors.txt", "ic.csv", "info.pkl", "model.pkl", "model.json")
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
FACTOR_COLUMN_NAMES = ("factor", "factor_name", "name")
MISSING_TOKENS = {"", "nan", "NaN", "NAN", "none", "None", "null", "NULL", "NA", "N/A", "n/a", "-", "inf", "-inf", "Inf", "-Inf"}


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
    """One group as parsed at one moment. `model_json` may be None when a cache holds it."""

    group_key: str
    symbol: str
    return_name: str
    files: dict[str, str]
    factors: list[str] = field(default_factory=list)
    ic: dict | None = None
    info: dict | None = None
    dim: int | None = None
    model_source: str | None = None
    model_sha256: str | None = None
    model_json: bytes | None = None
    updated_at: str | None = None
    signature: tuple = ()
    issues: list[Issue] = field(default_factory=list)

    @property
    def status(self) -> str:
        if any(i.severity == "error" for i in self.issues):
            return "error"
        return "warning" if self.issues else "ok"

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    def kendall_by_factor(self) -> dict[str, Any]:
        if not self.ic or "kendall_tau" not in self.ic["columns"]:
            return {}
        col = self.ic["columns"].index("kendall_tau")
        out: dict[str, Any] = {}
        for row in self.ic["rows"]:
            out.setdefault(row[0], row[col])
        return out

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
            "ic": self.ic, "info": self.info, "files": dict(self.files), "status": self.status,
            "issues": [i.to_dict() for i in self.issues], "updated_at": self.updated_at,
        }


@dataclass
class DirectorySnapshot:
    path: Path
    groups: dict[str, GroupSnapshot]
    ignored: list[str] = field(default_factory=list)

    def duplicate_symbols(self) -> dict[str, list[str]]:
        """Symbols that appear in more than one group → their group keys (sorted)."""
        seen: dict[str, list[str]] = {}
        for key, group in self.groups.items():
            seen.setdefault(group.symbol, []).append(key)
        return {sym: sorted(keys) for sym, keys in seen.items() if len(keys) > 1}

    def by_symbol(self, symbol: str) -> list[GroupSnapshot]:
        return [g for g in self.groups.values() if g.symbol == symbol]


# --------------------------------------------------------------------------------------------
# scanning
# --------------------------------------------------------------------------------------------
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
    """The resolved directory, or a PathError that says what is wrong with it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PathError(f"{p} does not exist")
    if not p.is_dir():
        raise PathError(f"{p} is not a directory")
    if not os.access(p, os.R_OK | os.X_OK):
        raise PathError(f"{p} is not readable by this user")
    return p.resolve()


def scan_directory(path: str | os.PathLike) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Group the artifact files of a directory: {group_key: {kind: filename}}, plus ignored names."""
    root = check_directory(path)
    groups: dict[str, dict[str, str]] = {}
    ignored: list[str] = []
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        raise PathError(f"{root} cannot be listed: {exc.strerror or exc}") from None
    for entry in entries:
        parts = split_artifact_name(entry.name)
        if parts is None:
            continue
        try:
            entry.name.encode("utf-8")
        except UnicodeEncodeError:
            ignored.append(entry.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
            continue
        key, kind = parts
        groups.setdefault(key, {})[kind] = entry.name
    return dict(sorted(groups.items())), ignored


def file_signature(root: Path, files: dict[str, str]) -> tuple:
    """(kind, size, mtime_ns, inode) per file: changes whenever a file is rewritten."""
    sig = []
    for kind, name in sorted(files.items()):
        try:
            st = os.stat(root / name)
            sig.append((kind, st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            sig.append((kind, None, None, None))
    return tuple(sig)


# --------------------------------------------------------------------------------------------
# parsing individual files
# --------------------------------------------------------------------------------------------
def _decode_text(data: bytes, name: str) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{name} is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8", code="encoding") from None
    if "\x00" in text:
        raise ArtifactError(f"{name} contains NUL bytes: it is binary or corrupt, not a text file", code="corrupt")
    return text


def parse_factors(data: bytes, name: str = "factors.txt") -> list[str]:
    """One factor per line; BOM, CRLF, surrounding whitespace and blank lines are tolerated."""
    text = _decode_text(data, name)
    factors = [line.strip() for line in text.splitlines()]
    factors = [f for f in factors if f]
    if not factors:
        raise ArtifactError(f"{name} lists no factors (one factor name per line expected)", code="empty_factors")
    return factors


def _cell_number(value: str) -> float | None:
    v = value.strip()
    if v in MISSING_TOKENS:
        return None
    number = float(v)  # ValueError for text
    return number if math.isfinite(number) else None


def parse_ic(data: bytes, name: str = "ic.csv") -> tuple[dict, list[str]]:
    """IC table → ({"columns": ["factor", metrics...], "rows": [[factor, numbers|None...]]}, notes).

    The factor column may be named factor / factor_name / name (any case) or be an unnamed first
    (pandas index) column; metric names are lower-cased so `Kendall_Tau` is `kendall_tau`.
    """
    import pandas as pd

    text = _decode_text(data, name)
    if not text.strip():
        raise ArtifactError(f"{name} is empty", code="empty_ic")
    try:
        long_rows: list[int] = []

        def truncate(fields: list[str]) -> list[str]:  # a row with more fields than the header
            long_rows.append(len(fields))
            return fields[:header_width]

        header_width = len(next(csv.reader(io.StringIO(text.lstrip("\r\n")))))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True,
                             skip_blank_lines=True, index_col=False, engine="python", on_bad_lines=truncate)
        if long_rows:
            caught.append(warnings.WarningMessage(
                f"{len(long_rows)} row(s) have more fields than the header; the extra fields were ignored",
                UserWarning, name, 0))
    except Exception as exc:  # pandas raises several parser error types
        raise ArtifactError(f"{name} is not a readable CSV table: {str(exc).splitlines()[0][:200]}", code="corrupt") from None
    columns = [str(c).strip() for c in df.columns]
    lowered = [c.lower() for c in columns]
    factor_idx = next((lowered.index(n) for n in FACTOR_COLUMN_NAMES if n in lowered), None)
    if factor_idx is None and columns and (columns[0] == "" or columns[0].startswith("Unnamed:")):
        factor_idx = 0
    if factor_idx is None:
        raise ArtifactError(
            f"{name} has no factor column: name it factor, factor_name or name, or make it the unnamed first column",
            code="ic_no_factor_column")
    notes: list[str] = [f"{name}: {str(w.message).splitlines()[0][:200]}" for w in caught]
    metric_idx = [i for i in range(len(columns)) if i != factor_idx and not (columns[i] == "" or columns[i].startswith("Unnamed:"))]
    out_columns = ["factor"] + [lowered[i] for i in metric_idx]
    rows: list[list] = []
    non_numeric: set[str] = set()
    values = df.to_numpy(dtype=object)
    for raw in values:
        factor = str(raw[factor_idx]).strip()
        if not factor:
            continue
        row: list[Any] = [factor]
        for i in metric_idx:
            cell = "" if raw[i] is None else str(raw[i])
            try:
                row.append(_cell_number(cell))
            except ValueError:
                non_numeric.add(lowered[i])
                row.append(None)
        rows.append(row)
    if non_numeric:
        notes.append(f"{name}: non-numeric values in {', '.join(sorted(non_numeric))} were read as null")
    return {"columns": out_columns, "rows": rows}, notes


def split_symbol(group_key: str, info: dict | None) -> tuple[str, str, Issue | None]:
    """Symbol and return name: info.pkl wins when its names are consistent with the group key."""
    symbol, _, return_name = group_key.partition("_")
    if info:
        s, r = info.get("symbol"), info.get("return_name")
        if isinstance(s, str) and s and isinstance(r, str) and r and f"{s}_{r}" == group_key:
            return s, r, None
        if isinstance(s, str) and s and not isinstance(r, str) and group_key.startswith(s + "_"):
            return s, group_key[len(s) + 1:], None
        if (isinstance(s, str) and s) or (isinstance(r, str) and r):
            return symbol, return_name, Issue(
                "warning", "info_name_mismatch",
                f"info.pkl names symbol={s!r} return_name={r!r}, which does not match the group key {group_key}; "
                f"using symbol {symbol}", None)
    return symbol, return_name, None


# --------------------------------------------------------------------------------------------
# loading one group
# --------------------------------------------------------------------------------------------
def load_group(directory: str | os.PathLike, group_key: str, files: dict[str, str], *,
               cache: CacheDir | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> GroupSnapshot:
    """Parse and validate one group. Never raises for bad artifacts: problems become issues."""
    root = Path(directory).resolve()
    issues: list[Issue] = []
    signature = file_signature(root, files)
    mtimes = [sig[2] / 1e9 for sig in signature if sig[2] is not None]  # no second stat: files come and go

    def read(kind: str) -> bytes | None:
        name = files.get(kind)
        if name is None:
            return None
        try:
            return read_artifact(root / name, root=root, max_bytes=max_bytes)
        except ArtifactError as exc:
            issues.append(Issue("error", exc.code, str(exc), name))
            return None

    def parse(kind: str, fn: Callable[[bytes, str], Any], data: bytes | None) -> Any:
        if data is None:
            return None
        name = files[kind]
        try:
            return fn(data, name)
        except ArtifactError as exc:
            issues.append(Issue("error", exc.code, str(exc) if name in str(exc) else f"{name}: {exc}", name))
        except Exception as exc:  # a parser surprised by hostile bytes: report, never crash
            log.debug("unexpected error parsing %s", name, exc_info=True)
            issues.append(Issue("error", "corrupt", f"{name} could not be parsed ({type(exc).__name__}: {str(exc)[:200]})", name))
        return None

    # info first: it may name the symbol. Unpickled in a child process, and already JSON-safe.
    info_raw = parse("info.pkl", check_info, read("info.pkl"))
    symbol, return_name, name_issue = split_symbol(group_key, info_raw)
    if name_issue:
        issues.append(Issue(name_issue.severity, name_issue.code, name_issue.message, files.get("info.pkl")))
    if not return_name:
        issues.append(Issue("warning", "no_return_name", f"group key {group_key} has no `_return_name` part", None))

    factors: list[str] = []
    if "factors.txt" not in files:
        issues.append(Issue("error", "missing_factors", f"{group_key}_factors.txt is missing: every group needs its factor list", None))
    else:
        factors = parse("factors.txt", parse_factors, read("factors.txt")) or []
        dupes = sorted(f for f, n in Counter(factors).items() if n > 1)
        if dupes:
            issues.append(Issue("warning", "duplicate_factors", f"factors listed more than once: {', '.join(dupes[:5])}", files["factors.txt"]))

    ic = None
    if "ic.csv" in files:
        parsed = parse("ic.csv", parse_ic, read("ic.csv"))
        if parsed:
            ic, notes = parsed
            issues.extend(Issue("warning", "ic_format", n, files["ic.csv"]) for n in notes)
            if factors:
                ic_factors = {r[0] for r in ic["rows"]}
                missing = [f for f in factors if f not in ic_factors]
                extra = sorted(ic_factors - set(factors))
                if missing:
                    issues.append(Issue("warning", "ic_missing_factors",
                                        f"ic.csv has no row for {len(missing)} factor(s): {', '.join(missing[:5])}", files["ic.csv"]))
                if extra:
                    issues.append(Issue("warning", "ic_unknown_factors",
                                        f"ic.csv has rows for {len(extra)} factor(s) not in factors.txt: {', '.join(extra[:5])}",
                                        files["ic.csv"]))

    model_source, minfo, model_json = _load_model(files, read, issues, cache)

    dim = minfo.num_features if minfo else (len(factors) or None)
    if minfo and factors:
        _validate_model(minfo, factors, issues, files)
    if minfo and info_raw is not None and "dim" in info_raw:
        try:
            info_dim = int(info_raw["dim"])
        except (TypeError, ValueError, OverflowError):
            issues.append(Issue("warning", "info_dim_invalid", f"info.pkl dim is {info_raw['dim']!r}, not a number", files.get("info.pkl")))
        else:
            if info_dim != minfo.num_features:
                issues.append(Issue("error", "info_dim_mismatch",
                                    f"info.pkl says dim={info_dim} but the model has {minfo.num_features} features", files.get("info.pkl")))

    return GroupSnapshot(
        group_key=group_key, symbol=symbol, return_name=return_name, files=dict(sorted(files.items())),
        factors=factors, ic=ic, info=info_raw, dim=dim, model_source=model_source,
        model_sha256=minfo.json_sha256 if minfo else None, model_json=model_json,
        updated_at=iso_from_timestamp(max(mtimes)) if mtimes else None, signature=signature, issues=issues,
    )


def _load_model(files, read, issues: list[Issue], cache: CacheDir | None):
    """Pick the model file (JSON wins over pkl), load or fetch its info. Returns (source, info, json)."""
    if "model.json" in files:
        source, name = "json", files["model.json"]
    elif "model.pkl" in files:
        source, name = "pkl", files["model.pkl"]
    else:
        issues.append(Issue("error", "missing_model", "no model file: add {group}_model.json or {group}_model.pkl", None))
        return None, None, None
    data = read("model.json" if source == "json" else "model.pkl")
    if data is None:
        return source, None, None
    source_sha = sha256(data)
    cached = cache.model_info(source_sha) if cache else None
    if cached and source == "pkl" and not cache.has_json(cached.json_sha256):
        cached = None
    try:
        if cached:
            minfo, model_json = cached, (data if source == "json" else None)
        else:  # in a child process: a corrupt model can crash XGBoost's loader
            minfo, model_json, _ = check_model(data, source, name)
        if source == "json":
            model_json.decode("utf-8")  # served as text
    except ArtifactError as exc:
        issues.append(Issue("error", exc.code, str(exc) if name in str(exc) else f"{name}: {exc}", name))
        return source, None, None
    except UnicodeDecodeError:
        issues.append(Issue("error", "encoding", f"{name} is not UTF-8 JSON text", name))
        return source, None, None
    except Exception as exc:  # xgboost or a reconstructor surprised by hostile bytes
        log.debug("unexpected error loading %s", name, exc_info=True)
        issues.append(Issue("error", "corrupt", f"{name} could not be loaded ({type(exc).__name__}: {str(exc)[:200]})", name))
        return source, None, None
    if cache and not cached:
        try:
            cache.put_model(source_sha, minfo, model_json if source == "pkl" else None)
        except OSError as exc:  # a full disk must not stop serving
            log.warning("conversion cache not written: %s", exc)
    for w in minfo.warnings:
        issues.append(Issue("warning", "old_version", f"{name}: {w}", name))
    return source, minfo, model_json


def _validate_model(minfo: ModelInfo, factors: list[str], issues: list[Issue], files: dict[str, str]) -> None:
    model_file = files.get("model.json") or files.get("model.pkl")
    if minfo.num_features != len(factors):
        issues.append(Issue("error", "dim_mismatch",
                            f"the model has {minfo.num_features} features but factors.txt lists {len(factors)} factors",
                            model_file))
        return
    if minfo.feature_names is not None and list(minfo.feature_names) != factors:
        i = next(i for i, (a, b) in enumerate(zip(minfo.feature_names, factors)) if a != b)
        issues.append(Issue("error", "feature_names_mismatch",
                            f"feature {i} is {minfo.feature_names[i]!r} in the model but {factors[i]!r} in factors.txt: "
                            "the dimension→factor mapping would be wrong", model_file))


def load_directory(path: str | os.PathLike, *, cache: CacheDir | None = None,
                   max_bytes: int = DEFAULT_MAX_BYTES, executor: Executor | None = None,
                   only: set[str] | None = None, scanned: dict[str, dict[str, str]] | None = None,
                   prepare: Callable[[GroupSnapshot], None] | None = None) -> DirectorySnapshot:
    """Scan and load every group (or only the keys in `only`), in parallel when given an executor.

    `scanned` reuses a scan the caller already made; `prepare(group)`, when given, runs in the same
    worker right after each group is parsed (the registry prebuilds payloads there).
    """
    root = check_directory(path)
    ignored: list[str] = []
    if scanned is None:
        scanned, ignored = scan_directory(root)
    keys = [k for k in scanned if only is None or k in only]

    def one(key: str) -> GroupSnapshot:
        group = load_group(root, key, scanned[key], cache=cache, max_bytes=max_bytes)
        if prepare is not None:
            prepare(group)
        return group

    groups = list(executor.map(one, keys)) if executor else [one(k) for k in keys]
    return DirectorySnapshot(root, {g.group_key: g for g in groups}, ignored)


# --------------------------------------------------------------------------------------------
# payloads
# --------------------------------------------------------------------------------------------
def dim_factors(group: GroupSnapshot) -> list[dict]:
    """[{dim, factor_name, kendall_tau}] in dimension order; kendall_tau null when unknown."""
    tau = group.kendall_by_factor()
    return [{"dim": i, "factor_name": f, "kendall_tau": tau.get(f)} for i, f in enumerate(group.factors)]


def payload_head(model_name: str, group: GroupSnapshot) -> dict:
    """The payload of SPEC §2 without the model JSON text (the `model_json` slot is left out)."""
    metadata = dict(group.info or {})
    metadata.update({
        "symbol": group.symbol, "return_name": group.return_name, "group_key": group.group_key,
        "dim": group.dim, "model_source": group.model_source, "model_sha256": group.model_sha256,
        "updated_at": group.updated_at,
    })
    return {
        "model_name": model_name, "symbol": group.symbol, "group_key": group.group_key,
        "return_name": group.return_name,
        "payload": {"metadata": metadata, "dim_factors": dim_factors(group)},
    }


def payload_key(model_name: str, group: GroupSnapshot) -> str:
    """A content key for the full payload: same key ⇔ same payload bytes (for the payload cache)."""
    head = json.dumps(payload_head(model_name, group), sort_keys=True, separators=(",", ":"))
    return sha256(f"v1|{group.model_sha256}|{head}".encode())


def build_payload_bytes(model_name: str, group: GroupSnapshot, model_json: bytes, *, version: int | None = None) -> bytes:
    """The exact response body of `GET /api/models/{name}/model/{symbol}`; with `version`, its
    `metadata.version` (SPEC §6; like the other metadata keys we set, it wins over an info.pkl key)."""
    head = payload_head(model_name, group)
    inner = head["payload"]
    if version is not None:
        inner["metadata"]["version"] = version
    head["payload"] = {"model_json": model_json.decode("utf-8"), "metadata": inner["metadata"], "dim_factors": inner["dim_factors"]}
    return json.dumps(head, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
