"""Loading groups: read each file once, parse it, validate the group as a whole.

Never raises for a bad artifact: every problem becomes an `Issue` on its group.
"""
from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from model_manager.artifacts.models import cached_info, read_models
from model_manager.artifacts.parse import parse_factors, parse_ic, split_symbol
from model_manager.artifacts.scan import MODEL_KINDS, MODEL_SOURCES, check_directory, file_signature, ignored_entries, near_misses, scan_directory
from model_manager.artifacts.snapshot import DirectorySnapshot, GroupSnapshot, Issue
from model_manager.cache import CacheDir
from model_manager.checkbatch import CheckItem, check_files
from model_manager.clock import iso_from_timestamp
from model_manager.conversion import ModelInfo, sha256
from model_manager.errors import ArtifactError
from model_manager.files import read_artifact
from model_manager.isolation import check_info, check_model

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
FILES_CHANGED = "files_changed"  # the issue code of a group whose files changed while they were read
RE_READS = 2                     # such a group is read again this many times at most,
RE_READ_PAUSE = 0.2              # after this many seconds (twice that the second time)


class _Reader:
    """Reads and parses one group's files, turning every failure into an issue naming the file."""

    def __init__(self, root: Path, files: dict[str, str], issues: list[Issue], max_bytes: int):
        self.root, self.files, self.issues, self.max_bytes = root, files, issues, max_bytes
        self._read: dict[str, bytes | None] = {}  # each file is read once: what is checked is what is used
        self._digests: dict[int, tuple[bytes, str]] = {}

    def read(self, kind: str) -> bytes | None:
        if kind in self._read:
            return self._read[kind]
        name = self.files.get(kind)
        if name is None:
            return None
        try:
            data: bytes | None = read_artifact(self.root / name, root=self.root, max_bytes=self.max_bytes)
        except ArtifactError as exc:
            self.issues.append(Issue("error", exc.code, str(exc), name))
            data = None
        self._read[kind] = data
        return data

    def digest(self, data: bytes) -> str:
        """sha256 of bytes this reader read, computed once."""
        found = self._digests.get(id(data))
        if found is None or found[0] is not data:
            found = self._digests[id(data)] = (data, sha256(data))
        return found[1]

    def parse(self, kind: str, fn: Callable[[bytes, str], Any]) -> Any:
        data = self.read(kind)
        if data is None:
            return None
        name = self.files[kind]
        try:
            return fn(data, name)
        except ArtifactError as exc:
            self.issues.append(Issue("error", exc.code, str(exc) if name in str(exc) else f"{name}: {exc}", name))
        except Exception as exc:  # a parser surprised by hostile bytes: report, never crash
            log.debug("unexpected error parsing %s", name, exc_info=True)
            self.issues.append(Issue("error", "corrupt", f"{name} could not be parsed ({type(exc).__name__}: {str(exc)[:200]})", name))
        return None


class _Checked:
    """The answers of the batched check (see checkbatch.py) for info.pkl and the served model file of a
    group: `info` and `model` answer for exactly those bytes, and call `check_info` and `check_model`
    for anything else (another model file of the group)."""

    def __init__(self, answers: dict[int, tuple[bytes, Any]] | None = None) -> None:
        self.answers = answers or {}

    @staticmethod
    def items(reader: _Reader, files: dict[str, str], cache: CacheDir | None) -> list[CheckItem]:
        """What of a group goes to the batched check: its info.pkl, and its served model unless the
        cache already holds that file's check."""
        out = []
        info = reader.read("info.pkl") if "info.pkl" in files else None
        if info is not None:
            out.append(CheckItem("info", files["info.pkl"], info))
        served = next((kind for kind in MODEL_KINDS if kind in files), None)
        model = reader.read(served) if served is not None else None
        if model is not None and cached_info(MODEL_SOURCES[served], reader.digest(model), cache, served=True) is None:
            out.append(CheckItem("model", files[served], model, MODEL_SOURCES[served]))
        return out

    def _answer(self, data: bytes) -> Any:
        data_and_answer = self.answers.get(id(data))
        if data_and_answer is None or data_and_answer[0] is not data:
            return None
        answer = data_and_answer[1]
        if isinstance(answer, ArtifactError):
            # a new exception each time: raising the stored one would tie it to this frame (and the
            # file's bytes) in a reference cycle that only the garbage collector frees
            raise ArtifactError(str(answer), code=answer.code) from None
        return answer

    def info(self, data: bytes, name: str) -> dict:
        answer = self._answer(data)
        return answer if answer is not None else check_info(data, name)

    def model(self, data: bytes, source: str, name: str) -> tuple:
        answer = self._answer(data)
        return answer if answer is not None else check_model(data, source, name)


class _GroupLoad:
    """One group being loaded: its files stat'ed and read, what needs the check process (`items`),
    then `finish` with the answers."""

    def __init__(self, root: Path, group_key: str, files: dict[str, str], cache: CacheDir | None, max_bytes: int):
        self.root, self.group_key, self.files, self.cache, self.max_bytes = root, group_key, files, cache, max_bytes
        self.issues: list[Issue] = []
        self.signature = file_signature(root, files)
        self.reader = _Reader(root, files, self.issues, max_bytes)
        self.items = _Checked.items(self.reader, files, cache)

    def finish(self, answers: list[Any]) -> GroupSnapshot:
        """The group's snapshot, given the answers to `items` (in order). Never raises for bad artifacts."""
        root, group_key, files, issues, reader = self.root, self.group_key, self.files, self.issues, self.reader
        checked = _Checked({id(item.data): (item.data, answer) for item, answer in zip(self.items, answers)})
        mtimes = {sig[0]: sig[2] for sig in self.signature if sig[2] is not None}  # (as first stat'ed: files come and go)
        info = reader.parse("info.pkl", checked.info)  # first: it may name the symbol
        symbol, return_name, name_issue = split_symbol(group_key, info)
        if name_issue:
            issues.append(Issue(name_issue.severity, name_issue.code, name_issue.message, files.get("info.pkl")))
        if not return_name:
            issues.append(Issue("warning", "no_return_name", f"group key {group_key} has no `_return_name` part", None))
        factors = _factors(group_key, files, reader, root)
        ic = _ic(group_key, files, reader, factors)
        model = read_models(files, reader.read, issues, self.cache, root, mtimes, checked.model, reader.digest)
        if file_signature(root, files) != self.signature:  # every file is read by now: were they all of one training?
            issues.append(Issue("error", FILES_CHANGED, f"the files of {group_key} changed while they were read (a "
                                "training job still writing them?): they are read again at their next change", None))
        if model is None:
            issues.append(Issue("error", "missing_model", _missing(
                root, group_key, files, f"no model file: add {group_key}_model.json, {group_key}_model.ubj or {group_key}_model.pkl"), None))
        minfo = model.info if model else None
        if minfo:
            _validate_model(minfo, factors, info, issues, files, model.file)
        servable = minfo is not None and not any(i.severity == "error" for i in issues)
        return GroupSnapshot(
            group_key=group_key, symbol=symbol, return_name=return_name, files=dict(sorted(files.items())),
            factors=factors, ic=ic, info=info, importance=factor_importance(minfo, factors) if servable else None,
            dim=minfo.num_features if minfo else None,
            model_source=model.source if model else None, model_file=model.file if model else None,
            model_sha256=minfo.json_sha256 if minfo else None, model_json=model.json if model else None,
            model_summary=minfo.summary if minfo else None,
            updated_at=iso_from_timestamp(max(mtimes.values()) / 1e9) if mtimes else None, signature=self.signature,
            issues=issues,
        )


def _finished(loads: list[_GroupLoad], re_reads: int = RE_READS) -> Iterator[GroupSnapshot]:
    """Each group's snapshot: those with nothing to check first, then the others as the check process
    answers them (the files of all of them go to one child, see checkbatch.py). A group whose files
    changed while they were read is read again once the batch is done (`re_reads` times at most,
    after a pause): a snapshot never pairs one training's factor list with another's model. One
    whose files still changed keeps its `files_changed` error, so it is never served."""
    owners = [(n, load) for load in loads for n in range(len(load.items))]
    answers: dict[int, list[Any]] = {}
    changing: list[_GroupLoad] = []

    def done(load: _GroupLoad, group: GroupSnapshot) -> Iterator[GroupSnapshot]:
        if re_reads and any(i.code == FILES_CHANGED for i in group.issues):
            changing.append(load)
        else:
            yield group

    for load in loads:
        if not load.items:
            yield from done(load, load.finish([]))
    for index, answer in check_files([item for load in loads for item in load.items]):
        n, load = owners[index]
        answers.setdefault(id(load), []).append(answer)
        if n == len(load.items) - 1:
            yield from done(load, load.finish(answers.pop(id(load))))
    if changing:
        time.sleep(RE_READ_PAUSE * (RE_READS - re_reads + 1))
        yield from _finished([_GroupLoad(c.root, c.group_key, c.files, c.cache, c.max_bytes) for c in changing], re_reads - 1)


def load_group(directory: str | os.PathLike, group_key: str, files: dict[str, str], *,
               cache: CacheDir | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> GroupSnapshot:
    """Parse and validate one group. Never raises for bad artifacts: problems become issues."""
    return next(_finished([_GroupLoad(Path(directory).resolve(), group_key, files, cache, max_bytes)]))


def factor_importance(minfo: ModelInfo, factors: list[str]) -> dict[str, dict[str, float]] | None:
    """The model's importance by factor name through the dimension→factor mapping (a factor listed
    twice takes its first dimension's value, as the IC lookup does); None when it was not computed."""
    if minfo.importance is None:
        return None
    out: dict[str, dict[str, float]] = {}
    for kind, scores in minfo.importance.items():
        named: dict[str, float] = {}
        for dim, factor in enumerate(factors):
            value = scores.get(str(dim))
            if value is not None and factor not in named:
                named[factor] = value
        out[kind] = named
    return out


def _missing(root: Path, group_key: str, files: dict[str, str], message: str) -> str:
    """`message`, plus the files that look meant for this group but are not read (`X_factor.txt`)."""
    found = near_misses(root, group_key, set(files.values()))
    if found:
        message += " (" + "; ".join(f"{name}: {hint}" for name, hint in found[:3]) + ")"
    return message


def _factors(group_key: str, files: dict[str, str], reader: _Reader, root: Path) -> list[str]:
    if "factors.txt" not in files:
        reader.issues.append(Issue("error", "missing_factors", _missing(
            root, group_key, files, f"{group_key}_factors.txt is missing: every group needs its factor list"), None))
        return []
    factors = reader.parse("factors.txt", parse_factors) or []
    dupes = sorted(f for f, n in Counter(factors).items() if n > 1)
    if dupes:
        reader.issues.append(Issue("warning", "duplicate_factors", f"factors listed more than once: {', '.join(dupes[:5])}", files["factors.txt"]))
    return factors


def _ic(group_key: str, files: dict[str, str], reader: _Reader, factors: list[str]) -> dict | None:
    issues = reader.issues
    if "ic.csv" not in files:
        issues.append(Issue("warning", "missing_ic", f"{group_key}_ic.csv is missing: the payload's kendall_tau values are null", None))
        return None
    parsed = reader.parse("ic.csv", parse_ic)
    if not parsed:
        return None
    ic, notes = parsed
    name = files["ic.csv"]
    issues.extend(Issue("warning", "ic_format", n, name) for n in notes)
    if "kendall_tau" not in ic["columns"]:
        issues.append(Issue("warning", "ic_no_kendall_tau", f"{name} has no kendall_tau column: the payload's kendall_tau values are null", name))
    if factors:
        ic_factors = {r[0] for r in ic["rows"]}
        missing = [f for f in factors if f not in ic_factors]
        extra = sorted(ic_factors - set(factors))
        if missing:
            issues.append(Issue("warning", "ic_missing_factors", f"ic.csv has no row for {len(missing)} factor(s): {', '.join(missing[:5])}", name))
        if extra:
            issues.append(Issue("warning", "ic_unknown_factors",
                                f"ic.csv has rows for {len(extra)} factor(s) not in factors.txt: {', '.join(extra[:5])}", name))
    return ic


def _validate_model(minfo: ModelInfo, factors: list[str], info: dict | None, issues: list[Issue], files: dict[str, str],
                    model_file: str) -> None:
    """The model against factors.txt (count and names) and against info.pkl's `dim`."""
    if factors and minfo.num_features != len(factors):
        issues.append(Issue("error", "dim_mismatch",
                            f"the model has {minfo.num_features} features but factors.txt lists {len(factors)} factors", model_file))
    elif factors and minfo.feature_names is not None and list(minfo.feature_names) != factors:
        i = next(i for i, (a, b) in enumerate(zip(minfo.feature_names, factors)) if a != b)
        issues.append(Issue("error", "feature_names_mismatch",
                            f"feature {i} is {minfo.feature_names[i]!r} in the model but {factors[i]!r} in factors.txt: "
                            "the dimension→factor mapping would be wrong", model_file))
    if info is None or "dim" not in info:
        return
    try:
        info_dim = int(info["dim"])
    except (TypeError, ValueError, OverflowError):
        issues.append(Issue("warning", "info_dim_invalid", f"info.pkl dim is {info['dim']!r}, not a number", files.get("info.pkl")))
        return
    if info_dim != minfo.num_features:
        issues.append(Issue("error", "info_dim_mismatch",
                            f"info.pkl says dim={info_dim} but the model has {minfo.num_features} features", files.get("info.pkl")))


def load_directory(path: str | os.PathLike, *, cache: CacheDir | None = None,
                   max_bytes: int = DEFAULT_MAX_BYTES, executor: Executor | None = None,
                   only: set[str] | None = None, scanned: dict[str, dict[str, str]] | None = None,
                   prepare: Callable[[GroupSnapshot], None] | None = None) -> DirectorySnapshot:
    """Scan and load every group (or only the keys in `only`), in parallel when given an executor.

    `scanned` reuses a scan the caller already made (then `ignored` stays empty); `prepare(group)`,
    when given, runs in the same worker right after each group is parsed (the registry prebuilds
    payloads there).
    """
    root = check_directory(path)
    ignored: list[dict] = []
    if scanned is None:
        scanned, names = scan_directory(root)
        ignored = ignored_entries(names, {name for files in scanned.values() for name in files.values()})
    keys = [k for k in scanned if only is None or k in only]

    def batch(part: list[str]) -> list[GroupSnapshot]:
        out = []
        for group in _finished([_GroupLoad(root, key, scanned[key], cache, max_bytes) for key in part]):
            if prepare is not None:
                prepare(group)
            out.append(group)
        return out

    parts = _batches(root, keys, scanned, getattr(executor, "_max_workers", 2) if executor else 1)
    loaded = {g.group_key: g for part in (executor.map(batch, parts) if executor else map(batch, parts)) for g in part}
    return DirectorySnapshot(root, {key: loaded[key] for key in keys}, ignored)


BATCH_GROUPS = 128          # groups whose files one check process takes, at most (each child costs a fork,
                            # its copy-on-write faults and an exit: ~0.5 ms of kernel time a small group at 32)
BATCH_BYTES = 32 * 1024**2  # and at most this many bytes of their files (unless one group alone is more)


def _batches(root: Path, keys: list[str], scanned: dict[str, dict[str, str]], workers: int) -> list[list[str]]:
    """The groups in batches of consecutive keys, each checked in one child process: at most
    BATCH_GROUPS and BATCH_BYTES, and at most a (2 × workers)th of the groups not in a batch yet. So
    the batches shrink towards the end and the last ones finish close together, instead of one large
    batch keeping a single core busy while the other cores have nothing left to do."""
    out: list[list[str]] = []
    size = cap = 0
    for index, key in enumerate(keys):
        files = scanned[key]
        grows = sum(_size(root / files[kind]) for kind in ("info.pkl", *MODEL_KINDS) if kind in files)
        if not out or len(out[-1]) >= cap or (size + grows > BATCH_BYTES and out[-1]):
            out.append([])
            size = 0
            left = len(keys) - index
            cap = max(1, min(BATCH_GROUPS, -(-left // (2 * workers)))) if workers > 1 else BATCH_GROUPS
        out[-1].append(key)
        size += grows
    return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
