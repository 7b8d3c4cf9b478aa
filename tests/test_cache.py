"""The conversion and payload cache: superseded entries are swept, live ones stay."""
from __future__ import annotations

import os
import pickle
import time

from model_manager.registry import Registry
from model_manager.store import Store
from tests.support import write_group


def _age(directory, seconds=3600):
    old = time.time() - seconds
    for path in directory.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))


def test_sweep_removes_superseded_entries_and_keeps_live_ones(tmp_path, settings, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    write_group(d, "BTCUSDT_mid_chg_1m", model=models["booster"])
    registry = Registry(settings, Store(settings.db_path))
    model, _ = registry.register("m", str(d))
    cache = settings.cache_dir
    before = {p.name for p in (cache / "payloads").iterdir()} | {p.name for p in (cache / "json").iterdir()}
    assert registry.sweep_cache() == 0  # everything is live (and young)

    # retrain SOLUSDT twice: each version leaves a JSON and a payload behind
    for seed in (1, 2):
        (d / "SOLUSDT_mid_chg_1m_model.pkl").write_bytes(pickle.dumps(models["named"] if seed == 1 else models["classifier"]))
        registry.refresh("m")
    _age(cache)
    removed = registry.sweep_cache()
    assert removed >= 4  # two superseded versions: json + .gz + .meta.json each (at least)
    after = {p.name for p in (cache / "payloads").iterdir()} | {p.name for p in (cache / "json").iterdir()}
    live_payload = model.groups["SOLUSDT_mid_chg_1m"].payload.cache_key
    assert f"{live_payload}.gz" in after and f"{live_payload}.meta.json" in after
    assert model.groups["SOLUSDT_mid_chg_1m"].snapshot.model_sha256 + ".json" in after
    btc = model.groups["BTCUSDT_mid_chg_1m"].payload.cache_key
    assert f"{btc}.gz" in after and f"{btc}.gz" in before
    # the server still serves both, and a restart still finds everything it needs in the cache
    assert registry.payload("m", "SOLUSDT").etag and registry.payload("m", "BTCUSDT").etag
    restarted = Registry(settings, Store(settings.db_path))
    restarted.sync_with_store()
    assert restarted.payload("m", "SOLUSDT").etag == registry.payload("m", "SOLUSDT").etag


def test_sweep_spares_young_entries(tmp_path, settings, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    registry = Registry(settings, Store(settings.db_path))
    registry.register("m", str(d))
    registry.unregister("m")
    assert registry.sweep_cache() == 0  # unused now, but written moments ago: a load may still need it
    _age(settings.cache_dir)
    assert registry.sweep_cache() >= 3
    assert not any((settings.cache_dir / "payloads").iterdir())
