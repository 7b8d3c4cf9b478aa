"""Shared fixtures: tiny real XGBoost models and model directories built from them."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from model_manager.demo import write_demo

N_FEATURES = 5
FACTORS = ["ofi_1m", "spread_bps", "depth_imb_5", "ret_lag_1m", "vol_5m"]


@pytest.fixture(scope="session")
def training_data():
    rng = np.random.default_rng(42)
    x = rng.normal(size=(80, N_FEATURES)).astype(np.float32)
    y = x @ np.array([0.5, -0.2, 0.0, 0.3, 0.1]) + rng.normal(scale=0.1, size=80)
    return x, y


@pytest.fixture(scope="session")
def models(training_data):
    """One tiny model of each kind that real training jobs leave behind."""
    x, y = training_data
    reg = xgb.XGBRegressor(n_estimators=5, max_depth=2, n_jobs=1).fit(x, y)
    clf = xgb.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(x, (y > 0).astype(int))
    booster = xgb.train({"max_depth": 2, "nthread": 1}, xgb.DMatrix(x, label=y), num_boost_round=5)
    named = xgb.XGBRegressor(n_estimators=5, max_depth=2, n_jobs=1).fit(pd.DataFrame(x, columns=FACTORS), y)
    return {"regressor": reg, "classifier": clf, "booster": booster, "named": named}


def write_group(directory: Path, group_key: str, *, model=None, model_json: bytes | None = None,
                factors: list[str] | None = None, ic: str | None = None, info: dict | None = None) -> None:
    """Write one group's files; pass exactly what the test needs."""
    directory.mkdir(parents=True, exist_ok=True)
    factors = FACTORS if factors is None else factors
    (directory / f"{group_key}_factors.txt").write_text("\n".join(factors) + "\n")
    if ic is None:
        ic = "factor,ic,rank_ic,kendall_tau\n" + "".join(f"{f},0.0{i + 1},0.02,0.0{i + 1}5\n" for i, f in enumerate(factors))
    if ic:
        (directory / f"{group_key}_ic.csv").write_text(ic)
    if info is not None:
        (directory / f"{group_key}_info.pkl").write_bytes(pickle.dumps(info))
    if model is not None:
        (directory / f"{group_key}_model.pkl").write_bytes(pickle.dumps(model))
    if model_json is not None:
        (directory / f"{group_key}_model.json").write_bytes(model_json)


@pytest.fixture
def model_dir(tmp_path, models):
    """A clean directory: SOLUSDT (regressor pkl), BTCUSDT (raw Booster pkl), ETHUSDT (JSON only)."""
    d = tmp_path / "models"
    info = {"symbol": "SOLUSDT", "return_name": "mid_chg_1m", "dim": np.int64(N_FEATURES),
            "train_start": pd.Timestamp("2026-10-01", tz="UTC"), "n_samples": np.int64(80)}
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"], info=info)
    write_group(d, "BTCUSDT_mid_chg_1m", model=models["booster"])
    write_group(d, "ETHUSDT_mid_chg_5m", model_json=bytes(models["booster"].save_raw(raw_format="json")))
    return d


@pytest.fixture(scope="session")
def _demo_template(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo-template")
    write_demo(d)
    return d


@pytest.fixture
def demo_dir(tmp_path, _demo_template):
    """A fresh copy of the demo model directory (trained once per session)."""
    d = tmp_path / "demo-models"
    shutil.copytree(_demo_template, d)
    return d
