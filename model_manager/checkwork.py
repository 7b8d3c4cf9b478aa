"""What a check child does with one request (see isolation.py): decode untrusted bytes and answer
with a JSON-able result and payload bytes. Runs only in the forked child (or, when no child can be
started, in the caller)."""
from __future__ import annotations

import json
import struct

import numpy as np

from model_manager.conversion import (
    booster_json,
    load_json_model,
    load_pickled_model,
    load_ubj_model,
    model_info,
    verify_predictions,
)
from model_manager.errors import ArtifactError
from model_manager.safepickle import safe_loads


def work(header: dict, data: bytes) -> tuple[dict, bytes]:
    """What a child does with one request: (JSON-able result, payload bytes)."""
    name = header["name"]
    if header["kind"] == "info":
        return _info(data, name)
    if header["kind"] == "compare":
        return _compare(data, int(header["dim"]), name), b""
    result = _check(data, header["source"], name, bool(header.get("verify")))
    return result, result.pop("json", None) or b""


def _info(data: bytes, name: str) -> tuple[dict, bytes]:
    from model_manager.jsonsafe import json_safe

    try:
        obj = safe_loads(data)
    except ArtifactError as exc:
        return {"status": "error", "code": exc.code, "message": str(exc)}, b""
    if not isinstance(obj, dict):
        return {"status": "error", "code": "info_not_dict",
                "message": f"{name} holds a {type(obj).__name__}, expected a dict of training metadata"}, b""
    return {"status": "ok"}, json.dumps(json_safe(obj), allow_nan=False).encode()


def _check(data: bytes, source: str, name: str, verify: bool = False) -> dict:
    """The work of one check (in the child): a JSON-able result; for a pickle, also the JSON."""
    import xgboost as xgb

    try:
        if source == "json":
            booster, model_json, warns = load_json_model(data, name), data, []
        else:
            original, warns = load_pickled_model(data, name) if source == "pkl" else (load_ubj_model(data, name), [])
            model_json = booster_json(original)
            booster = load_json_model(model_json, name)  # what engines will load
        info = model_info(booster, model_json, warns)
        rows = np.random.default_rng(0).normal(size=(8, max(info.num_features, 1))).astype(np.float32)
        rows[::3, ::2] = np.nan  # missing values take the default branches
        kwargs = {"feature_names": info.feature_names} if info.feature_names else {}
        try:
            booster.predict(xgb.DMatrix(rows, missing=np.nan, **kwargs))
        except xgb.core.XGBoostError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unknown error"
            raise ArtifactError(f"{name} loads but cannot predict: {first[:200]}", code="corrupt") from None
        verification = None
        if verify and source == "pkl":
            ok, verification = verify_predictions(original, booster)
            if not ok:
                raise ArtifactError(f"verification failed: {verification}", code="verify_failed")
    except ArtifactError as exc:
        return {"status": "error", "code": exc.code, "message": str(exc)}
    except MemoryError:
        raise
    except Exception as exc:  # xgboost or a reconstructor surprised by hostile bytes
        if "bad_alloc" in str(exc):  # XGBoost's C++ ran into the memory limit
            raise MemoryError from None
        return {"status": "error", "code": "corrupt",
                "message": f"{name} could not be loaded ({type(exc).__name__}: {str(exc)[:200]})"}
    return {"status": "ok", "info": info.as_dict(), "verification": verification,
            "json": model_json if source != "json" else None}


def _compare(data: bytes, dim: int, name: str) -> dict:
    from model_manager.versiondiff import compare_work

    (size,) = struct.unpack("<Q", data[:8])
    try:
        return {"status": "ok", "comparison": compare_work(data[8:8 + size], data[8 + size:], dim)}
    except Exception as exc:  # xgboost refusing a model: an error answer, not a dead child
        return {"status": "error", "code": "corrupt",
                "message": f"{name}: predictions could not be compared ({type(exc).__name__}: {str(exc)[:200]})"}
