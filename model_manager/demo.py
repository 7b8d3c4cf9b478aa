"""A small, realistic model directory to try everything on.

Each symbol gets a trained XGBoost model (sklearn API, raw Booster, classifier, JSON-only and a
DataFrame-trained model with feature names), its factor list, an IC table with kendall_tau and a
training-metadata pickle with timestamps and numpy values — the shapes real training jobs leave.
"""
from __future__ import annotations

import datetime as dt
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd

from model_manager.files import atomic_write, private_dir

FACTOR_POOL = [
    "ofi_1m", "ofi_5m", "spread_bps", "depth_imb_5", "depth_imb_20", "trade_imb_1m", "trade_imb_5m",
    "vwap_dev_5m", "ret_lag_1m", "ret_lag_5m", "realized_vol_5m", "realized_vol_30m", "funding_rate",
    "oi_chg_15m", "basis_bps", "microprice_dev", "queue_imb_l1", "cancel_ratio_1m", "large_trade_flow",
    "btc_beta_ret_1m", "volume_z_15m", "kyle_lambda_5m",
]

# symbol, return name, number of factors, how the model is stored
DEMO_GROUPS = [
    ("SOLUSDT", "mid_chg_1m", 16, "sklearn"),
    ("BTCUSDT", "mid_chg_1m", 20, "booster"),
    ("ETHUSDT", "mid_chg_5m", 18, "json"),
    ("BNBUSDT", "mid_chg_1m", 12, "dataframe"),
    ("XRPUSDT", "mid_up_1m", 14, "classifier"),
    ("DOGEUSDT", "mid_chg_1m", 10, "sklearn"),
]

DEMO_NAME = "demo"


def _ic_table(x: np.ndarray, y: np.ndarray, factors: list[str]) -> pd.DataFrame:
    from scipy import stats

    rows = []
    for i, name in enumerate(factors):
        col = x[:, i]
        rows.append({
            "factor": name,
            "ic": float(np.corrcoef(col, y)[0, 1]),
            "rank_ic": float(stats.spearmanr(col, y).statistic),
            "kendall_tau": float(stats.kendalltau(col, y).statistic),
            "ic_ir": float(np.corrcoef(col, y)[0, 1] / 0.05),
        })
    return pd.DataFrame(rows)


def write_group(directory: Path, symbol: str, return_name: str, n_factors: int, kind: str, *,
                seed: int = 0, n_rows: int = 400, n_trees: int = 20) -> str:
    """Train one small model and write its artifacts; returns the group key."""
    import xgboost as xgb

    rng = np.random.default_rng(seed)
    factors = [FACTOR_POOL[(seed + i) % len(FACTOR_POOL)] if i < len(FACTOR_POOL) else f"factor_{i}" for i in range(n_factors)]
    factors = list(dict.fromkeys(factors)) + [f"factor_{i}" for i in range(n_factors - len(set(factors)))]
    x = rng.normal(size=(n_rows, n_factors)).astype(np.float32)
    weights = rng.normal(scale=0.3, size=n_factors) * (rng.random(n_factors) < 0.6)
    y = x @ weights + rng.normal(scale=1.0, size=n_rows)
    group = f"{symbol}_{return_name}"
    params = {"max_depth": 3, "eta": 0.1, "subsample": 0.8, "seed": seed, "nthread": 1}

    if kind == "classifier":
        target = (y > 0).astype(int)
        model = xgb.XGBClassifier(n_estimators=n_trees, max_depth=3, learning_rate=0.1, n_jobs=1, random_state=seed)
        model.fit(x, target)
        blob = pickle.dumps(model)
    elif kind == "sklearn":
        model = xgb.XGBRegressor(n_estimators=n_trees, max_depth=3, learning_rate=0.1, n_jobs=1, random_state=seed)
        model.fit(x, y)
        blob = pickle.dumps(model)
    elif kind == "dataframe":
        model = xgb.XGBRegressor(n_estimators=n_trees, max_depth=3, learning_rate=0.1, n_jobs=1, random_state=seed)
        model.fit(pd.DataFrame(x, columns=factors), y)
        blob = pickle.dumps(model)
    else:  # booster / json
        booster = xgb.train({**params, "objective": "reg:squarederror"}, xgb.DMatrix(x, label=y), num_boost_round=n_trees)
        blob = pickle.dumps(booster) if kind == "booster" else bytes(booster.save_raw(raw_format="json"))

    if kind == "json":
        atomic_write(directory / f"{group}_model.json", blob)
    else:
        atomic_write(directory / f"{group}_model.pkl", blob)
    atomic_write(directory / f"{group}_factors.txt", ("\n".join(factors) + "\n").encode())
    atomic_write(directory / f"{group}_ic.csv", _ic_table(x, y, factors).to_csv(index=False).encode())

    end = pd.Timestamp("2026-10-31 23:59:00", tz="UTC") - pd.Timedelta(days=seed)
    info = {
        "symbol": symbol,
        "return_name": return_name,
        "dim": np.int64(n_factors),
        "n_samples": np.int64(n_rows),
        "train_start": end - pd.Timedelta(days=30),
        "train_end": end,
        "created_at": dt.datetime(2026, 11, 1, 6, 30, tzinfo=dt.UTC),
        "model_kind": kind,
        "params": {"n_estimators": n_trees, "max_depth": 3, "learning_rate": np.float64(0.1), "subsample": 0.8},
        "metrics": {"train_ic": np.float32(np.corrcoef(x @ weights, y)[0, 1]), "valid_ic": np.float64(0.041), "valid_rmse": np.float64(1.02)},
        "feature_importance_top": pd.Series(np.abs(weights[:5]), index=factors[:5]),
    }
    atomic_write(directory / f"{group}_info.pkl", pickle.dumps(info))
    return group


def write_demo(directory: str | os.PathLike) -> list[str]:
    """Write the demo model directory (created if missing); returns the group keys written."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    return [write_group(path, sym, ret, n, kind, seed=i + 1) for i, (sym, ret, n, kind) in enumerate(DEMO_GROUPS)]


def ensure_demo(settings, store) -> Path:
    """Generate the demo directory under the data dir once, and register it as `demo`."""
    from model_manager.registration import validate_registration

    path = Path(settings.data_dir) / "demo-models"
    private_dir(path)  # under the data dir, like everything there: the files written into it are 0600
    if not any(path.glob("*_factors.txt")):
        write_demo(path)
    existing = store.get_model(DEMO_NAME)
    if existing is None:
        validate_registration(store, DEMO_NAME, str(path), max_bytes=settings.max_artifact_bytes)
        store.add_model(DEMO_NAME, str(path.resolve()), client="serve --demo")
    return path
