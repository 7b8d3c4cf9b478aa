"""The benchmark workload: model directories shaped like production ones.

Every group has a pickled XGBoost model of 300 trees, depth 6, 150 features (about 1.8 MB of JSON),
its factor list, an IC table and a training-metadata pickle. Training such a model takes a while
on two cores, so a few base models are trained once and kept under the work directory; each group
then gets a copy whose bytes are made unique by a booster attribute naming the group. The server
therefore converts every group (its conversion cache is content-addressed, so identical bytes would
be converted only once), while building 200 groups takes seconds.

`build_directory(..., shared=True)` hard-links a few distinct model files instead: the cheap way to
lay out 1000 groups for the refresh test, where only the number of groups matters.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np

from bench.tools import built_before, mark_built

TREES, DEPTH, FEATURES = 300, 6, 150
BASE_MODELS = 3           # distinct trained models the groups are copied from
TRAIN_ROWS = 2000
RETURN_NAME = "mid_chg_1m"
SPEC_VERSION = 2          # bump when the layout below changes: cached directories are rebuilt
FACTOR_POOL = [f"{kind}_{window}" for kind in ("ofi", "trade_imb", "depth_imb", "vwap_dev", "ret_lag", "rvol",
                                                "spread", "queue_imb", "oi_chg", "basis", "funding", "kyle_lambda",
                                                "cancel_ratio", "volume_z", "micro_dev", "beta_ret")
               for window in ("1s", "5s", "15s", "30s", "1m", "3m", "5m", "10m", "15m", "30m", "1h", "4h", "1d")]


def symbol_of(i: int) -> str:
    return f"S{i:04d}USDT"


def group_key_of(i: int) -> str:
    return f"{symbol_of(i)}_{RETURN_NAME}"


def _log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


# -- base models --------------------------------------------------------------------------------
def base_model_paths(work: Path) -> list[Path]:
    return [work / "models" / f"base_{TREES}x{DEPTH}x{FEATURES}_{k}.pkl" for k in range(BASE_MODELS)]


def train_base_models(work: Path) -> list[Path]:
    """Train the base models once (cached under `work/models`); returns their pickle paths."""
    import xgboost as xgb

    paths = base_model_paths(work)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for k, path in enumerate(paths):
        if path.exists():
            continue
        started = time.perf_counter()
        rng = np.random.default_rng(100 + k)
        x = rng.normal(size=(TRAIN_ROWS, FEATURES)).astype(np.float32)
        weights = rng.normal(size=FEATURES) * (rng.random(FEATURES) < 0.3)
        y = x @ weights + np.sin(x[:, 0] * x[:, 1]) + rng.normal(scale=0.5, size=TRAIN_ROWS)
        params = dict(n_estimators=TREES, max_depth=DEPTH, learning_rate=0.05, subsample=0.8, colsample_bytree=0.8,
                      tree_method="hist", n_jobs=1, random_state=k)  # n_jobs>1 spins on a busy box
        if k % 3 == 2:  # one in three: a raw Booster, as xgb.train leaves it
            model = xgb.train({"max_depth": DEPTH, "eta": 0.05, "subsample": 0.8, "colsample_bytree": 0.8,
                               "tree_method": "hist", "seed": k, "nthread": 1}, xgb.DMatrix(x, label=y), num_boost_round=TREES)
        else:
            model = xgb.XGBRegressor(**params).fit(x, y)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, path)
        _log(f"trained base model {k + 1}/{BASE_MODELS} in {time.perf_counter() - started:.1f} s")
    return paths


def variant_bytes(base: bytes, tag: str) -> bytes:
    """The base model re-pickled with a booster attribute `bench_tag=tag`: same trees, unique bytes."""
    import xgboost as xgb

    model = pickle.loads(base)
    booster = model if isinstance(model, xgb.Booster) else model.get_booster()
    booster.set_attr(bench_tag=tag)
    return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)


# -- one group ----------------------------------------------------------------------------------
def _side_files(i: int, features: int = FEATURES, trees: int = TREES) -> dict[str, bytes]:
    """factors.txt, ic.csv and info.pkl of group i (deterministic)."""
    import pandas as pd

    rng = np.random.default_rng(i)
    factors = [FACTOR_POOL[j] for j in rng.permutation(len(FACTOR_POOL))[:features]]
    ic = rng.normal(scale=0.03, size=features)
    lines = ["factor,ic,rank_ic,kendall_tau,ic_ir"]
    lines += [f"{f},{v:.6f},{v * 0.9:.6f},{v * 0.6:.6f},{v / 0.05:.4f}" for f, v in zip(factors, ic)]
    info = {
        "symbol": symbol_of(i), "return_name": RETURN_NAME, "dim": np.int64(features),
        "train_start": pd.Timestamp("2026-01-01", tz="UTC"), "train_end": pd.Timestamp("2026-03-01", tz="UTC"),
        "n_samples": np.int64(1_250_000 + i), "valid_ic": np.float64(ic.mean()),
        "params": {"n_estimators": trees, "max_depth": DEPTH, "learning_rate": 0.05},
    }
    return {"factors.txt": ("\n".join(factors) + "\n").encode(), "ic.csv": ("\n".join(lines) + "\n").encode(),
            "info.pkl": pickle.dumps(info)}


def write_group(directory: Path, i: int, model_bytes: bytes | None = None, *, link_from: Path | None = None,
                features: int = FEATURES, trees: int = TREES) -> None:
    key = group_key_of(i)
    for kind, data in _side_files(i, features, trees).items():
        (directory / f"{key}_{kind}").write_bytes(data)
    target = directory / f"{key}_model.pkl"
    if link_from is not None:
        os.link(link_from, target)
    else:
        target.write_bytes(model_bytes or b"")


def build_directory(work: Path, groups: int, *, shared: bool = False) -> Path:
    """A model directory of `groups` groups under `work/workload/` (reused when already complete)."""
    bases = train_base_models(work)
    name = f"{'shared' if shared else 'distinct'}-{groups}"
    directory = work / "workload" / name
    spec = json.dumps({"version": SPEC_VERSION, "groups": groups, "shared": shared, "trees": TREES,
                       "depth": DEPTH, "features": FEATURES})
    if built_before(directory, spec):
        return directory
    started = time.perf_counter()
    base_bytes = [p.read_bytes() for p in bases]
    for i in range(groups):
        if shared:
            write_group(directory, i, link_from=bases[i % len(bases)])
        else:
            write_group(directory, i, variant_bytes(base_bytes[i % len(bases)], group_key_of(i)))
    mark_built(directory, spec)
    _log(f"built {name} ({groups} groups) in {time.perf_counter() - started:.1f} s")
    return directory


def subset_directory(source: Path, target: Path, groups: int) -> Path:
    """A fresh directory holding the first `groups` groups of `source` as hard links (no copying)."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for i in range(groups):
        key = group_key_of(i)
        for kind in ("factors.txt", "ic.csv", "info.pkl", "model.pkl"):
            os.link(source / f"{key}_{kind}", target / f"{key}_{kind}")
    return target


def replace_model_atomically(directory: Path, i: int, model_bytes: bytes) -> None:
    """Write a new model for group i beside it under a dot-name and rename it over the old one."""
    final = directory / f"{group_key_of(i)}_model.pkl"
    tmp = directory / f".{final.name}.tmp"
    tmp.write_bytes(model_bytes)
    os.replace(tmp, final)


# -- the irreducible work -----------------------------------------------------------------------
def irreducible_work(directory: Path, groups: int, gzip_level: int) -> dict:
    """Single-threaded floor of a cold start: for every group, unpickle the model, save_raw("json")
    and gzip the JSON at the server's level with the standard library's zlib (the reference the
    targets were set against). Reading the files comes first and is not timed. The gzip step is also
    timed alone, and once more with the server's own compressor (`model_manager.gz`: libdeflate),
    so the report can show the reference with either."""
    import gzip

    import xgboost as xgb

    from model_manager.gz import gzip_bytes

    blobs = [(directory / f"{group_key_of(i)}_model.pkl").read_bytes() for i in range(groups)]
    raw_total = gz_total = own_total = 0
    gzip_cpu = own_cpu = own_seconds = 0.0
    started, cpu_started = time.perf_counter(), time.process_time()
    for blob in blobs:
        model = pickle.loads(blob)
        booster = model if isinstance(model, xgb.Booster) else model.get_booster()
        text = bytes(booster.save_raw(raw_format="json"))
        raw_total += len(text)
        before = time.process_time()
        gz_total += len(gzip.compress(text, gzip_level, mtime=0))
        gzip_cpu += time.process_time() - before
        # not part of the reference: the same text compressed as the server does, its time taken out below
        wall, before = time.perf_counter(), time.process_time()
        own_total += len(gzip_bytes(text, gzip_level))
        own_cpu += time.process_time() - before
        own_seconds += time.perf_counter() - wall
    seconds = time.perf_counter() - started - own_seconds
    cpu = time.process_time() - cpu_started - own_cpu
    return {"seconds": seconds, "cpu_seconds": cpu, "model_json_bytes": raw_total, "model_json_gzip_bytes": gz_total,
            "gzip_cpu_seconds": gzip_cpu, "server_gzip_cpu_seconds": own_cpu, "model_json_server_gzip_bytes": own_total,
            "seconds_with_server_gzip": seconds - gzip_cpu + own_cpu}


def model_check_seconds(directory: Path, sample: int = 10) -> float | None:
    """Seconds per model of the server's own model check (`isolation.check_model`, which since the
    loaders were isolated runs in a forked child: unpickle, save_raw, load the JSON back, predict a
    few rows), one model at a time; None when this version has no such check."""
    try:
        from model_manager.isolation import check_model
    except ImportError:
        return None
    blobs = [(directory / f"{group_key_of(i)}_model.pkl").read_bytes() for i in range(sample)]
    check_model(blobs[0], "pkl", "warm-up")  # starts the helper process
    started = time.perf_counter()
    for i, blob in enumerate(blobs):
        check_model(blob, "pkl", f"{group_key_of(i)}_model.pkl")
    return (time.perf_counter() - started) / len(blobs)
