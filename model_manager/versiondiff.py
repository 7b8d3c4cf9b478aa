"""What changed between two versions of a group (SPEC §6 diff): factors, dim, IC, info, the model's
tree count and parameters, and how differently the two models predict on the same inputs.

Everything but the predictions comes from the small `detail` each version keeps in the store
(`version_detail`), so a diff works for pruned versions too. The predictions need both models' bytes:
they are loaded by XGBoost in a check process (`isolation.compare_predictions`), where a crash, a hang
or a huge model costs a child process and never the server.
"""
from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from model_manager.errors import ArtifactError, NotFoundError
from model_manager.modelsummary import trees_of

if TYPE_CHECKING:  # numpy only where predictions are made (a check process), not in a server
    import numpy as np

    from model_manager.versionrecords import VersionInfo
    from model_manager.versions import VersionStore

PREDICTION_ROWS = 1000
PREDICTION_SEED = 20240601


# -- what each version keeps for a diff ---------------------------------------------------------
def version_detail(factors: list[str], ic: dict | None, info: dict | None, dim: int | None, summary: dict) -> dict:
    """The inputs of a diff that one version keeps in its record (`summary`: the model's `model_summary`)."""
    return {"factors": list(factors), "ic": ic, "info": info, "dim": dim, **summary}


# -- the diff ------------------------------------------------------------------------------------
def diff_versions(store: VersionStore, model: str, group: str, from_version: int | None, to_version: int | None) -> dict:
    """The SPEC §6 diff object of two versions of a group (see `VersionStore.diff`). When predictions
    cannot be compared, `predictions` is null and `predictions_note` says why."""
    infos = {i.version: i for i in store.history(model, group)}
    if not infos:
        raise NotFoundError(f"no versions are recorded for {model}/{group}")
    to_v = max(infos) if to_version is None else to_version
    if from_version is None:
        older = [v for v in infos if v < to_v]
        if not older:
            raise NotFoundError(f"{model}/{group} has no version before v{to_v} to compare it with: name two versions to compare")
        from_version = max(older)
    a, b = store.get(model, group, from_version), store.get(model, group, to_v)
    listed = {v["version"]: v for v in store.versions(model, group)["versions"]}  # (with their live periods)
    out = {"from": listed[a.version], "to": listed[b.version], **diff_details(store.detail(a), store.detail(b))}
    out["predictions"], note = _predictions(store, a, b)
    if note:
        out["predictions_note"] = note
    return out


def _predictions(store: VersionStore, a: VersionInfo, b: VersionInfo) -> tuple[dict | None, str | None]:
    if a.dim is None or a.dim != b.dim:
        return None, f"the dims differ ({a.dim} vs {b.dim}): the models take different inputs"
    if a.pruned or b.pruned:
        return None, "a pruned version's model is no longer kept"
    try:
        return store.compare(a, b), None
    except ArtifactError as exc:
        return None, str(exc)


# -- the parts of a diff -------------------------------------------------------------------------
def diff_details(a: dict, b: dict) -> dict:
    """The diff object without `from`, `to` and `predictions` (those need the records and the bytes)."""
    return {
        "factors": _factor_changes(a.get("factors") or [], b.get("factors") or []),
        "dim": {"from": a.get("dim"), "to": b.get("dim")},
        "ic": _ic_deltas(a.get("ic"), b.get("ic"), b.get("factors") or [], a.get("factors") or []),
        "info": _changes(a.get("info") or {}, b.get("info") or {}, with_lists=True),
        "model": {"num_trees": {"from": a.get("num_trees"), "to": b.get("num_trees")},
                  "params": _changes(a.get("params") or {}, b.get("params") or {}, with_lists=False)},
    }


def _first_index(names: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i, name in enumerate(names):
        out.setdefault(name, i)
    return out


def _factor_changes(old: list[str], new: list[str]) -> dict:
    before, after = _first_index(old), _first_index(new)
    return {"added": [f for f in after if f not in before],
            "removed": [f for f in before if f not in after],
            "moved": [{"factor": f, "from_dim": before[f], "to_dim": i} for f, i in after.items()
                      if f in before and before[f] != i]}


def _ic_table(ic: dict | None) -> tuple[list[str], dict[str, dict[str, Any]]]:
    if not ic or not ic.get("columns"):
        return [], {}
    metrics = list(ic["columns"][1:])
    rows: dict[str, dict[str, Any]] = {}
    for row in ic.get("rows") or []:
        if row and row[0] not in rows:
            rows[row[0]] = dict(zip(metrics, row[1:]))
    return metrics, rows


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) else None


def _ic_deltas(old_ic: dict | None, new_ic: dict | None, new_factors: list[str], old_factors: list[str]) -> list[dict]:
    """One entry per factor (the new order, then factors only the old table has) and metric (the
    union of both tables' metric columns); `delta` is null when either side has no number."""
    old_metrics, old_rows = _ic_table(old_ic)
    new_metrics, new_rows = _ic_table(new_ic)
    metrics = new_metrics + [m for m in old_metrics if m not in new_metrics]
    order = list(dict.fromkeys([*new_factors, *new_rows, *old_factors, *old_rows]))
    out = []
    for factor in order:
        if factor not in old_rows and factor not in new_rows:
            continue
        for metric in metrics:
            a = _number(old_rows.get(factor, {}).get(metric))
            b = _number(new_rows.get(factor, {}).get(metric))
            out.append({"factor": factor, "metric": metric, "from": a, "to": b,
                        "delta": None if a is None or b is None else b - a})
    return out


def _changes(old: dict, new: dict, *, with_lists: bool) -> dict:
    """{"changed": {key: {"from","to"}}, "added": [key], "removed": [key]} for two flat-ish dicts;
    for model params (`with_lists=False`) additions and removals are changes from or to null."""
    changed = {k: {"from": old[k], "to": new[k]} for k in sorted(old.keys() & new.keys()) if old[k] != new[k]}
    added = sorted(new.keys() - old.keys())
    removed = sorted(old.keys() - new.keys())
    if not with_lists:
        changed.update({k: {"from": None, "to": new[k]} for k in added})
        changed.update({k: {"from": old[k], "to": None} for k in removed})
        return {"changed": dict(sorted(changed.items()))}
    return {"changed": changed, "added": added, "removed": removed}


# -- predictions (run in the check process) ------------------------------------------------------
def prediction_inputs(model_jsons: list[bytes], dim: int, rows: int = PREDICTION_ROWS,
                      seed: int = PREDICTION_SEED) -> np.ndarray:
    """Fixed pseudo-random inputs for `dim` features. Features may be in any unit, so each one is
    drawn uniformly around the range of the split thresholds both models use on it (standard normal
    for a feature no tree splits on): both models see inputs that reach their branches."""
    import numpy as np

    lo = np.full(dim, np.inf)
    hi = np.full(dim, -np.inf)
    for raw in model_jsons:
        try:
            trees = trees_of(json.loads(raw)["learner"]["gradient_booster"]) or []
        except (ValueError, KeyError, TypeError):
            trees = []
        for tree in trees:
            idx = np.asarray(tree.get("split_indices") or [], dtype=np.int64)
            cond = np.asarray(tree.get("split_conditions") or [], dtype=np.float64)
            left = np.asarray(tree.get("left_children") or [], dtype=np.int64)
            if not (len(idx) == len(cond) == len(left)):
                continue
            inner = (left != -1) & (idx >= 0) & (idx < dim) & np.isfinite(cond)
            np.minimum.at(lo, idx[inner], cond[inner])
            np.maximum.at(hi, idx[inner], cond[inner])
    rng = np.random.default_rng(seed)
    out = rng.standard_normal(size=(rows, dim))
    known = np.isfinite(lo)
    if known.any():
        span = np.maximum(hi[known] - lo[known], np.maximum(np.abs(hi[known]), 1.0) * 0.1)
        u = rng.random(size=(rows, int(known.sum())))
        out[:, known] = lo[known] - 0.1 * span + u * 1.2 * span
    return out.astype(np.float32)


def compare_work(model_a: bytes, model_b: bytes, dim: int, rows: int = PREDICTION_ROWS) -> dict:
    """Both models' predictions on the same inputs, compared (the work of a check child)."""
    import numpy as np
    import xgboost as xgb

    x = prediction_inputs([model_a, model_b], dim, rows)
    preds = []
    for raw in (model_a, model_b):
        booster = xgb.Booster()
        booster.load_model(bytearray(raw))
        booster.set_param({"nthread": 1})
        names = booster.feature_names
        preds.append(np.asarray(booster.predict(xgb.DMatrix(x, feature_names=names)), dtype=np.float64).ravel())
    return {**compare_predictions_arrays(preds[0], preds[1]), "rows": rows}


def compare_predictions_arrays(a: np.ndarray, b: np.ndarray) -> dict:
    """{"rows", "mean_abs_diff", "max_abs_diff", "correlation"}; correlation null when either is constant."""
    import numpy as np

    if a.shape != b.shape or a.size == 0:
        return {"rows": 0, "mean_abs_diff": None, "max_abs_diff": None, "correlation": None}
    diff = np.abs(a - b)
    corr = None
    if np.std(a) > 0 and np.std(b) > 0:
        corr = float(np.corrcoef(a, b)[0, 1])
    return {"rows": int(a.shape[0]), "mean_abs_diff": float(diff.mean()), "max_abs_diff": float(diff.max()),
            "correlation": corr if corr is None or math.isfinite(corr) else None}
