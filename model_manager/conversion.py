"""XGBoost models: load them safely, convert pickles to JSON, prove the JSON predicts the same.

Everything here works on bytes already read (see `files.read_artifact`) and writes nothing; the
cache of conversions is `cache.CacheDir`, the convert command's file handling `converter.py`.

The functions here run wherever they are called; untrusted bytes from a model directory reach them
only inside a check process (see `isolation.py`). numpy, xgboost and the unpickler are imported by
the functions that use them: a server process imports this module for `ModelInfo` and `sha256` only.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields

from model_manager.errors import ArtifactError
from model_manager.modelsummary import model_summary
from model_manager.warned import recorded_warnings


@dataclass(frozen=True)
class ModelInfo:
    """What validation needs to know about a model, without the model itself."""

    num_features: int
    feature_names: list[str] | None
    json_sha256: str
    warnings: list[str] = field(default_factory=list)
    digest: str | None = None  # `model_digest`: the same for one model saved as JSON, UBJSON or a pickle
    # `model_importance`: {importance type: {dimension (as text): value}}; None when not computed
    importance: dict[str, dict[str, float]] | None = None
    # `modelsummary.model_summary` of the JSON (what a version record keeps for diffs); None when not made
    summary: dict | None = None

    def as_dict(self) -> dict:
        """The fields by name, sharing their values (no deep copy, as `dataclasses.asdict` makes:
        that copy was a millisecond of every model check)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


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
    from model_manager.safepickle import safe_loads

    with recorded_warnings() as messages:
        obj = safe_loads(data)
        booster = _booster_of(obj, name)
        booster.num_features()  # forces the model to be usable now, not at first predict
    return booster, list(dict.fromkeys(messages))


def _is_json_text(head: bytes) -> bool:
    """XGBoost JSON opens an object with a key (`{"learner"`); UBJSON follows `{` with a type marker."""
    head = head.lstrip()
    return head.startswith(b"{") and head[1:].lstrip()[:1] in (b'"', b"}", b"")


def _load_booster(data: bytes | bytearray, name: str, what: str):
    import xgboost as xgb

    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(data))
    except xgb.core.XGBoostError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown error"
        raise ArtifactError(f"{name} is not a loadable XGBoost {what} model (truncated or corrupt?): {first[:200]}", code="corrupt") from None
    return booster


def load_json_model(data: bytes | bytearray, name: str = "model.json"):
    """Load an XGBoost JSON model from bytes; ArtifactError when xgboost cannot read it."""
    head = bytes(data[:64]).lstrip()
    if not head.startswith(b"{"):
        raise ArtifactError(f"{name} is not a JSON document (expected XGBoost's JSON model format)", code="corrupt")
    if not _is_json_text(head):
        stem = name[: -len(".json")] if name.endswith(".json") else name
        raise ArtifactError(f"{name} holds XGBoost UBJSON (binary), not JSON text: rename it to {stem}.ubj", code="wrong_format")
    return _load_booster(data, name, "JSON")


def load_ubj_model(data: bytes | bytearray, name: str = "model.ubj"):
    """Load an XGBoost UBJSON model (`save_model("x.ubj")`, the default binary format) from bytes."""
    head = bytes(data[:64]).lstrip()
    if _is_json_text(head):
        stem = name[: -len(".ubj")] if name.endswith(".ubj") else name
        raise ArtifactError(f"{name} holds XGBoost JSON text, not UBJSON: rename it to {stem}.json", code="wrong_format")
    if not head.startswith(b"{"):
        raise ArtifactError(f"{name} is not a UBJSON document (expected XGBoost's UBJSON model format)", code="corrupt")
    return _load_booster(data, name, "UBJSON")


def booster_json(booster) -> bytes:
    """The booster as XGBoost JSON text (bytes). `save_raw` returns a bytearray; we keep bytes."""
    return bytes(booster.save_raw(raw_format="json"))


def model_digest(booster) -> str:
    """sha256 of what makes the model: the booster as XGBoost holds it, in XGBoost's binary UBJSON
    form (so the format it was read from, the XGBoost version that saved it and key order do not
    matter), without its attributes (`learner.attributes`: the sklearn wrapper's `scikit_learn` note,
    `best_iteration`: bookkeeping that `save_model` adds and a pickle's booster lacks, which a
    Booster's predictions do not use).

    Prefixed with the XGBoost version and the form (`3.2.0+ubj/`): digests compare only under one
    version and form, and a group whose cached digests were made otherwise (an earlier release hashed
    the sorted JSON, at 7 times the cost) has its files checked again (`_recheck_across_versions`).
    The attributes are removed for the hash and put back."""
    import xgboost as xgb

    attributes = booster.attributes()
    if attributes:
        booster.set_attr(**{key: None for key in attributes})
    try:
        raw = bytes(booster.save_raw(raw_format="ubj"))
    finally:
        if attributes:
            booster.set_attr(**attributes)
    return f"{xgb.__version__}+ubj/" + sha256(raw)


IMPORTANCE_TYPES = ("gain", "total_gain", "cover", "weight")


def model_importance(booster) -> dict[str, dict[str, float]]:
    """`booster.get_score(importance_type=t)` for each of IMPORTANCE_TYPES, keyed by feature dimension
    (as text, for JSON): XGBoost keys the scores `f0`…`fN`, or by feature name when the model stores
    names. Features no tree splits on are absent, as in `get_score`.

    `gain` is not asked for: XGBoost makes it as total_gain / weight in float32 (gbtree's
    FeatureScore), and so does this, to the bit (a test compares it with `get_score`); one walk of
    every tree fewer, a few per cent of a small model's check."""
    import numpy as np

    names = list(booster.feature_names or [])
    dims = {name: i for i, name in reversed(list(enumerate(names)))}  # a repeated name: its first dimension
    raw = {kind: booster.get_score(importance_type=kind) for kind in IMPORTANCE_TYPES if kind != "gain"}
    weight = raw["weight"]
    raw["gain"] = {key: float(np.float32(total) / np.float32(weight[key])) for key, total in raw["total_gain"].items()}
    out: dict[str, dict[str, float]] = {}
    for kind in IMPORTANCE_TYPES:
        scores: dict[str, float] = {}
        for key, value in raw[kind].items():
            dim = dims.get(key)
            if dim is None and key[:1] == "f" and key[1:].isdigit():
                dim = int(key[1:])
            if dim is not None:
                scores[str(dim)] = float(value)
        out[kind] = scores
    return out


def model_info(booster, json_bytes: bytes, warnings_: list[str] | None = None) -> ModelInfo:
    names = booster.feature_names
    return ModelInfo(booster.num_features(), list(names) if names else None, sha256(json_bytes), list(warnings_ or []),
                     model_digest(booster), model_importance(booster), model_summary(json_bytes))


def verify_predictions(original, restored, *, rows: int = 1000, seed: int = 0) -> tuple[bool, str]:
    """Predict random inputs (with missing values) with the pickled booster and the one loaded from
    its JSON; demand bit-identical output.

    Compares both the transformed prediction and the raw margin. Returns (ok, explanation).
    """
    import numpy as np
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
