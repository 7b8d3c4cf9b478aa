"""What a version record keeps of its model (`model_summary`): the tree count and the parameters,
for diffs. Made in the check process from the JSON it has just loaded (see `checkwork.py`), so the
server never parses a model's JSON again to summarise it."""
from __future__ import annotations

import json
import re
import sys
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

    In a process that has numpy loaded (the check process), JSON laid out as XGBoost writes it is
    summarised without parsing its trees (`_summary_with_numpy`); otherwise, or when the layout is
    not exactly that, it is parsed (`_parsed_summary`). Both give the same answer."""
    numpy = sys.modules.get("numpy")  # loaded in the check process, never imported for this
    quick = _summary_with_numpy(model_json, numpy) if numpy is not None else None
    return quick if quick is not None else _parsed_summary(model_json)


def _parsed_summary(model_json: bytes) -> dict:
    """Parsed with the per-node arrays the summary does not read emptied first (about 3 × faster on a
    300-tree model). When one of those keys sits where the summary does read values (a learner or
    objective parameter), the whole document is parsed instead, so the answer is the same."""
    learner = _learner(_STRIP.sub(rb"\1]", model_json))
    if learner is None or _reads_stripped(learner):
        learner = _learner(model_json)
    if learner is None:
        return {"num_trees": None, "params": {}}
    return _summary(learner)


# -- the same answer, in a few ms instead of ~15 for 300 trees, where numpy is at hand ---------------
_TREES = b'"trees":['
_TREE_END = b'"tree_param":{'
_CHILD_DIGITS = b"0123456789,-"


def _summary_with_numpy(text: bytes, np) -> dict | None:
    """`model_summary` of XGBoost's own JSON layout: the trees array cut out before parsing, and the
    depth of every tree taken from its `left_children`/`right_children` with numpy, all trees at once.
    None whenever the text is not laid out exactly as expected (then the general parse answers)."""
    if b"\\" in text:  # no escaped quote anywhere: `"key":[` and brackets occur only as structure
        return None
    start = text.find(_TREES)
    if start < 0 or text.find(_TREES, start + 1) >= 0:
        return None
    last = text.rfind(_TREE_END)
    close = text.find(b"}", last)
    if last < start or close < 0 or text[close + 1:close + 3] != b"}]":
        return None  # the trees array must end right after the last tree's tree_param
    end = close + 2  # the array's "]"
    learner = _learner(text[:start + len(_TREES)] + text[end:])
    if learner is None or trees_of(learner.get("gradient_booster") or {}) != []:
        return None
    depth = _deepest(text[start:end + 1], np)
    if depth is None:
        return None
    count, deepest = depth
    summary = _summary(learner)
    summary["num_trees"] = count
    if count:
        summary["params"] = dict(sorted({**summary["params"], "max_tree_depth": deepest}.items()))
    return summary


def _deepest(trees: bytes, np) -> tuple[int, int] | None:
    """(number of trees, the deepest leaf's depth) from the text of a trees array; None if any tree
    is not numbered as XGBoost numbers them (each child after its parent, within its tree)."""
    lefts, rights, pos = [], [], 0
    while (pos := trees.find(b'"left_children":[', pos)) >= 0:
        pos += 17
        lefts.append(trees[pos:trees.find(b"]", pos)])
    pos = 0
    while (pos := trees.find(b'"right_children":[', pos)) >= 0:
        pos += 18
        rights.append(trees[pos:trees.find(b"]", pos)])
    count = trees.count(_TREE_END)
    if len(lefts) != count or len(rights) != count or not count:
        return None
    sizes = [0 if not a else a.count(b",") + 1 for a in lefts]
    if sizes != [0 if not b else b.count(b",") + 1 for b in rights] or 0 in sizes:
        return None
    joined_left, joined_right = b",".join(lefts), b",".join(rights)
    if joined_left.translate(None, _CHILD_DIGITS) or joined_right.translate(None, _CHILD_DIGITS):
        return None
    try:
        left = np.fromstring(joined_left, dtype=np.int64, sep=",")  # (text mode: not deprecated)
        right = np.fromstring(joined_right, dtype=np.int64, sep=",")
    except (ValueError, Warning):  # "1,,2" and the like (a numpy that refuses what it cannot read to the end)
        return None
    if len(left) != sum(sizes) or len(right) != len(left):
        return None
    offsets = np.repeat(np.cumsum([0, *sizes[:-1]]), sizes)
    node = np.arange(len(left)) - offsets  # each node's number within its tree
    size = np.repeat(sizes, sizes)
    inner = left != -1
    if not ((node[inner] < left[inner]) & (left[inner] < size[inner])
            & (node[inner] < right[inner]) & (right[inner] < size[inner])).all():
        return None
    child_left, child_right = left + offsets, right + offsets
    frontier, depth = np.cumsum([0, *sizes[:-1]]), 0  # the roots
    while True:
        frontier = frontier[inner[frontier]]
        if not len(frontier):
            return count, depth
        frontier = np.concatenate((child_left[frontier], child_right[frontier]))
        depth += 1


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
