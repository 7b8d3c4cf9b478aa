"""The cache dir and the versions' payload bytes: superseded entries are swept, live ones stay."""
from __future__ import annotations

import os
import pickle
import time

from model_manager.service import ModelManager
from tests.support import write_group


def _age(directory, seconds=3600):
    old = time.time() - seconds
    for path in directory.rglob("*"):
        if path.is_file():
            os.utime(path, (old, old))


def _files(directory) -> set[str]:
    return {p.name for p in directory.rglob("*") if p.is_file()}


def test_sweep_removes_superseded_entries_and_keeps_live_ones(tmp_path, settings, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    write_group(d, "BTCUSDT_mid_chg_1m", model=models["booster"])
    manager = ModelManager(settings)
    registry = manager.serve()
    model = manager.register("m", str(d)).model
    cache = settings.cache_dir
    registry.plain_body(registry.payload("m", "BTCUSDT"))  # a plain body is kept for clients without gzip
    first_sol = registry.payload("m", "SOLUSDT")
    registry.plain_body(first_sol)
    before = _files(cache)
    assert registry.sweep_cache() == 0  # everything is live (and young)

    # retrain SOLUSDT twice: its first payload's plain body is superseded; its versions are kept
    for seed in (1, 2):
        (d / "SOLUSDT_mid_chg_1m_model.pkl").write_bytes(pickle.dumps(models["named"] if seed == 1 else models["classifier"]))
        registry.refresh("m")
    assert not any((cache / "json").iterdir())  # a converted model's JSON is kept in its versions only
    sol = model.groups["SOLUSDT_mid_chg_1m"]
    # JSON an earlier release kept: the live model's stays, a superseded one goes
    (cache / "json" / f"{sol.snapshot.model_sha256}.json").write_bytes(b"{}")
    (cache / "json" / f"{'0' * 64}.json").write_bytes(b"{}")
    _age(settings.data_dir)
    removed = registry.sweep_cache()
    after = _files(cache)
    superseded_plain = f"raw-{first_sol.etag.strip(chr(34))}.json"
    assert removed >= 2 and superseded_plain in before and superseded_plain not in after
    assert f"{'0' * 64}.json" not in after and f"{sol.snapshot.model_sha256}.json" in after
    assert sol.payload.version == 3
    btc = model.groups["BTCUSDT_mid_chg_1m"].payload
    plain = f"raw-{btc.etag.strip(chr(34))}.json"
    assert plain in before and plain in after
    # every version is still kept (MODEL_MANAGER_KEEP_VERSIONS), so a rollback has its bytes
    for version in (1, 2, 3):
        assert registry.version_payload("m", "SOLUSDT", version).version == version
    # the server still serves both, and a restart still finds everything it needs
    assert registry.payload("m", "SOLUSDT").etag and registry.payload("m", "BTCUSDT").etag
    restarted = ModelManager(settings).serve()
    restarted.sync_registrations()
    assert restarted.payload("m", "SOLUSDT").etag == registry.payload("m", "SOLUSDT").etag


def test_sweep_spares_young_entries(tmp_path, settings, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    manager = ModelManager(settings)
    registry = manager.serve()
    manager.register("m", str(d))
    registry.plain_body(registry.payload("m", "SOLUSDT"))
    manager.unregister("m")
    kept = _files(settings.cache_dir)
    registry.sweep_cache()  # an unregistered model's version bytes go at once (their records stay) ...
    assert _files(settings.cache_dir) == kept  # ... the cache is unused now, but young: a load may still need it
    _age(settings.data_dir)
    assert registry.sweep_cache() >= 1  # the plain body
    assert not any((settings.cache_dir / "payloads").iterdir())
    assert not any(p.suffix == ".gz" for p in (settings.data_dir / "versions").rglob("*"))
