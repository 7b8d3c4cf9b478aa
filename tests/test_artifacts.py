"""The artifact module: scanning, tolerant parsing, safe loading, validation, payloads."""
from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from model_manager.artifacts import (
    build_payload_bytes,
    dim_factors,
    ignored_hint,
    load_directory,
    load_group,
    parse_factors,
    parse_ic,
    payload_head,
    scan_directory,
    split_artifact_name,
)
from model_manager.cache import CacheDir
from model_manager.errors import ArtifactError, PathError
from model_manager.jsonsafe import json_safe
from model_manager.store import Store
from model_manager.versions import VersionStore, candidate
from tests.support import FACTORS, N_FEATURES, write_group


def codes(group) -> set[str]:
    return {i.code for i in group.issues}


def test_scan_groups_files_and_ignores_the_rest(model_dir):
    (model_dir / "README.md").write_text("notes")
    (model_dir / ".SOLUSDT_mid_chg_1m_model.json.tmp").write_text("{")
    (model_dir / "._SOLUSDT_mid_chg_1m_factors.txt").write_text("x")
    groups, ignored = scan_directory(model_dir)
    assert set(groups) == {"SOLUSDT_mid_chg_1m", "BTCUSDT_mid_chg_1m", "ETHUSDT_mid_chg_5m"}
    assert groups["SOLUSDT_mid_chg_1m"] == {
        "factors.txt": "SOLUSDT_mid_chg_1m_factors.txt", "ic.csv": "SOLUSDT_mid_chg_1m_ic.csv",
        "info.pkl": "SOLUSDT_mid_chg_1m_info.pkl", "model.pkl": "SOLUSDT_mid_chg_1m_model.pkl"}
    # every file that is not part of a group is listed (hidden ones too), sorted
    assert ignored == [".SOLUSDT_mid_chg_1m_model.json.tmp", "._SOLUSDT_mid_chg_1m_factors.txt", "README.md"]
    assert split_artifact_name("_factors.txt") is None


def test_every_model_kind_loads_and_validates(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "AAAUSDT_ret", model=models["regressor"])
    write_group(d, "BBBUSDT_ret", model=models["classifier"])
    write_group(d, "CCCUSDT_ret", model=models["booster"])
    write_group(d, "DDDUSDT_ret", model=models["named"])
    write_group(d, "EEEUSDT_ret", model_json=bytes(models["booster"].save_raw(raw_format="json")))
    snap = load_directory(d)
    for key, group in snap.groups.items():
        assert group.status == "ok", (key, group.issues)
        assert group.dim == N_FEATURES
        restored = xgb.Booster()
        restored.load_model(bytearray(group.model_json))
        assert restored.num_features() == N_FEATURES
    assert snap.groups["EEEUSDT_ret"].model_source == "json"
    assert snap.groups["AAAUSDT_ret"].model_source == "pkl"


def test_json_wins_over_pkl(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_x", model=models["regressor"], model_json=bytes(models["booster"].save_raw(raw_format="json")))
    g = load_directory(d).groups["SOLUSDT_x"]
    assert g.model_source == "json"
    assert g.model_json == (d / "SOLUSDT_x_model.json").read_bytes()


def test_symbol_split_and_info_override(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "SOL_USDT_mid_chg_1m", model=models["regressor"], info={"symbol": "SOL_USDT", "return_name": "mid_chg_1m"})
    write_group(d, "BTCUSDT_mid_chg_1m", model=models["regressor"], info={"symbol": "ETHUSDT", "return_name": "other"})
    snap = load_directory(d)
    g = snap.groups["SOL_USDT_mid_chg_1m"]
    assert (g.symbol, g.return_name) == ("SOL_USDT", "mid_chg_1m")
    inconsistent = snap.groups["BTCUSDT_mid_chg_1m"]
    assert (inconsistent.symbol, inconsistent.return_name) == ("BTCUSDT", "mid_chg_1m")
    assert "info_name_mismatch" in codes(inconsistent) and inconsistent.status == "warning"


def test_messy_factor_files_are_tolerated():
    data = "\ufeff  ofi_1m \r\n\r\nspread_bps\r\n   \n\tdepth_imb_5\t\n".encode()
    assert parse_factors(data) == ["ofi_1m", "spread_bps", "depth_imb_5"]
    with pytest.raises(ArtifactError, match="UTF-8"):
        parse_factors(b"ofi\xff\xfe\n")
    with pytest.raises(ArtifactError, match="no factors"):
        parse_factors(b"\n \r\n")


@pytest.mark.parametrize("csv_text", [
    "factor,IC,Rank_IC,Kendall_Tau\nofi_1m,0.1,0.2,0.05\nspread_bps,nan,,-0.02\n",
    '\ufeff"factor_name","ic","kendall_tau","rank_ic"\r\n"ofi_1m","0.1","0.05","0.2"\r\n\r\n"spread_bps","NaN","-0.02",""\r\n',
    ",ic,rank_ic,kendall_tau\nofi_1m,0.1,0.2,0.05\nspread_bps,,,-0.02\n",
    "Name, ic , rank_ic, KENDALL_TAU\n ofi_1m , 0.1, 0.2, 0.05\nspread_bps, inf, null, -0.02\n",
])
def test_messy_ic_tables_are_tolerated(csv_text):
    ic, _notes = parse_ic(csv_text.encode("utf-8"))
    assert ic["columns"][0] == "factor"
    assert set(ic["columns"][1:]) == {"ic", "rank_ic", "kendall_tau"}
    rows = {r[0]: dict(zip(ic["columns"], r)) for r in ic["rows"]}
    assert rows["ofi_1m"]["ic"] == 0.1 and rows["ofi_1m"]["kendall_tau"] == 0.05
    assert rows["spread_bps"]["ic"] is None and rows["spread_bps"]["kendall_tau"] == -0.02


def test_ic_without_factor_column_is_an_error_naming_the_file(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_x", model=models["regressor"], ic="a,b\n1,2\n")
    g = load_directory(d).groups["SOLUSDT_x"]
    issue = next(i for i in g.issues if i.code == "ic_no_factor_column")
    assert issue.severity == "error" and issue.file == "SOLUSDT_x_ic.csv"


def test_missing_model_is_listed_with_an_error(tmp_path):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_x")
    g = load_directory(d).groups["SOLUSDT_x"]
    assert g.status == "error" and "missing_model" in codes(g)
    assert g.dim is None and g.model_source is None  # no model read: no dimension (not the factor count)
    assert g.summary()["dim"] is None and g.summary()["factor_count"] == N_FEATURES


def test_truncated_and_garbage_models_are_errors(tmp_path, models):
    d = tmp_path / "m"
    blob = pickle.dumps(models["regressor"])
    write_group(d, "AAA_x")
    (d / "AAA_x_model.pkl").write_bytes(blob[: len(blob) // 2])
    js = bytes(models["booster"].save_raw(raw_format="json"))
    write_group(d, "BBB_x", model_json=js[: len(js) // 2])
    write_group(d, "CCC_x", model_json=b"\x00\x01garbage")
    snap = load_directory(d)
    for key in ("AAA_x", "BBB_x", "CCC_x"):
        g = snap.groups[key]
        assert g.status == "error", key
        assert any(i.severity == "error" and i.file and i.file.endswith(("_model.pkl", "_model.json")) for i in g.issues), g.issues


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, models):
    d = tmp_path / "m"
    sentinel = tmp_path / "pwned"
    write_group(d, "AAA_x", model=models["regressor"])
    (d / "AAA_x_info.pkl").write_bytes(pickle.dumps({"x": _Evil(sentinel)}))
    write_group(d, "BBB_x")
    (d / "BBB_x_model.pkl").write_bytes(pickle.dumps(_Evil(sentinel)))
    snap = load_directory(d)
    assert not sentinel.exists()
    for key, file in (("AAA_x", "AAA_x_info.pkl"), ("BBB_x", "BBB_x_model.pkl")):
        issue = next(i for i in snap.groups[key].issues if i.code == "unsafe_pickle")
        assert issue.file == file and "system" in issue.message


def test_dimension_and_name_mismatches_are_errors(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "DIM_x", model=models["regressor"], factors=FACTORS[:4])
    write_group(d, "NAMES_x", model=models["named"], factors=list(reversed(FACTORS)))
    write_group(d, "INFO_x", model=models["regressor"], info={"dim": 7})
    snap = load_directory(d)
    assert "dim_mismatch" in codes(snap.groups["DIM_x"])
    assert "feature_names_mismatch" in codes(snap.groups["NAMES_x"])
    assert "info_dim_mismatch" in codes(snap.groups["INFO_x"])
    assert all(g.status == "error" for g in snap.groups.values())


def test_duplicate_symbols_are_detected(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    write_group(d, "SOLUSDT_mid_chg_5m", model=models["regressor"])
    assert load_directory(d).duplicate_symbols() == {"SOLUSDT": ["SOLUSDT_mid_chg_1m", "SOLUSDT_mid_chg_5m"]}


def test_old_version_warning_becomes_a_warning_issue(tmp_path, models):
    # A Booster pickle stamped as written by xgboost 1.7.6: XGBoost itself warns when it loads it
    # (in the model check process, so the warning is real, not patched in).
    raw = pickle.dumps(models["booster"])
    marker = b"version[#L" + (3).to_bytes(8, "big")
    start = raw.index(marker) + len(marker)
    stamped = raw[:start] + b"i\x01i\x07i\x06" + raw[start + 6:]
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_x")
    (d / "SOLUSDT_x_model.pkl").write_bytes(stamped)
    g = load_directory(d).groups["SOLUSDT_x"]
    assert g.status == "warning"
    assert [i.code for i in g.issues] == ["old_version"]
    assert "older version" in g.issues[0].message or "serialized model" in g.issues[0].message


def test_payload_structure(model_dir):
    g = load_directory(model_dir).groups["SOLUSDT_mid_chg_1m"]
    body = json.loads(build_payload_bytes("prod", g, g.model_json))
    assert body["model_name"] == "prod" and body["symbol"] == "SOLUSDT" and body["return_name"] == "mid_chg_1m"
    meta = body["payload"]["metadata"]
    assert meta["dim"] == N_FEATURES and meta["model_source"] == "pkl" and meta["n_samples"] == 80
    assert meta["train_start"] == "2026-10-01T00:00:00+00:00"
    assert len(meta["model_sha256"]) == 64
    assert [f["factor_name"] for f in body["payload"]["dim_factors"]] == FACTORS
    assert body["payload"]["dim_factors"][1] == {"dim": 1, "factor_name": "spread_bps", "kendall_tau": 0.025}
    booster = xgb.Booster()
    booster.load_model(bytearray(body["payload"]["model_json"].encode()))
    assert booster.num_features() == len(body["payload"]["dim_factors"])


def test_dim_factors_without_ic_have_null_tau(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_x", model=models["regressor"], ic="")
    g = load_directory(d).groups["SOLUSDT_x"]
    assert g.ic is None and all(f["kendall_tau"] is None for f in dim_factors(g))
    assert payload_head("m", g)["payload"]["metadata"]["group_key"] == "SOLUSDT_x"


def test_a_converted_models_json_is_taken_from_the_version_that_serves_it(tmp_path, model_dir):
    versions = VersionStore(Store(tmp_path / "db.sqlite"), tmp_path / "data")
    cache = CacheDir(tmp_path / "cache", models_elsewhere=versions)
    files, _ = scan_directory(model_dir)
    key = "SOLUSDT_mid_chg_1m"
    first = load_group(model_dir, key, files[key], cache=cache)
    assert first.model_json is not None and not list((tmp_path / "cache" / "json").iterdir())  # written once: in a version
    again = load_group(model_dir, key, files[key], cache=cache)
    assert again.model_json == first.model_json  # no version holds it yet: checked again
    recorded = versions.record(candidate("m", first, first.model_json))
    second = load_group(model_dir, key, files[key], cache=cache)
    assert second.model_json is None  # the check is cached and the JSON is in the version: nothing unpickled
    assert second.model_sha256 == first.model_sha256
    assert cache.model_json(first.model_sha256) == first.model_json
    # a version's blob gone is a miss, not a wrong answer: the model is checked again
    versions.blobs.path(recorded.version.blob_sha256).unlink()
    assert not cache.has_json(first.model_sha256) and cache.model_json(first.model_sha256) is None
    third = load_group(model_dir, key, files[key], cache=cache)
    assert third.model_json == first.model_json


def test_model_json_kept_by_an_earlier_release_is_read_and_checked(tmp_path, model_dir):
    cache = CacheDir(tmp_path / "cache")
    files, _ = scan_directory(model_dir)
    key = "SOLUSDT_mid_chg_1m"
    first = load_group(model_dir, key, files[key], cache=cache)
    kept = tmp_path / "cache" / "json" / f"{first.model_sha256}.json"
    kept.write_bytes(first.model_json)
    second = load_group(model_dir, key, files[key], cache=cache)
    assert second.model_json is None and cache.model_json(first.model_sha256) == first.model_json
    kept.write_bytes(b"{}")  # a damaged entry is a miss, not a wrong answer
    assert cache.model_json(first.model_sha256) is None and not kept.exists()
    third = load_group(model_dir, key, files[key], cache=cache)
    assert third.model_json == first.model_json


def test_bad_directories_raise_path_errors(tmp_path):
    with pytest.raises(PathError, match="does not exist"):
        load_directory(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(PathError, match="not a directory"):
        load_directory(tmp_path / "f")


def test_json_safe_never_raises():
    class Weird:
        def __str__(self):
            raise RuntimeError("no")

    loop: list = []
    loop.append(loop)
    value = {
        "i": np.int64(3), "f": np.float32(0.5), "nan": float("nan"), "inf": np.float64("inf"), "b": np.bool_(True),
        "ts": pd.Timestamp("2026-01-02 03:04:05", tz="UTC"), "naive": dt.datetime(2026, 1, 2), "d": dt.date(2026, 1, 2),
        "nat": pd.NaT, "td": pd.Timedelta(days=30), "arr": np.arange(3), "ser": pd.Series([1.0, np.nan], index=["a", "b"]),
        "df": pd.DataFrame({"x": [1, 2]}), "set": {3, 1}, "tuple": (1, "a"), 5: "int key", "weird": Weird(),
        "loop": loop, "bytes": b"\xff\x00", "dt64": np.datetime64("2026-01-02"),
    }
    out = json_safe(value)
    json.dumps(out, allow_nan=False)
    assert out["i"] == 3 and out["f"] == 0.5 and out["nan"] is None and out["inf"] is None and out["b"] is True
    assert out["ts"] == "2026-01-02T03:04:05+00:00" and out["nat"] is None
    assert out["ser"] == {"a": 1.0, "b": None} and out["arr"] == [0, 1, 2] and out["set"] == [1, 3]
    assert out["df"] == {"columns": ["x"], "index": [0, 1], "data": [[1], [2]]}
    assert out["5"] == "int key" and out["weird"] == "<unprintable Weird>" and out["loop"] == ["<cycle>"]


def test_core_imports_no_cli_or_web_framework():
    code = ("import sys, model_manager.artifacts, model_manager.registry, model_manager.watcher, model_manager.store, "
            "model_manager.conversion, model_manager.safepickle, model_manager.settings, model_manager.demo; "
            "print(sorted(m for m in ('typer', 'rich', 'litestar') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_server_never_imports_commands():
    code = ("import sys, model_manager.server.app; "
            "print(sorted(m for m in sys.modules if m.startswith('model_manager.commands')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ic_rows_with_extra_or_text_fields_are_warnings(tmp_path, models):
    d = tmp_path / "m"
    ic = "factor,ic,kendall_tau\n" + "".join(f"{f},0.1,0.2\n" for f in FACTORS[:-1]) + f"{FACTORS[-1]},oops,0.1,9\n"
    write_group(d, "SOLUSDT_x", model=models["regressor"], ic=ic)
    g = load_directory(d).groups["SOLUSDT_x"]
    assert g.status == "warning"
    messages = [i.message for i in g.issues if i.code == "ic_format"]
    assert any("non-numeric values in ic" in m for m in messages) and len(messages) == 2
    assert g.ic["rows"][-1] == [FACTORS[-1], None, 0.1]


# -- several model files: precedence and agreement -------------------------------------------------
def booster_json_of(model) -> bytes:
    booster = model if isinstance(model, xgb.Booster) else model.get_booster()
    return bytes(booster.save_raw(raw_format="json"))


def age(path, seconds: float) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_a_stale_json_beside_a_retrained_pickle_is_an_error(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_x", model=models["classifier"], model_json=booster_json_of(models["regressor"]))
    age(d / "SOLUSDT_x_model.json", 3600)  # converted an hour ago; the pickle was retrained since
    cache = CacheDir(tmp_path / "cache")
    for _ in range(2):  # checked, then from the cache by content hash: the same verdict
        g = load_directory(d, cache=cache).groups["SOLUSDT_x"]
        issue = next(i for i in g.issues if i.code == "model_files_disagree")
        assert g.status == "error" and issue.severity == "error"
        assert issue.file == "SOLUSDT_x_model.json"  # the older one: probably stale
        assert "SOLUSDT_x_model.json" in issue.message and "SOLUSDT_x_model.pkl" in issue.message
        assert "delete the stale one" in issue.message and "model-manager convert --force" in issue.message
        assert g.model_source == "json" and g.dim == N_FEATURES


def test_agreeing_model_files_are_ok_however_they_were_saved(tmp_path, models):
    d = tmp_path / "m"
    reg = models["regressor"]
    write_group(d, "AAA_x", model=reg, model_json=booster_json_of(reg))  # what `convert` writes
    write_group(d, "BBB_x", model=reg)
    reg.save_model(d / "BBB_x_model.json")  # sklearn's save_model adds its own attributes: still the same model
    reg.save_model(d / "BBB_x_model.ubj")
    write_group(d, "CCC_x", model=reg)
    reg.save_model(d / "CCC_x_model.ubj")
    snap = load_directory(d)
    assert {k: g.status for k, g in snap.groups.items()} == {"AAA_x": "ok", "BBB_x": "ok", "CCC_x": "ok"}, \
        {k: g.issues for k, g in snap.groups.items()}
    assert [(g.model_source, g.model_file) for g in snap.groups.values()] == [
        ("json", "AAA_x_model.json"), ("json", "BBB_x_model.json"), ("ubj", "CCC_x_model.ubj")]


def test_convert_then_retrain_then_convert_again(tmp_path, models):
    from .support import run_cli

    d = tmp_path / "m"
    write_group(d, "SOLUSDT_x", model=models["regressor"])
    assert run_cli("convert", str(d)).returncode == 0
    assert load_directory(d).groups["SOLUSDT_x"].status == "ok"
    (d / "SOLUSDT_x_model.pkl").write_bytes(pickle.dumps(models["classifier"]))  # the retrain
    g = load_directory(d).groups["SOLUSDT_x"]
    assert "model_files_disagree" in codes(g) and g.status == "error"
    assert run_cli("convert", "--force", str(d / "SOLUSDT_x_model.pkl")).returncode == 0  # what the message says
    g = load_directory(d).groups["SOLUSDT_x"]
    assert g.status == "ok" and g.model_json == booster_json_of(models["classifier"])


def test_ubj_model_is_read_like_json(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_x")
    models["named"].save_model(d / "SOLUSDT_x_model.ubj")
    assert (d / "SOLUSDT_x_model.ubj").read_bytes()[:1] == b"{" and (d / "SOLUSDT_x_model.ubj").read_bytes()[1:2] != b'"'
    cache = CacheDir(tmp_path / "cache")
    g = load_directory(d, cache=cache).groups["SOLUSDT_x"]
    assert g.status == "ok", g.issues
    assert (g.model_source, g.model_file, g.dim) == ("ubj", "SOLUSDT_x_model.ubj", N_FEATURES)
    body = json.loads(build_payload_bytes("m", g, g.model_json))
    assert body["payload"]["metadata"]["model_source"] == "ubj"
    served, original = xgb.Booster(), xgb.Booster()
    served.load_model(bytearray(body["payload"]["model_json"].encode()))  # JSON text, not UBJSON
    original.load_model(d / "SOLUSDT_x_model.ubj")
    x = xgb.DMatrix(np.random.default_rng(0).normal(size=(50, N_FEATURES)).astype(np.float32), feature_names=FACTORS)
    assert served.predict(x).tobytes() == original.predict(x).tobytes()
    versions = VersionStore(Store(tmp_path / "db.sqlite"), tmp_path / "data")
    cache.models_elsewhere = versions
    versions.record(candidate("m", g, g.model_json))
    again = load_directory(d, cache=cache).groups["SOLUSDT_x"]  # the conversion is cached like a pickle's
    assert again.model_json is None and cache.model_json(again.model_sha256) == g.model_json


def test_ubj_disagreeing_with_json_is_an_error_and_precedence_is_json_ubj_pkl(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_x", model_json=booster_json_of(models["regressor"]))
    models["classifier"].save_model(d / "SOLUSDT_x_model.ubj")
    write_group(d, "BTCUSDT_x", model=models["classifier"])
    models["regressor"].save_model(d / "BTCUSDT_x_model.ubj")
    snap = load_directory(d)
    sol, btc = snap.groups["SOLUSDT_x"], snap.groups["BTCUSDT_x"]
    assert sol.model_source == "json" and btc.model_source == "ubj"
    for g, names in ((sol, ("SOLUSDT_x_model.json", "SOLUSDT_x_model.ubj")), (btc, ("BTCUSDT_x_model.ubj", "BTCUSDT_x_model.pkl"))):
        issue = next(i for i in g.issues if i.code == "model_files_disagree")
        assert all(n in issue.message for n in names) and "save both again" in issue.message


def test_json_and_ubj_in_each_others_files_say_to_rename(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "AAA_x", model_json=bytes(models["booster"].save_raw(raw_format="ubj")))
    write_group(d, "BBB_x")
    (d / "BBB_x_model.ubj").write_bytes(booster_json_of(models["booster"]))
    snap = load_directory(d)
    a = next(i for i in snap.groups["AAA_x"].issues if i.code == "wrong_format")
    b = next(i for i in snap.groups["BBB_x"].issues if i.code == "wrong_format")
    assert "rename it to AAA_x_model.ubj" in a.message and "rename it to BBB_x_model.json" in b.message
    assert snap.groups["AAA_x"].dim is None and snap.groups["BBB_x"].dim is None


# -- files that are not read ---------------------------------------------------------------------
def test_unused_files_are_listed_with_did_you_mean_hints(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_x", model=models["regressor"])
    write_group(d, "BTCUSDT_x", model=models["regressor"])
    (d / "BTCUSDT_x_factors.txt").rename(d / "BTCUSDT_x_factor.txt")
    write_group(d, "ETHUSDT_x")
    (d / "ETHUSDT_x_model.bin").write_bytes(bytes(models["booster"].save_raw(raw_format="ubj")))
    write_group(d, "XRPUSDT_x")
    models["regressor"].save_model(d / "XRPUSDT_x_model.ubj")  # a UBJSON-only group has a model
    for name in ("README.md", ".DS_Store", "train.yaml", "SOLUSDT_x_IC.csv", "SOLUSDT_x_info.pickle"):
        (d / name).write_text("x")
    (d / "old").mkdir()
    snap = load_directory(d)
    hints = {e["file"]: e["hint"] for e in snap.ignored}
    assert list(hints) == sorted(hints) and json.loads(json.dumps(snap.ignored)) == snap.ignored
    assert set(hints) == {".DS_Store", "BTCUSDT_x_factor.txt", "ETHUSDT_x_model.bin", "README.md", "SOLUSDT_x_IC.csv",
                          "SOLUSDT_x_info.pickle", "old/", "train.yaml"}
    assert hints["README.md"] is None and hints[".DS_Store"] is None and hints["train.yaml"] is None
    assert "did you mean BTCUSDT_x_factors.txt?" in hints["BTCUSDT_x_factor.txt"]
    assert "did you mean SOLUSDT_x_info.pkl?" in hints["SOLUSDT_x_info.pickle"]
    assert "SOLUSDT_x_ic.csv is the file that is read" in hints["SOLUSDT_x_IC.csv"]
    assert all(n in hints["ETHUSDT_x_model.bin"] for n in ("ETHUSDT_x_model.json", "ETHUSDT_x_model.ubj", "ETHUSDT_x_model.pkl"))
    assert "subdirectory" in hints["old/"]
    btc = next(i for i in snap.groups["BTCUSDT_x"].issues if i.code == "missing_factors")
    assert "BTCUSDT_x_factor.txt" in btc.message and "did you mean BTCUSDT_x_factors.txt?" in btc.message
    eth = next(i for i in snap.groups["ETHUSDT_x"].issues if i.code == "missing_model")
    assert "ETHUSDT_x_model.bin" in eth.message and "not a supported model format" in eth.message
    xrp = snap.groups["XRPUSDT_x"]
    assert "missing_model" not in codes(xrp) and xrp.model_source == "ubj"


@pytest.mark.parametrize(("name", "hint"), [
    ("SOLUSDT_x_factor.txt", "did you mean SOLUSDT_x_factors.txt?"),
    ("SOLUSDT_x-ic.csv", "did you mean SOLUSDT_x_ic.csv?"),
    ("SOLUSDT_x_model.JSON", "did you mean SOLUSDT_x_model.json?"),
    ("SOLUSDT_x_model.pickle", "did you mean SOLUSDT_x_model.pkl?"),
    ("SOLUSDT_x_modle.json", "did you mean SOLUSDT_x_model.json?"),
    ("SOLUSDT_x_factors.csv", "read only from SOLUSDT_x_factors.txt"),
    ("SOLUSDT_x_model.json.bak", "backup"),
    ("factors.txt", "no group key"),
    ("SOLUSDT_x_topic.csv", None),
    ("notes.txt", None),
])
def test_near_miss_hints(name, hint):
    got = ignored_hint(name)
    assert (got is None) if hint is None else (hint in got), got


def test_missing_ic_is_a_warning(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_x", model=models["regressor"], ic="")
    write_group(d, "BTCUSDT_x", model=models["regressor"], ic="factor,ic\n" + "".join(f"{f},0.1\n" for f in FACTORS))
    snap = load_directory(d)
    g = snap.groups["SOLUSDT_x"]
    assert g.status == "warning" and [(i.severity, i.code) for i in g.issues] == [("warning", "missing_ic")]
    assert "kendall_tau" in g.issues[0].message
    assert all(f["kendall_tau"] is None for f in json.loads(build_payload_bytes("m", g, g.model_json))["payload"]["dim_factors"])
    assert codes(snap.groups["BTCUSDT_x"]) == {"ic_no_kendall_tau"} and snap.groups["BTCUSDT_x"].status == "warning"


def test_an_unreadable_model_has_no_dimension(tmp_path, models):
    d = tmp_path / "m"
    blob = pickle.dumps(models["regressor"])
    write_group(d, "SOLUSDT_x")
    (d / "SOLUSDT_x_model.pkl").write_bytes(blob[: len(blob) // 2])
    g = load_directory(d).groups["SOLUSDT_x"]
    assert g.status == "error" and g.dim is None and g.summary()["dim"] is None and g.detail("m")["dim"] is None
    assert g.summary()["factor_count"] == N_FEATURES and g.model_source == "pkl"


def test_directory_problems_are_counted(tmp_path, models):
    d = tmp_path / "m"
    write_group(d, "SOLUSDT_mid_chg_1m", model=models["regressor"])
    write_group(d, "SOLUSDT_mid_chg_5m", model=models["regressor"])
    write_group(d, "BTCUSDT_mid_chg_1m", model=models["regressor"], ic="")
    snap = load_directory(d)
    assert {g.status for g in snap.groups.values()} == {"ok", "warning"}  # every group parses fine...
    assert snap.status == "error"  # ...but the server refuses the directory
    assert snap.counts() == {"ok": 2, "warning": 1, "error": 0, "problems": 1}
    [problem] = snap.problems
    assert problem.severity == "error" and problem.code == "duplicate_symbol"
    assert "SOLUSDT_mid_chg_1m" in problem.message and "SOLUSDT_mid_chg_5m" in problem.message
    (d / "SOLUSDT_mid_chg_5m_model.pkl").unlink()
    for f in d.glob("SOLUSDT_mid_chg_5m_*"):
        f.unlink()
    fine = load_directory(d)
    assert fine.problems == [] and fine.status == "warning" and fine.counts()["problems"] == 0


GROUP = "SOLUSDT_mid_chg_1m"


def _two_trainings(tmp_path, training_data) -> tuple[dict, dict, Path]:
    """Two trainings of one group (the same dim, other factors, no feature names): their files'
    bytes by name, their models' sha256 by tag, and a model directory holding training "a"."""
    x, y = training_data
    trainings, shas = {}, {}
    for tag, seed in (("a", 1), ("b", 2)):
        source = tmp_path / tag
        model = xgb.XGBRegressor(n_estimators=3 + seed, max_depth=2, n_jobs=1, random_state=seed).fit(x, y)
        write_group(source, GROUP, model=model, factors=[f"{tag}_{f}" for f in FACTORS],
                    info={"symbol": "SOLUSDT", "return_name": "mid_chg_1m", "dim": N_FEATURES, "training": tag})
        trainings[tag] = {p.name: p.read_bytes() for p in sorted(source.iterdir())}
        shas[tag] = load_group(source, GROUP, scan_directory(source)[0][GROUP]).model_sha256
    directory = tmp_path / "models"
    directory.mkdir()
    for name, data in trainings["a"].items():
        (directory / name).write_bytes(data)
    return trainings, shas, directory


def _training_of(group, shas: dict) -> str:
    """The training a group's snapshot is of; AssertionError when its files came from both."""
    model = next((tag for tag, sha in shas.items() if sha == group.model_sha256), "?")
    tags = {group.factors[0].split("_")[0], group.info["training"], model}
    assert len(tags) == 1, f"a read mixed trainings: {tags}"
    return tags.pop()


def test_a_group_whose_files_change_while_it_is_read_is_read_again(tmp_path, training_data):
    """A training job replaces a group's files one by one. Here the whole of training "b" lands after
    the model and info.pkl of "a" were read and before factors.txt is: a read that went on would pair
    b's factor list with a's model (the same dim, no feature names: nothing else can tell)."""
    from model_manager.artifacts.load import DEFAULT_MAX_BYTES, _finished, _GroupLoad
    from tests.support import replace_file

    trainings, shas, directory = _two_trainings(tmp_path, training_data)
    load = _GroupLoad(directory.resolve(), GROUP, scan_directory(directory)[0][GROUP], None, DEFAULT_MAX_BYTES)
    for name, data in trainings["b"].items():
        replace_file(directory / name, data)
    group = next(_finished([load]))
    assert _training_of(group, shas) == "b" and "files_changed" not in codes(group)


def test_a_group_read_while_trainings_keep_landing_is_never_a_mix(tmp_path, training_data):
    """Two trainings written over each other, a moment apart, while the group is read many times:
    every read is one training, whole, or a `files_changed` error (never served)."""
    import threading

    from tests.support import replace_file

    trainings, shas, directory = _two_trainings(tmp_path, training_data)
    stop = threading.Event()

    def train() -> None:  # file by file, as a training job does (each one renamed into place)
        pauses = iter(np.random.default_rng(7).uniform(0, 0.4, size=100_000))
        while not stop.is_set():
            for tag in ("b", "a"):
                for name, data in trainings[tag].items():
                    replace_file(directory / name, data)
                stop.wait(next(pauses))  # the next training comes a moment later

    writer = threading.Thread(target=train)
    writer.start()
    try:
        files = scan_directory(directory)[0][GROUP]
        for _ in range(20):
            group = load_group(directory, GROUP, files)
            if "files_changed" not in codes(group):
                _training_of(group, shas)
    finally:
        stop.set()
        writer.join(10)
