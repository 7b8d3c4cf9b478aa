"""The version summary of a model (`modelsummary.model_summary`): the quick path the check process
takes must answer exactly what parsing the whole JSON answers, for every kind of model."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from model_manager.modelsummary import _parsed_summary, _summary_with_numpy, model_summary
from tests.support import training_data


def _models() -> dict[str, bytes]:
    x, y = training_data()
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(x, columns=['a"q', "b}", "c\\d", "ünï", "e"])
    cats = pd.DataFrame({"k": pd.Categorical(rng.choice(["u", "v", "w"], size=len(y))), "x": x[:, 0]})

    def fit(params, data=x, label=y, rounds=6, **kw):
        return xgb.train({"nthread": 1, **params}, xgb.DMatrix(data, label=label, **kw), num_boost_round=rounds)

    boosters = {
        "depthwise": fit({"max_depth": 4}),
        "lossguide": fit({"tree_method": "hist", "grow_policy": "lossguide", "max_leaves": 9, "max_depth": 0}),
        "dart": fit({"booster": "dart", "max_depth": 3, "rate_drop": 0.3}),
        "forest": fit({"num_parallel_tree": 3, "subsample": 0.8, "colsample_bynode": 0.8, "max_depth": 3}, rounds=2),
        "multiclass": fit({"objective": "multi:softprob", "num_class": 3, "max_depth": 3},
                          label=(np.abs(y) * 3).astype(int) % 3),
        "stumps": fit({"max_depth": 1}),
        "single leaves": fit({"max_depth": 3, "min_child_weight": 1e6}),
        "odd feature names": fit({"max_depth": 3}, data=frame),
        "categorical": fit({"max_depth": 3, "tree_method": "hist"}, data=cats, enable_categorical=True),
        "multi-output trees": fit({"tree_method": "hist", "multi_strategy": "multi_output_tree", "max_depth": 3},
                                  label=np.stack([y, -y], axis=1)),
        "gblinear": fit({"booster": "gblinear"}),
    }
    models = {name: bytes(b.save_raw(raw_format="json")) for name, b in boosters.items()}
    sklearn = xgb.XGBRegressor(n_estimators=4, max_depth=2, n_jobs=1).fit(x, y)
    models["sklearn"] = bytes(sklearn.get_booster().save_raw(raw_format="json"))
    return models


MODELS = _models()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_quick_summary_is_the_parsed_summary(name):
    text = MODELS[name]
    parsed = _parsed_summary(text)
    assert model_summary(text) == parsed
    quick = _summary_with_numpy(text, np)
    assert quick is None or quick == parsed
    if name not in ("odd feature names", "gblinear"):  # (backslashes, no trees: the parse answers)
        assert quick == parsed, "XGBoost's own layout takes the quick path"


def test_trees_numbered_otherwise_are_parsed():
    """A tree whose children are not numbered after their parent (valid JSON, not XGBoost's way) is
    left to the parse, which walks it."""
    doc = json.loads(MODELS["depthwise"])
    tree = doc["learner"]["gradient_booster"]["model"]["trees"][0]
    n = len(tree["left_children"])
    order = [0, *reversed(range(1, n))]  # renumber every node but the root backwards
    where = {old: new for new, old in enumerate(order)}
    for key in ("left_children", "right_children"):
        old = tree[key]
        tree[key] = [-1 if old[o] == -1 else where[old[o]] for o in order]
    text = json.dumps(doc, separators=(",", ":")).encode()
    assert _summary_with_numpy(text, np) is None
    assert model_summary(text) == _parsed_summary(text)
    assert _parsed_summary(text)["params"]["max_tree_depth"] == _parsed_summary(MODELS["depthwise"])["params"]["max_tree_depth"]
