"""What a version record keeps of its model (`model_summary`): the tree count and the parameters,
for diffs. Made in the check process from the JSON it has just loaded (see `checkwork.py`), so the
server never parses a model's JSON again to summarise it."""
from __future__ import annotations

import json
import re
from typing import Any

# The per-node arrays of XGBoost's JSON trees that a summary does not read: most of a model's bytes,
# and all of its floats (what makes parsing it slow). `left_children` and `right_children` stay.
_NODE_ARRAYS = ("base_weights", "loss_changes", "sum_hessian", "split_conditions", "split_indices",
                "default_left", "split_type", "parents", "categories", "categories_nodes",
                "categories_segments", "categories_sizes", "tree_info", "iteration_indptr")
# a key of that list opening an array that holds only number characters. In valid JSON a `"` outside
# a string starts a key or a string, so this never matches inside a string value
_STRIP = re.compile(rb'("(?:' + b"|".join(k.encode() for k in _NODE_ARRAYS) + rb')":\s*\[)[-+0-9.eE,\s]*\]')
_STRIPPED = frozenset(_NODE_ARRAYS)


def model_summary(model_json: bytes) -> dict:
    """{"num_trees": int|None, "params": {flat name: value}} from an XGBoost JSON model.

    Parsed with the per-node arrays the summary does not read emptied first (about 3 × faster on a
    300-tree model). When one of those keys sits where the summary does read values (a learner or
    objective parameter), the whole document is parsed instead, so the answer is the same."""
    learner = _learner(_STRIP.sub(rb"\1]", model_json))
    if learner is None or _reads_stripped(learner):
        learner = _learner(model_json)
    if learner is None:
        return {"num_trees": None, "params": {}}
    return _summary(learner)


def _learner(text: bytes) -> dict | None:
    try:
        learner = json.loads(text)["learner"]
    except (ValueError, KeyError, TypeError):
        return None
    return learner if isinstance(learner, dict) else None


def _reads_stripped(learner: dict) -> bool:
    sections = [learner.get("learner_model_param"), learner.get("objective")]
    objective = learner.get("objective")
    if isinstance(objective, dict):
        sections += [v for v in objective.values() if isinstance(v, dict)]
    return any(isinstance(s, dict) and not _STRIPPED.isdisjoint(s) for s in sections)


def _summary(learner: dict) -> dict:
    booster = learner.get("gradient_booster", {})
    params: dict[str, Any] = {"booster": booster.get("name")}
    trees = trees_of(booster)
    for key, value in (learner.get("learner_model_param") or {}).items():
        params[key] = value
    objective = learner.get("objective") or {}
    params["objective"] = objective.get("name")
    for section, values in objective.items():
        if isinstance(values, dict):
            for key, value in values.items():
                params[f"{section}.{key}"] = value
    sklearn = (learner.get("attributes") or {}).get("scikit_learn")
    if isinstance(sklearn, str):
        try:
            for key, value in (json.loads(sklearn) or {}).items():
                if not key.startswith("_") and isinstance(value, str | int | float | bool | type(None)):
                    params[f"sklearn.{key}"] = value
        except (ValueError, AttributeError):
            pass
    if trees:
        params["max_tree_depth"] = max(_depth(t) for t in trees)  # the depth the trees really reached
    return {"num_trees": len(trees) if trees is not None else None,
            "params": {k: v for k, v in sorted(params.items()) if v is not None}}


def trees_of(booster: dict) -> list | None:
    """The trees of a JSON `gradient_booster` (gbtree or dart), or None."""
    model = booster.get("model") or (booster.get("gbtree") or {}).get("model")  # gbtree / dart
    trees = (model or {}).get("trees")
    return trees if isinstance(trees, list) else None


def _depth(tree: dict) -> int:
    """The depth of a tree's deepest leaf. XGBoost numbers a node's children after it, so one pass
    in node order gives every node's depth; a tree numbered otherwise takes the walk below."""
    left, right = tree.get("left_children") or [], tree.get("right_children") or []
    n = len(left)
    if not n:
        return 0
    if len(right) == n:
        depth = [0] * n
        for node, (a, b) in enumerate(zip(left, right)):
            if a == -1:
                continue
            if not (isinstance(a, int) and isinstance(b, int) and node < a < n and node < b < n):
                return _depth_walk(left, right)
            depth[a] = depth[b] = depth[node] + 1
        return max(depth)
    return _depth_walk(left, right)


def _depth_walk(left: list, right: list) -> int:
    deepest, stack = 0, [(0, 0)] if left else []
    while stack:
        node, depth = stack.pop()
        if not (0 <= node < len(left)) or depth > len(left):  # malformed: stop, never loop
            continue
        deepest = max(deepest, depth)
        if left[node] != -1:
            stack.append((left[node], depth + 1))
            if node < len(right):
                stack.append((right[node], depth + 1))
    return deepest
