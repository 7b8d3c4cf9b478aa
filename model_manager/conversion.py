"""XGBoost models: load them safely, convert pickles to JSON, prove the JSON predicts the same,
and remember conversions in the data dir so a restart does not redo them.

Everything here works on bytes already read (see `files.read_artifact`); nothing writes into a model
directory. The cache is content-addressed: a pickle is looked up by the sha256 of its bytes.

The functions here run wherever they are called; untrusted bytes from a model directory reach them
only inside a check process (see `isolation.py`).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from model_manager.errors import ArtifactError
from model_manager.files import atomic_write, private_dir
from model_manager.safepickle import safe_loads


@dataclass(frozen=True)
class ModelInfo:
    """What validation needs to know about a model, without the model itself."""

    num_features: int
    feature_names: list[str] | None
    json_sha256: str
    warnings: list[str] = field(default_factory=list)


def sha256(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _booster_of(obj, name: str):
    import xgboost as xgb

    if isinstance(obj, xgb.Booster):
        return obj
    if isinstance(obj, xgb.XGBModel):
        try:
            return obj.get_booster()
        except Exception as exc:  # sklearn's NotFittedError and friends
            raise ArtifactError(f"{name} holds an unfitted {type(obj).__name__}: {exc}", code="not_fitted") from None
    raise ArtifactError(f"{name} holds a {type(obj).__module__}.{type(obj).__qualname__}, not an XGBoost model", code="not_a_model")


def load_pickled_model(data: bytes, name: str = "model.pkl"):
    """Unpickle (allow-list only) an XGBoost Booster or sklearn-API estimator.

    Returns (booster, warning messages). Version warnings that xgboost raises for models saved by
    older releases are returned, not raised: they become `warning` issues.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        obj = safe_loads(data)
        booster = _booster_of(obj, name)
        booster.num_features()  # forces the model to be usable now, not at first predict
    messages = [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()]
    return booster, list(dict.fromkeys(messages))


def load_json_model(data: bytes | bytearray, name: str = "model.json"):
    """Load an XGBoost JSON model from bytes; ArtifactError when xgboost cannot read it."""
    import xgboost as xgb

    if not bytes(data[:64]).lstrip().startswith(b"{"):
        raise ArtifactError(f"{name} is not a JSON document (expected XGBoost's JSON model format)", code="corrupt")
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(data))
    except xgb.core.XGBoostError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown error"
        raise ArtifactError(f"{name} is not a loadable XGBoost JSON model (truncated or corrupt?): {first[:200]}", code="corrupt") from None
    return booster


def booster_json(booster) -> bytes:
    """The booster as XGBoost JSON text (bytes). `save_raw` returns a bytearray; we keep bytes."""
    return bytes(booster.save_raw(raw_format="json"))


def model_info(booster, json_bytes: bytes, warnings_: list[str] | None = None) -> ModelInfo:
    names = booster.feature_names
    return ModelInfo(booster.num_features(), list(names) if names else None, sha256(json_bytes), list(warnings_ or []))


def verify_predictions(original, restored, *, rows: int = 1000, seed: int = 0) -> tuple[bool, str]:
    """Predict random inputs (with missing values) with the pickled booster and the one loaded from
    its JSON; demand bit-identical output.

    Compares both the transformed prediction and the raw margin. Returns (ok, explanation).
    """
    import xgboost as xgb

    n = original.num_features()
    rng = np.random.default_rng(seed)
    x = rng.normal(scale=2.0, size=(rows, max(n, 1))).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    dm_kwargs = {"feature_names": original.feature_names} if original.feature_names else {}
    dmatrix = xgb.DMatrix(x, missing=np.nan, **dm_kwargs)
    for margin in (False, True):
        a = original.predict(dmatrix, output_margin=margin)
        b = restored.predict(dmatrix, output_margin=margin)
        if a.shape != b.shape or a.dtype != b.dtype or a.tobytes() != b.tobytes():
            diff = np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64))) if a.shape == b.shape else float("nan")
            kind = "margins" if margin else "predictions"
            return False, f"{kind} differ on {rows} random rows (max abs diff {diff:.3g})"
    return True, f"bit-identical on {rows} random rows"


class ConversionCache:
    """Content-addressed cache under the data dir.

    - `models/<sha of source>.meta.json` → ModelInfo of a model file (pkl or json) already validated
    - `json/<sha of json>.json`          → the JSON text converted from a pickle
    - `payloads/<key>.gz` + `.meta.json` → prebuilt gzip payload and its ETag

    Every entry is written atomically and checked against its recorded hash when read, so a crash
    or a stray edit can only cause a miss, never a wrong answer. `sweep` deletes what the loaded
    models no longer use.
    """

    def __init__(self, directory: str | os.PathLike):
        self.root = private_dir(directory)  # 0700, and so each part (files in them are 0600)
        for sub in ("models", "json", "payloads", "snapshots"):
            private_dir(self.root / sub)

    # -- model conversions -------------------------------------------------------------------
    def model_info(self, source_sha: str) -> ModelInfo | None:
        meta = self._read_json(self.root / "models" / f"{source_sha}.meta.json")
        if meta is None:
            return None
        try:
            return ModelInfo(**meta)
        except TypeError:
            return None

    def put_model(self, source_sha: str, info: ModelInfo, json_bytes: bytes | None = None) -> None:
        """Record a validated model; `json_bytes` (a pickle's conversion) is kept for later payloads."""
        if json_bytes is not None:
            jpath = self.root / "json" / f"{info.json_sha256}.json"
            if not jpath.exists():
                atomic_write(jpath, json_bytes, durable=False)
        atomic_write(self.root / "models" / f"{source_sha}.meta.json", json.dumps(asdict(info)).encode(), durable=False)

    def has_json(self, json_sha: str) -> bool:
        path = self.root / "json" / f"{json_sha}.json"
        if path.is_file():
            _touch(path)  # about to be used: keep it out of the next sweep's reach
            return True
        return False

    def model_json(self, json_sha: str) -> bytes | None:
        path = self.root / "json" / f"{json_sha}.json"
        try:
            data = path.read_bytes()
        except OSError:
            return None
        if sha256(data) != json_sha:
            path.unlink(missing_ok=True)
            return None
        _touch(path)
        return data

    # -- prebuilt payloads -------------------------------------------------------------------
    def payload(self, key: str) -> tuple[str, bytes] | None:
        meta = self._read_json(self.root / "payloads" / f"{key}.meta.json")
        if not meta:
            return None
        try:
            gz = (self.root / "payloads" / f"{key}.gz").read_bytes()
        except OSError:
            return None
        if sha256(gz) != meta.get("gzip_sha256"):
            return None
        _touch(self.root / "payloads" / f"{key}.gz")
        return meta["etag"], gz

    def put_payload(self, key: str, etag: str, gz: bytes) -> None:
        atomic_write(self.root / "payloads" / f"{key}.gz", gz, durable=False)
        atomic_write(self.root / "payloads" / f"{key}.meta.json",
                     json.dumps({"etag": etag, "gzip_sha256": sha256(gz)}).encode(), durable=False)

    def sweep(self, live_json: set[str], live_payloads: set[str], live_etags: set[str], *,
              grace_seconds: float = 600, max_age_days: float = 30) -> int:
        """Delete what the live sets do not name; returns how many files went.

        Model JSON and payloads (the large entries) go as soon as nothing loaded uses them and they
        are older than `grace_seconds` (an entry just written by a load still in progress, or by a
        CLI `register`, is young). Model infos and parse records are small and go after
        `max_age_days` unused. Unknown files are left alone.
        """
        now, removed = time.time(), 0

        def drop(path: Path, cutoff: float) -> None:
            nonlocal removed
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except OSError:
                pass

        for path in self._entries("json"):
            if path.suffix == ".json" and path.stem not in live_json:
                drop(path, now - grace_seconds)
        for path in self._entries("payloads"):
            name = path.name
            if name.startswith("raw-") and name.endswith(".json"):
                live = name[4:-5] in live_etags
            elif name.endswith(".meta.json"):
                live = name[: -len(".meta.json")] in live_payloads
            elif name.endswith(".gz"):
                live = name[:-3] in live_payloads
            else:
                continue
            if not live:
                drop(path, now - grace_seconds)
        for sub in ("models", "snapshots"):
            for path in self._entries(sub):
                drop(path, now - max_age_days * 86400)
        return removed

    def _entries(self, sub: str) -> list[Path]:
        try:
            return [p for p in (self.root / sub).iterdir() if not p.name.startswith(".")]
        except OSError:
            return []

    @staticmethod
    def _read_json(path: Path) -> dict | None:
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return None
        if isinstance(data, dict):
            _touch(path)
            return data
        return None


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


@dataclass
class ConvertResult:
    source: Path
    target: Path
    status: str  # converted | skipped | failed
    num_features: int | None = None
    size: int | None = None
    message: str = ""
    warnings: list[str] = field(default_factory=list)


def pickles_in(path: Path) -> list[Path]:
    """The `*_model.pkl` files a convert run covers: the file itself, or those in a directory."""
    from model_manager.errors import PathError

    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.name.endswith("_model.pkl") and not p.name.startswith("."))
        if not found:
            raise PathError(f"no *_model.pkl files in {path}")
        return found
    if path.is_file():
        if not path.name.endswith(".pkl"):
            raise PathError(f"{path} is not a pickle (expected a *_model.pkl file or a directory)")
        return [path]
    raise PathError(f"{path} does not exist")


def json_target(source: Path, out_dir: Path | None) -> Path:
    name = source.name[: -len(".pkl")] + ".json" if source.name.endswith(".pkl") else source.name + ".json"
    return (out_dir or source.parent) / name


def convert_file(source: Path, out_dir: Path | None = None, *, force: bool = False, verify: bool = True,
                 max_bytes: int) -> ConvertResult:
    """Convert one pickled model to XGBoost JSON next to it (or in `out_dir`), atomically.

    With `verify`, the JSON is written only after it predicts bit-identically to the pickle. The
    pickle is loaded in a check process (`check_model`): a corrupt one cannot crash the run.
    """
    from model_manager.files import read_artifact
    from model_manager.isolation import check_model

    target = json_target(source, out_dir)
    if target.exists() and not force:
        return ConvertResult(source, target, "skipped", message=f"{target.name} exists (use --force to overwrite)")
    try:
        info, data, how = check_model(read_artifact(source, max_bytes=max_bytes), "pkl", source.name, verify=verify)
        atomic_write(target, data)
    except ArtifactError as exc:
        return ConvertResult(source, target, "failed", message=str(exc))
    except OSError as exc:
        return ConvertResult(source, target, "failed", message=f"cannot write {target}: {exc.strerror or exc}")
    return ConvertResult(source, target, "converted", info.num_features, len(data),
                         message=f"verified {how}" if verify else "not verified", warnings=info.warnings)
