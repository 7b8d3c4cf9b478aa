"""A group's model files: which one is served, whether they all hold the same model.

A group may hold its model as `_model.json` (XGBoost JSON), `_model.ubj` (XGBoost UBJSON, the default
binary format of `save_model`) and `_model.pkl` (a pickled Booster or sklearn-API model). The first
present in that order is served: JSON is served as it is; UBJSON is converted to JSON losslessly; a
pickle is the least portable. Every model file present is checked (in the check process, see
`isolation.py`), and all of them must hold the same model (`conversion.model_digest`): a pair that
disagrees, such as a JSON left from an earlier `model-manager convert` beside a retrained pickle, is an
error naming both files, so a stale model is never served silently. Checks are cached by the content
hash of each file, so an unchanged file is not decoded again.
"""
from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from model_manager.artifacts.scan import MODEL_KINDS, MODEL_SOURCES
from model_manager.artifacts.snapshot import Issue
from model_manager.cache import CacheDir
from model_manager.clock import iso_from_timestamp
from model_manager.conversion import ModelInfo, sha256
from model_manager.errors import ArtifactError
from model_manager.files import read_artifact
from model_manager.isolation import check_model

log = logging.getLogger(__name__)


@dataclass
class ModelRead:
    """The served model file of a group: its source ("json" | "ubj" | "pkl"), file name, and (when it
    could be read) its info and JSON text (None when the cache holds the JSON)."""

    source: str
    file: str
    info: ModelInfo | None = None
    json: bytes | None = None


Check = Callable[[bytes, str, str], tuple]  # check_model(data, source, name)


def read_models(files: dict[str, str], read: Callable[[str], bytes | None], issues: list[Issue],
                cache: CacheDir | None, root: Path, mtimes: dict[str, int], check: Check = check_model,
                digest: Callable[[bytes], str] = sha256) -> ModelRead | None:
    """Check every model file of a group; return the served one (None when there is none).

    `read(kind)` returns a file's bytes or None (having added an issue); problems are added to
    `issues`; `mtimes` are the files' modification times (ns) by kind, to tell which file is older;
    `check` checks a file not in the cache (`check_model`, or the answer of a check already made);
    `digest` hashes a file's bytes (the caller may have done it already)."""
    present = [kind for kind in MODEL_KINDS if kind in files]
    if not present:
        return None
    checked: dict[str, ModelRead] = {}
    for kind in present:
        data = read(kind)
        if data is not None:
            checked[kind] = _check(kind, files[kind], data, cache, issues, served=kind == present[0], check=check,
                                   digest=digest)
    _recheck_across_versions(checked, files, read, cache, issues, present[0], check)
    served = checked.get(present[0]) or ModelRead(MODEL_SOURCES[present[0]], files[present[0]])
    if served.info is not None:
        for kind, other in checked.items():
            if kind != present[0] and other.info is not None and other.info.digest != served.info.digest:
                issues.append(_disagreement(present[0], kind, files, root, mtimes))
    for kind in present:
        if kind in checked and checked[kind].info is not None:
            issues.extend(Issue("warning", "old_version", f"{files[kind]}: {w}", files[kind]) for w in checked[kind].info.warnings)
    return served


def cached_info(source: str, source_sha: str, cache: CacheDir | None, served: bool) -> ModelInfo | None:
    """A model file's check result from the cache, when it can be trusted as it is."""
    cached = cache.model_info(source_sha) if cache else None
    if cached and (cached.digest is None or cached.importance is None):  # recorded by an earlier release: check again
        cached = None
    if cached and served and source != "json" and not cache.has_json(cached.json_sha256):
        cached = None
    return cached


def served_json_again(root: Path, model_file: str, source: str, json_sha: str, max_bytes: int,
                      check: Check = check_model) -> bytes | None:
    """The JSON of a group's served model file, read and checked again (in the check process): for
    when a new version needs it and no copy is kept any more (the versions that held it pruned, their
    blobs swept, missing or damaged). None when the file no longer holds the model `json_sha` names
    (it changed since it was parsed: its refresh serves it) or can no longer be read or checked."""
    try:
        data = read_artifact(root / model_file, root=root, max_bytes=max_bytes)
        _info, text, _ = check(data, source, model_file)
    except ArtifactError as exc:
        log.info("%s checked again, without success: %s", model_file, exc)
        return None
    return text if sha256(text) == json_sha else None


def _check(kind: str, name: str, data: bytes, cache: CacheDir | None, issues: list[Issue], *,
           served: bool, use_cache: bool = True, check: Check = check_model,
           digest: Callable[[bytes], str] = sha256) -> ModelRead:
    """One model file: from the cache (by content hash) or checked in the check process."""
    source = MODEL_SOURCES[kind]
    source_sha = digest(data)
    cached = cached_info(source, source_sha, cache, served) if use_cache else None
    try:
        if cached:
            info, model_json = cached, (data if source == "json" else None)
        else:  # in a child process: a corrupt model can crash XGBoost's loader
            info, model_json, _ = check(data, source, name)
        if source == "json":
            model_json.decode("utf-8")  # served as text
    except ArtifactError as exc:
        issues.append(Issue("error", exc.code, str(exc) if name in str(exc) else f"{name}: {exc}", name))
        return ModelRead(source, name)
    except UnicodeDecodeError:
        issues.append(Issue("error", "encoding", f"{name} is not UTF-8 JSON text", name))
        return ModelRead(source, name)
    except Exception as exc:  # xgboost or a reconstructor surprised by hostile bytes
        log.debug("unexpected error loading %s", name, exc_info=True)
        issues.append(Issue("error", "corrupt", f"{name} could not be loaded ({type(exc).__name__}: {str(exc)[:200]})", name))
        return ModelRead(source, name)
    if cache and not cached:
        try:  # (the JSON of a converted file served is kept by the version that serves it)
            cache.put_model(source_sha, info)
        except OSError as exc:  # a full disk must not stop serving
            log.warning("conversion cache not written: %s", exc)
    return ModelRead(source, name, info, model_json if served else None)


def _recheck_across_versions(checked: dict[str, ModelRead], files: dict[str, str], read, cache, issues: list[Issue],
                             served_kind: str, check: Check) -> None:
    """Digests written by different XGBoost releases do not compare (a cache from before an
    upgrade): check every file of the group again with the XGBoost installed now."""
    versions = {r.info.digest.partition("/")[0] for r in checked.values() if r.info is not None and r.info.digest}
    if len(versions) < 2:
        return
    for kind in [k for k, r in checked.items() if r.info is not None]:
        data = read(kind)
        if data is not None:
            checked[kind] = _check(kind, files[kind], data, cache, issues, served=kind == served_kind, use_cache=False,
                                   check=check)


def _disagreement(served_kind: str, other_kind: str, files: dict[str, str], root: Path, mtimes: dict[str, int]) -> Issue:
    """An error naming both files, which one is older (probably stale), and what to do."""
    a, b = files[served_kind], files[other_kind]
    ta, tb = mtimes.get(served_kind), mtimes.get(other_kind)
    older = b if ta is not None and tb is not None and tb < ta else a
    stale = f"{older} is older and probably stale" if ta is not None and tb is not None and ta != tb else "one of them is stale"
    fix = "delete the stale one"
    if {served_kind, other_kind} == {"model.json", "model.pkl"}:
        pickle = files["model.pkl"]
        fix += f", or rewrite {files['model.json']} from the pickle: model-manager convert --force {shlex.quote(str(root / pickle))}"
    else:
        fix += ", or save both again from the same model"
    return Issue("error", "model_files_disagree",
                 f"{a} (modified {_when(ta)}) and {b} (modified {_when(tb)}) hold different models; {a} would be served. "
                 f"{stale}: {fix}", older)


def _when(mtime_ns: int | None) -> str:
    if mtime_ns is None:
        return "at an unknown time"
    return iso_from_timestamp(mtime_ns / 1e9)
