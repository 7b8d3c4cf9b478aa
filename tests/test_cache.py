"""The conversion and payload cache: superseded entries are swept, live ones stay."""
from __future__ import annotations

import os
import pickle
import time

from model_manager.service import ModelManager
from model_manager.settings import Settings

from .conftest import write_group


def _age(directory, seconds=3600):
    old = time.time() - seconds
    for path in directory.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))


def test_sweep_removes_superseded_entries_and_keeps_live_ones(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    write_group(d, "BTCUSDT_mid_chg_1m", model=models["booster"])
    settings = Settings(data_dir=tmp_path / "data", watch_enabled=False)
    manager = ModelManager(settings)
    registry = manager.serve()
    model = manager.register("m", str(d)).model
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
    restarted = ModelManager(settings).serve()
    restarted.sync_registrations()
    assert restarted.payload("m", "SOLUSDT").etag == registry.payload("m", "SOLUSDT").etag


def test_sweep_spares_young_entries(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    settings = Settings(data_dir=tmp_path / "data", watch_enabled=False)
    manager = ModelManager(settings)
    registry = manager.serve()
    manager.register("m", str(d))
    manager.unregister("m")
    assert registry.sweep_cache() == 0  # unused now, but written moments ago: a load may still need it
    _age(settings.cache_dir)
    assert registry.sweep_cache() >= 3
    assert not any((settings.cache_dir / "payloads").iterdir())
