"""The allow-list unpickler: real artifacts load and predict identically; hostile pickles are
refused with the offending global named, and a sentinel proves nothing in them ran."""
from __future__ import annotations

import base64
import collections
import copyreg
import datetime
import importlib
import os
import pickle
import sys
import tempfile
import zoneinfo
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_manager.errors import ArtifactError, UnsafePickleError
from model_manager.pickle_checks import known_zones
from model_manager.safepickle import _STAND_INS, ALLOWED_GLOBALS, _resolve, safe_loads
from tests import hostile_pickles as hp

PROTOCOLS = (2, 4, 5)


# -- real models --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    return x, x @ np.array([0.5, -0.2, 0.1, 0.3], dtype=np.float32) + rng.normal(scale=0.1, size=50)


@pytest.fixture(scope="module")
def models(xy):
    x, y = xy
    label = (y > 0).astype(int)
    small = {"n_estimators": 4, "max_depth": 2, "n_jobs": 1}
    return {
        "booster": xgb.train({"max_depth": 2, "nthread": 1}, xgb.DMatrix(x, label=y), num_boost_round=4),
        "regressor": xgb.XGBRegressor(**small).fit(x, y),
        "classifier": xgb.XGBClassifier(**small).fit(x, label),
        "ranker": xgb.XGBRanker(**small).fit(x, label, qid=np.repeat(np.arange(5), 10)),
        "rf_regressor": xgb.XGBRFRegressor(**small).fit(x, y),
        "rf_classifier": xgb.XGBRFClassifier(**small).fit(x, label),
        "named_features": xgb.XGBRegressor(**small).fit(pd.DataFrame(x, columns=["ofi", "spread", "depth", "vol"]), y),
    }


def predictions(model, x):
    if isinstance(model, xgb.Booster):
        return model.predict(xgb.DMatrix(x))
    if hasattr(model, "predict_proba"):
        return model.predict_proba(x)
    if model.get_booster().feature_names:
        return model.predict(pd.DataFrame(x, columns=model.get_booster().feature_names))
    return model.predict(x)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", ["booster", "regressor", "classifier", "ranker", "rf_regressor", "rf_classifier",
                                  "named_features"])
def test_real_models_load_and_predict_bit_identically(models, xy, kind, protocol):
    model = models[kind]
    loaded = safe_loads(pickle.dumps(model, protocol=protocol))
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(predictions(loaded, xy[0]), predictions(model, xy[0]))
    booster = loaded if isinstance(loaded, xgb.Booster) else loaded.get_booster()
    assert booster.num_features() == 4


# -- realistic info dicts -----------------------------------------------------------------
def realistic_info() -> dict:
    """What training jobs put in `{group}_info.pkl`."""
    days = pd.date_range("2026-01-01", periods=3, freq="D")
    return {
        "symbol": "SOLUSDT", "return_name": "mid_chg_1m",
        "train_start": pd.Timestamp("2026-01-05 09:30", tz="Asia/Shanghai"),
        "train_end": pd.Timestamp("2026-03-01", tz="UTC"),
        "created": pd.Timestamp("2026-03-02 12:00:01.5"),
        "created_dt": datetime.datetime(2026, 3, 2, 12, 0, tzinfo=datetime.UTC),
        "london": datetime.datetime(2026, 3, 2, 8, 0, tzinfo=zoneinfo.ZoneInfo("Europe/London")),
        "fixed_offset": datetime.datetime(2026, 3, 2, tzinfo=datetime.timezone(datetime.timedelta(hours=8))),
        "day": datetime.date(2026, 3, 2), "session_open": datetime.time(9, 30), "horizon": datetime.timedelta(minutes=1),
        "window": pd.Timedelta("30min"), "no_end": pd.NaT, "no_value": pd.NA,
        "dim": np.int64(5), "eta": np.float32(0.05), "score": np.float64(0.123), "ok": np.bool_(True),
        "when": np.datetime64("2026-01-01T00:00:00", "ns"),
        "weights": np.linspace(0, 1, 5, dtype=np.float32), "matrix": np.arange(6).reshape(2, 3),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "names": np.array(["ofi", "spread"]),
        "mixed": np.array([1, "a", None], dtype=object), "record": np.zeros(2, dtype=[("a", "<i4"), ("b", ">f8")]),
        "dtype": np.dtype("float32"), "float_type": np.float32,
        "ic_by_day": pd.Series([0.01, np.nan, 0.03], index=pd.date_range("2026-01-01", periods=3, tz="UTC"), name="ic"),
        "samples": pd.DataFrame({"n": [10, 20, 30], "ret": [0.1, -0.2, np.nan], "regime": pd.Categorical(["bull", "bear", "bull"]),
                                 "note": ["a", "b", "c"], "nullable": pd.array([1, None, 3], dtype="Int64"),
                                 "flag": pd.array([True, None, False], dtype="boolean"),
                                 "at": days.tz_localize("Asia/Shanghai"), "lag": pd.to_timedelta([1, 2, 3], unit="s")},
                                index=days),
        "regime": pd.Categorical(["bull", "bear", "bull"], categories=["bear", "bull"], ordered=True),
        "strings": pd.Series(["a", None], dtype="string"),
        "period": pd.Period("2026-01", freq="M"), "quarters": pd.period_range("2026Q1", periods=2, freq="Q"),
        "buckets": pd.IntervalIndex.from_breaks([0.0, 0.5, 1.0]), "interval": pd.Interval(0.0, 1.0),
        "pairs": pd.MultiIndex.from_tuples([("SOL", 1), ("BTC", 2)], names=["sym", "k"]),
        "kinds": pd.CategoricalIndex(["x", "y", "x"]), "lags": pd.timedelta_range("1min", periods=2),
        "params": {"max_depth": 6, "eta": 0.05, "objective": "reg:squarederror", "missing": float("nan"), "seed": 7},
        "folds": [[0, 1, 2], [3, 4], (5, 6)], "feature_set": {"ofi", "spread"}, "frozen": frozenset({1, 2}),
        "ordered": collections.OrderedDict(a=1, b=2), "by_symbol": collections.defaultdict(list, {"SOLUSDT": [1, 2]}),
        "cplx": 1 + 2j, "blob": b"\x00\xff", "raw": bytearray(b"abc"), "span": range(3), "cut": slice(1, 5, 2),
    }


def assert_same(got, want, where="info"):
    """Deep equality that also checks types, dtypes and time zones."""
    assert type(got) is type(want), f"{where}: {type(got)} != {type(want)}"
    if want is pd.NaT or want is pd.NA or isinstance(want, type):
        assert got is want, where
    elif isinstance(want, pd.DataFrame):
        pd.testing.assert_frame_equal(got, want)
    elif isinstance(want, pd.Series):
        pd.testing.assert_series_equal(got, want)
    elif isinstance(want, pd.Index):
        pd.testing.assert_index_equal(got, want, exact=True)
    elif isinstance(want, pd.Categorical):
        assert got.dtype == want.dtype and got.equals(want), where
    elif isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape and got.flags.f_contiguous == want.flags.f_contiguous
        if want.dtype.hasobject:
            assert got.tolist() == want.tolist(), where
        else:
            assert got.tobytes() == want.tobytes(), where
    elif isinstance(want, dict):
        assert list(got) == list(want), where
        assert getattr(got, "default_factory", None) is getattr(want, "default_factory", None)
        for key in want:
            assert_same(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for n, (a, b) in enumerate(zip(got, want)):
            assert_same(a, b, f"{where}[{n}]")
    elif isinstance(want, float) and want != want:
        assert got != got, where
    else:
        assert got == want, where
        if isinstance(want, datetime.datetime):
            assert got.isoformat() == want.isoformat() and str(got.tzinfo) == str(want.tzinfo), where


@pytest.mark.parametrize("protocol", (0, 1, *PROTOCOLS))
def test_realistic_info_dict_loads_equal(protocol):
    info = realistic_info()
    loaded = safe_loads(pickle.dumps(info, protocol=protocol))
    assert_same(loaded, info)
    assert_same(loaded, pickle.loads(pickle.dumps(info, protocol=protocol)))


# A real info.pkl written by pandas 1.5.3 + numpy 1.26.4 (pytz zones, Int64Index, numpy.core.*):
#   info = {"symbol": "SOLUSDT", "return_name": "mid_chg_1m",
#           "train_start": pd.Timestamp("2024-01-01 09:30", tz="Asia/Shanghai"),
#           "train_end": pd.Timestamp("2024-03-01", tz="UTC"),
#           "fixed_offset": pd.Timestamp("2024-01-01 00:00+08:00"), "naive": pd.Timestamp("2024-01-02 03:04:05"),
#           "nat": pd.NaT, "window": pd.Timedelta("30min"), "n_samples": np.int64(1234), "eta": np.float32(0.05),
#           "weights": np.arange(4, dtype=np.float64),
#           "ic_by_day": pd.Series([0.1, 0.2, np.nan], index=pd.date_range("2024-01-01", periods=3, tz="Asia/Shanghai"),
#                                  name="ic"),
#           "folds": pd.DataFrame({"fold": [1, 2], "ic": [0.03, 0.04]}, index=pd.Index([10, 20])),
#           "by_price": pd.Series([1.0, 2.0], index=[1.5, 2.5]), "regime": pd.Categorical(["bull", "bear", "bull"])}
#   pickle.dumps(info, protocol=4)
PANDAS_1_5_INFO = """
gASV+woAAAAAAAB9lCiMBnN5bWJvbJSMB1NPTFVTRFSUjAtyZXR1cm5fbmFtZZSMCm1pZF9jaGdfMW2UjAt0cmFpbl9zdGFydJSM
HnBhbmRhcy5fbGlicy50c2xpYnMudGltZXN0YW1wc5SME191bnBpY2tsZV90aW1lc3RhbXCUk5QoiggA8HlKABWmF06MBHB5dHqU
jAJfcJSTlCiMDUFzaWEvU2hhbmdoYWmUTYBwSwCMA0NTVJR0lFKUSwp0lFKUjAl0cmFpbl9lbmSUaAgoiggAAOkP6Xq4F05oCYwE
X1VUQ5STlClSlEsKdJRSlIwMZml4ZWRfb2Zmc2V0lGgIKIoIAACge+X1pRdOaAmMC0ZpeGVkT2Zmc2V0lJOUTeABhZRSlEsKdJRS
lIwFbmFpdmWUaAgoiggAMgEwt2imF05OSwp0lFKUjANuYXSUjBtwYW5kYXMuX2xpYnMudHNsaWJzLm5hdHR5cGWUjA5fX25hdF91
bnBpY2tsZZSTlE6FlFKUjAZ3aW5kb3eUjB5wYW5kYXMuX2xpYnMudHNsaWJzLnRpbWVkZWx0YXOUjBNfdGltZWRlbHRhX3VucGlj
a2xllJOUigYAUFwYowFLCoaUUpSMCW5fc2FtcGxlc5SMFW51bXB5LmNvcmUubXVsdGlhcnJheZSMBnNjYWxhcpSTlIwFbnVtcHmU
jAVkdHlwZZSTlIwCaTiUiYiHlFKUKEsDjAE8lE5OTkr/////Sv////9LAHSUYkMI0gQAAAAAAACUhpRSlIwDZXRhlGgxaDSMAmY0
lImIh5RSlChLA2g4Tk5OSv////9K/////0sAdJRiQwTNzEw9lIaUUpSMB3dlaWdodHOUaC+MDF9yZWNvbnN0cnVjdJSTlGgyjAdu
ZGFycmF5lJOUSwCFlEMBYpSHlFKUKEsBSwSFlGg0jAJmOJSJiIeUUpQoSwNoOE5OTkr/////Sv////9LAHSUYolDIAAAAAAAAAAA
AAAAAAAA8D8AAAAAAAAAQAAAAAAAAAhAlHSUYowJaWNfYnlfZGF5lIwScGFuZGFzLmNvcmUuc2VyaWVzlIwGU2VyaWVzlJOUKYGU
fZQojARfbWdylIwecGFuZGFzLmNvcmUuaW50ZXJuYWxzLm1hbmFnZXJzlIwSU2luZ2xlQmxvY2tNYW5hZ2VylJOUKYGUKF2UjB1w
YW5kYXMuY29yZS5pbmRleGVzLmRhdGV0aW1lc5SMEl9uZXdfRGF0ZXRpbWVJbmRleJSTlGhhjA1EYXRldGltZUluZGV4lJOUfZQo
jARkYXRhlIwTcGFuZGFzLl9saWJzLmFycmF5c5SMHF9fcHl4X3VucGlja2xlX05EQXJyYXlCYWNrZWSUk5SMHHBhbmRhcy5jb3Jl
LmFycmF5cy5kYXRldGltZXOUjA1EYXRldGltZUFycmF5lJOUSrhcVQ1Oh5RSlIwZcGFuZGFzLmNvcmUuZHR5cGVzLmR0eXBlc5SM
D0RhdGV0aW1lVFpEdHlwZZSTlCmBlH2UKIwEdW5pdJSMAm5zlIwCdHqUaAsoaAxN6HFLAIwDTE1UlHSUUpR1YmhHaElLAIWUaEuH
lFKUKEsBSwOFlGg0jAJNOJSJiIeUUpQoSwRoOE5OTkr/////Sv////9LAH2UKEMCbnOUSwFLAUsBdJSGlHSUYolDGAAAoHvl9aUX
AADvDHpEphcAAD6eDpOmF5R0lGJ9lIwFX2ZyZXGUjBtwYW5kYXMuX2xpYnMudHNsaWJzLm9mZnNldHOUjANEYXmUk5RLAYmGlFKU
c4eUYowEbmFtZZROdYaUUpRhXZRoR2hJSwCFlGhLh5RSlChLAUsDhZRoUYlDGJqZmZmZmbk/mpmZmZmZyT8AAAAAAAD4f5R0lGJh
XZRoY2hlfZQoaGdoamhtSrhcVQ1Oh5RSlGhzaEdoSUsAhZRoS4eUUpQoSwFLA4WUaIGJQxgAAKB75fWlFwAA7wx6RKYXAAA+ng6T
pheUdJRifZRoimiNSwGJhpRSlHOHlGJokU51hpRSlGF9lIwGMC4xNC4xlH2UKIwEYXhlc5RoYIwGYmxvY2tzlF2UfZQojAZ2YWx1
ZXOUaJeMCG1ncl9sb2NzlIwIYnVpbHRpbnOUjAVzbGljZZSTlEsASwNLAYeUUpR1YXVzdJRijARfdHlwlIwGc2VyaWVzlIwJX21l
dGFkYXRhlF2UaJFhjAVhdHRyc5R9lIwGX2ZsYWdzlH2UjBdhbGxvd3NfZHVwbGljYXRlX2xhYmVsc5SIc2iRjAJpY5R1YowFZm9s
ZHOUjBFwYW5kYXMuY29yZS5mcmFtZZSMCURhdGFGcmFtZZSTlCmBlH2UKGhbaFyMDEJsb2NrTWFuYWdlcpSTlIwWcGFuZGFzLl9s
aWJzLmludGVybmFsc5SMD191bnBpY2tsZV9ibG9ja5STlGhHaElLAIWUaEuHlFKUKEsBSwFLAoaUaDeJQxABAAAAAAAAAAIAAAAA
AAAAlHSUYmi2SwBLAUsBh5RSlEsCh5RSlGjOaEdoSUsAhZRoS4eUUpQoSwFLAUsChpRoUYlDELgehetRuJ4/exSuR+F6pD+UdJRi
aLZLAUsCSwGHlFKUSwKHlFKUhpRdlCiMGHBhbmRhcy5jb3JlLmluZGV4ZXMuYmFzZZSMCl9uZXdfSW5kZXiUk5Ro5YwFSW5kZXiU
k5R9lChoZ2hHaElLAIWUaEuHlFKUKEsBSwKFlGg0jAJPOJSJiIeUUpQoSwOMAXyUTk5OSv////9K/////0s/dJRiiV2UKIwEZm9s
ZJRow2V0lGJokU51hpRSlGjnjBtwYW5kYXMuY29yZS5pbmRleGVzLm51bWVyaWOUjApJbnQ2NEluZGV4lJOUfZQoaGdoR2hJSwCF
lGhLh5RSlChLAUsChZRoN4lDEAoAAAAAAAAAFAAAAAAAAACUdJRiaJFOdYaUUpRlhpRSlGi6jAlkYXRhZnJhbWWUaLxdlGi+fZRo
wH2UaMKIc3VijAhieV9wcmljZZRoWCmBlH2UKGhbaF4pgZQoXZRo52j5jAxGbG9hdDY0SW5kZXiUk5R9lChoZ2hHaElLAIWUaEuH
lFKUKEsBSwKFlGhRiUMQAAAAAAAA+D8AAAAAAAAEQJR0lGJokU51hpRSlGFdlGhHaElLAIWUaEuHlFKUKEsBSwKFlGhRiUMQAAAA
AAAA8D8AAAAAAAAAQJR0lGJhXZRo52oRAQAAfZQoaGdoR2hJSwCFlGhLh5RSlChLAUsChZRoUYlDEAAAAAAAAPg/AAAAAAAABECU
dJRiaJFOdYaUUpRhfZRorH2UKGiuag8BAABor12UfZQoaLJqHgEAAGizaLZLAEsCSwGHlFKUdWF1c3SUYmi6aLtovGi9aL59lGjA
fZRowohzaJFOdWKMBnJlZ2ltZZRoaowecGFuZGFzLmNvcmUuYXJyYXlzLmNhdGVnb3JpY2FslIwLQ2F0ZWdvcmljYWyUk5RKuFxV
DU6HlFKUaHCMEENhdGVnb3JpY2FsRHR5cGWUk5QpgZR9lCiMCmNhdGVnb3JpZXOUaOdo6X2UKGhnaEdoSUsAhZRoS4eUUpQoSwFL
AoWUaPGJXZQojARiZWFylIwEYnVsbJRldJRiaJFOdYaUUpSMB29yZGVyZWSUiXViaEdoSUsAhZRoS4eUUpQoSwFLA4WUaDSMAmkx
lImIh5RSlChLA2jyTk5OSv////9K/////0sAdJRiiUMDAQABlHSUYn2Uh5RidS4=
"""


def test_pickle_written_by_pandas_1_5_and_numpy_1_26_loads():
    info = safe_loads(base64.b64decode(PANDAS_1_5_INFO))
    assert info["symbol"] == "SOLUSDT"
    assert info["train_start"] == pd.Timestamp("2024-01-01 09:30", tz="Asia/Shanghai")
    assert str(info["train_start"].tz) == "Asia/Shanghai"  # pytz zone rebuilt as zoneinfo
    assert info["train_end"] == pd.Timestamp("2024-03-01", tz="UTC") and info["train_end"].utcoffset() == datetime.timedelta(0)
    assert info["fixed_offset"].utcoffset() == datetime.timedelta(hours=8)
    assert info["naive"] == pd.Timestamp("2024-01-02 03:04:05") and info["naive"].tz is None
    assert info["nat"] is pd.NaT and info["window"] == pd.Timedelta("30min")
    assert type(info["n_samples"]) is np.int64 and info["n_samples"] == 1234
    assert type(info["eta"]) is np.float32 and info["eta"] == np.float32(0.05)
    np.testing.assert_array_equal(info["weights"], np.arange(4, dtype=np.float64))
    pd.testing.assert_series_equal(
        info["ic_by_day"], pd.Series([0.1, 0.2, np.nan], name="ic",
                                     index=pd.date_range("2024-01-01", periods=3, tz="Asia/Shanghai", unit="ns")),
        check_freq=False, check_index_type=False)
    assert info["folds"].index.tolist() == [10, 20] and info["folds"]["ic"].tolist() == [0.03, 0.04]
    assert info["by_price"].index.tolist() == [1.5, 2.5]
    assert info["regime"].tolist() == ["bull", "bear", "bull"] and list(info["regime"].categories) == ["bear", "bull"]


# -- the allow-list itself ----------------------------------------------------------------
def test_allow_list_is_exact_names_and_has_no_code_runners():
    for module, name in ALLOWED_GLOBALS:
        assert name.isidentifier() and all(part.isidentifier() for part in module.split(".")), (module, name)
    modules = {module for module, _ in ALLOWED_GLOBALS}
    for forbidden in ("os", "posix", "nt", "subprocess", "sys", "importlib", "runpy", "pickle", "_pickle", "codecs",
                      "functools", "operator", "types", "io", "shutil", "socket", "ctypes", "marshal", "numpy.lib",
                      "pandas.io.pickle"):
        assert forbidden not in modules
    builtins_allowed = {name for module, name in ALLOWED_GLOBALS if module == "builtins"}
    assert not builtins_allowed & {"eval", "exec", "compile", "open", "__import__", "globals", "vars", "input",
                                   "breakpoint", "setattr", "delattr", "type", "memoryview", "bytes"}
    for gadget in [("numpy", "load"), ("numpy", "fromfile"), ("pandas", "read_pickle"), ("pandas", "eval"),
                   ("copyreg", "add_extension"), ("_codecs", "decode"), ("collections", "namedtuple")]:
        assert gadget not in ALLOWED_GLOBALS


def test_every_allowed_global_resolves_or_has_a_documented_stand_in():
    """Old spellings (pandas 1.x/2.x, numpy 1.x) resolve to today's objects, without warnings."""
    for key in ALLOWED_GLOBALS - set(_STAND_INS):
        assert _resolve(key) is not None, key
    assert _resolve(("pandas.core.indexes.numeric", "Int64Index")) is pd.Index
    assert _resolve(("numpy.core.multiarray", "_reconstruct")) is _resolve(("numpy._core.multiarray", "_reconstruct"))
    assert _resolve(("pandas.core.frame", "DataFrame")) is pd.DataFrame


# -- the hostile corpus -------------------------------------------------------------------
def _corpus_ids() -> list[str]:
    with tempfile.TemporaryDirectory() as workdir:
        return [hostile.id for hostile in hp.build_corpus(Path(workdir))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hostile")
    return workdir, {hostile.id: hostile for hostile in hp.build_corpus(workdir)}


def _poisoned(poison) -> bool:
    module, name, attr = poison
    return getattr(getattr(importlib.import_module(module), name), attr, None) == "pwned"


@pytest.mark.parametrize("gadget", _corpus_ids())
def test_hostile_pickle_is_refused_naming_the_global_and_nothing_runs(corpus, gadget):
    workdir, by_id = corpus
    hostile = by_id[gadget]
    code = None
    if hostile.extension:  # the attacker relies on an extension this process registered, and
        module, name, code = hostile.extension  # on the cache a plain pickle.loads left behind
        copyreg.add_extension(module, name, code)
        copyreg._extension_cache[code] = getattr(importlib.import_module(module), name)
    try:
        with pytest.raises(UnsafePickleError) as refused:
            safe_loads(hostile.data)
    finally:
        if code is not None:
            copyreg.remove_extension(module, name, code)
    assert hostile.refused in str(refused.value)
    assert refused.value.code == "unsafe_pickle" and hostile.refused.split("(")[0].strip() in refused.value.global_name
    assert not hostile.sentinel(workdir).exists()
    if hostile.poison:
        assert not _poisoned(hostile.poison)


def test_hostile_corpus_really_runs_under_plain_pickle(corpus, tmp_path):
    """Proof the corpus is not toothless: unpickled plainly (in a child process) every live
    payload creates its sentinel or poisons its shared object."""
    plain = hp.run_plainly(hp.build_corpus(tmp_path), tmp_path)
    assert len(plain) >= 35 and all(plain.values()), [name for name, ran in plain.items() if not ran]
    workdir, _ = corpus
    assert not list(workdir.glob("*.pwned"))  # and none of them ran in this process


def test_copyreg_extension_cache_is_not_a_way_around_the_list():
    code = 0x7FB0
    copyreg.add_extension("posix", "system", code)
    copyreg._extension_cache[code] = os.system
    try:
        with pytest.raises(UnsafePickleError, match="posix.system"):
            safe_loads(hp.dumps(pickle.EXT2 + code.to_bytes(2, "little")))
    finally:
        copyreg.remove_extension("posix", "system", code)
    with pytest.raises(ArtifactError, match="unregistered extension code"):
        safe_loads(hp.dumps(pickle.EXT2 + code.to_bytes(2, "little")))


CORRUPT_BUT_DANGEROUS = {
    # zoneinfo refuses keys that leave the tz database; it must not read /etc/passwd
    "zoneinfo_path_traversal": hp.dumps(hp.call(hp.call(hp.g("builtins", "getattr"), hp.g("zoneinfo", "ZoneInfo"),
                                                        hp.s("_unpickle")), hp.s("../../../../../../etc/passwd"), hp.i(1))),
    # a 9-byte header that would make pickle allocate 100 GB before reading anything
    "bytearray8_length_bomb": pickle.PROTO + b"\x05" + pickle.BYTEARRAY8 + (10**11).to_bytes(8, "little") + b"x" + pickle.STOP,
    # forging object pointers from raw bytes: numpy must refuse each
    "object_array_from_bytes": hp.dumps(hp.build(
        hp.call(hp.g("numpy.core.multiarray", "_reconstruct"), hp.g("numpy", "ndarray"), hp.t(hp.i(0)), hp.b(b"b")),
        hp.t(hp.i(1), hp.t(hp.i(2)), hp.call(hp.g("numpy", "dtype"), hp.s("O8"), pickle.NEWFALSE, pickle.NEWTRUE),
             pickle.NEWFALSE, hp.b(b"A" * 16)))),
    "object_frombuffer": hp.dumps(hp.call(hp.g("numpy._core.numeric", "_frombuffer"), hp.b(b"A" * 16),
                                          hp.call(hp.g("numpy", "dtype"), hp.s("O8"), pickle.NEWFALSE, pickle.NEWTRUE),
                                          hp.t(hp.i(2)), hp.s("C"))),
    "structured_object_scalar_from_bytes": hp.dumps(hp.call(hp.g("numpy._core.multiarray", "scalar"), hp.build(
        hp.call(hp.g("numpy", "dtype"), hp.s("V8"), pickle.NEWFALSE, pickle.NEWTRUE),
        hp.t(hp.i(3), hp.s("|"), pickle.NONE, hp.t(hp.s("a")),
             hp.dct(a=hp.t(hp.call(hp.g("numpy", "dtype"), hp.s("O8"), pickle.NEWFALSE, pickle.NEWTRUE), hp.i(0))),
             hp.i(8), hp.i(1), hp.i(27))), hp.b(b"A" * 8))),
    # states that crash numpy's and pandas' unpicklers if they reach them
    "dtype_state_old_layout": hp.dumps(hp.build(hp.call(hp.g("numpy", "dtype"), hp.s("i8"), pickle.NEWFALSE, pickle.NEWTRUE),
                                                hp.t(hp.i(3), hp.s("<"), pickle.NONE, hp.i(-1), hp.i(-1), hp.i(0)))),
    # objects made empty (for a BUILD that never comes) fail later, far from the file, or crash
    "booster_without_state": hp.dumps(hp.newobj(hp.g("xgboost.core", "Booster"))),
    "dataframe_without_state": hp.dumps(hp.newobj(hp.g("pandas", "DataFrame"))),
    "pandas_array_without_state": hp.dumps(hp.call(hp.g("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
                                                   hp.g("pandas", "Categorical"), hp.i(82904607), pickle.NONE)),
    "pandas_array_used_before_its_state": hp.dumps(hp.call(
        hp.g("pandas._libs.internals", "_unpickle_block"),
        hp.call(hp.g("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"), hp.g("pandas.arrays", "DatetimeArray"),
                hp.i(82904607), pickle.NONE),
        hp.call(hp.g("builtins", "slice"), hp.i(0), hp.i(1), hp.i(1)), hp.i(1))),
    "pandas_array_made_empty": hp.dumps(hp.call(hp.g("builtins", "list"), hp.newobj(hp.g("pandas.arrays", "DatetimeArray")))),
    "block_manager_without_checks": hp.dumps(hp.call(hp.g("pandas.core.internals.managers", "BlockManager"),
                                                     hp.t(), hp.lst(), pickle.NEWFALSE)),
    "multiindex_codes_past_levels": hp.dumps(hp.call(
        hp.g("pandas.core.indexes.base", "_new_Index"), hp.g("pandas", "MultiIndex"),
        hp.dct(levels=hp.lst(hp.call(hp.g("pandas.core.indexes.base", "_new_Index"), hp.g("pandas", "RangeIndex"),
                                     hp.dct(start=hp.i(0), stop=hp.i(1), step=hp.i(1)))),
               codes=hp.lst(hp.lst(hp.i(5))), verify_integrity=pickle.NEWFALSE))),
    "object_array_short_list": hp.dumps(hp.build(
        hp.call(hp.g("numpy._core.multiarray", "_reconstruct"), hp.g("numpy", "ndarray"), hp.t(hp.i(0)), hp.b(b"b")),
        hp.t(hp.i(1), hp.t(hp.i(200)), hp.call(hp.g("numpy", "dtype"), hp.s("O8"), pickle.NEWFALSE, pickle.NEWTRUE),
             pickle.NEWFALSE, hp.lst(hp.s("a"))))),
}


def _categorical_with_bad_codes() -> bytes:
    """A real Categorical pickle whose codes point past its categories."""
    data = pickle.dumps(pd.Categorical.from_codes([0, 1], categories=["a", "b"]), protocol=4)
    codes = np.array([0, 1], dtype=np.int8).tobytes()
    assert data.count(codes) == 1
    return data.replace(codes, np.array([0, 100], dtype=np.int8).tobytes())


CORRUPT_BUT_DANGEROUS["categorical_codes_out_of_range"] = _categorical_with_bad_codes()


@pytest.mark.parametrize("name", sorted(CORRUPT_BUT_DANGEROUS))
def test_malformed_states_that_would_crash_or_leak_are_corrupt(name):
    with pytest.raises(ArtifactError) as err:
        safe_loads(CORRUPT_BUT_DANGEROUS[name])
    assert err.value.code in ("corrupt", "unsafe_pickle")
    assert np.dtype("i8").flags == 0 and np.dtype("f8").byteorder == "="  # shared dtypes untouched


def test_dtype_state_cannot_change_what_a_dtype_is():
    """numpy would take the flags from the pickle (here: "holds objects" on int64, which makes it
    free random memory); the dtype is rebuilt from its description instead."""
    data = hp.dumps(hp.build(
        hp.call(hp.g("numpy._core.multiarray", "_reconstruct"), hp.g("numpy", "ndarray"), hp.t(hp.i(0)), hp.b(b"b")),
        hp.t(hp.i(1), hp.t(hp.i(1)), hp.build(hp.call(hp.g("numpy", "dtype"), hp.s("i8"), pickle.NEWFALSE, pickle.NEWTRUE),
                                              hp.t(hp.i(3), hp.s("<"), pickle.NONE, pickle.NONE, pickle.NONE, hp.i(-1),
                                                   hp.i(-1), hp.i(63))),
             pickle.NEWFALSE, hp.b((7).to_bytes(8, "little")))))
    array = safe_loads(data)
    assert array.dtype == np.int64 and array.dtype.flags == 0 and array.tolist() == [7]


# -- properties ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind,protocol", [("regressor", 2), ("regressor", 4), ("classifier", 5), ("booster", 5),
                                           ("info", 2), ("info", 5)])
def test_every_truncation_is_reported_as_corrupt(models, kind, protocol):
    data = pickle.dumps(realistic_info() if kind == "info" else models[kind], protocol=protocol)
    cuts = sorted(set(range(0, 64)) | set(range(0, len(data), max(1, len(data) // 150))))
    for cut in cuts:
        with pytest.raises(ArtifactError) as err:
            safe_loads(data[:cut])
        assert type(err.value) is ArtifactError and err.value.code == "corrupt", (cut, str(err.value))


_INFO_PICKLES = {protocol: pickle.dumps(realistic_info(), protocol=protocol) for protocol in PROTOCOLS}


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(protocol=st.sampled_from(PROTOCOLS), flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                                                      st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_info_pickles_load_or_fail_as_artifact_errors(protocol, flips):
    """Damaged bytes never escape as another exception type (and never crash the process).
    Model pickles are left out: XGBoost's own model reader is not hardened against damage."""
    data = bytearray(_INFO_PICKLES[protocol])
    for where, value in flips:
        data[int(where * len(data))] = value
    try:
        safe_loads(bytes(data))
    except ArtifactError as exc:
        assert exc.code in ("corrupt", "unsafe_pickle")


@settings(max_examples=40, derandomize=True, deadline=None)
@given(key=st.sampled_from(sorted(realistic_info())), protocol=st.sampled_from(PROTOCOLS), nested=st.booleans())
def test_a_hostile_value_anywhere_in_an_info_dict_is_refused(tmp_path_factory, key, protocol, nested):
    sentinel = tmp_path_factory.getbasetemp() / "info-dict.pwned"
    info = realistic_info()
    payload = hp.Reduce(os.system, f"touch '{sentinel}'")
    info[key] = [info[key], {"x": payload}] if nested else payload
    with pytest.raises(UnsafePickleError, match="posix.system"):
        safe_loads(pickle.dumps(info, protocol=protocol))
    assert not sentinel.exists()


@pytest.mark.parametrize("data", [b"", b"not a pickle", b"\x80\x05", b"\x80\x05K\x01", b"\x80\x09.", b"(((((",
                                  pickle.PROTO + b"\x05" + pickle.NEXT_BUFFER + pickle.STOP])
def test_garbage_is_corrupt(data):
    with pytest.raises(ArtifactError) as err:
        safe_loads(data)
    assert err.value.code == "corrupt" and str(err.value).startswith("corrupt pickle")


def test_accepts_any_bytes_like_input(models):
    data = pickle.dumps(models["booster"], protocol=5)
    for view in (data, bytearray(data), memoryview(data)):
        assert isinstance(safe_loads(view), xgb.Booster)


# -- time zones that name files ------------------------------------------------------------------
_opened: list[str] | None = None  # paths opened while a test below records (an audit hook cannot be removed)


def _record_opens(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str):
        _opened.append(args[0])


sys.addaudithook(_record_opens)


def _refusal_and_opens(data: bytes) -> tuple[str, list[str]]:
    global _opened
    _opened = []
    try:
        with pytest.raises(ArtifactError) as refused:
            safe_loads(data)
        return str(refused.value), _opened
    finally:
        _opened = None


@pytest.mark.parametrize("spell", [
    lambda path: hp.dumps(hp.call(hp.g("pandas", "DatetimeTZDtype"), hp.s("ns"), hp.s(f"dateutil/{path}"))),
    lambda path: hp.dumps(hp.call(hp.g("pandas", "DatetimeTZDtype"), hp.s(f"datetime64[ns, dateutil/{path}]"))),
    lambda path: hp.dumps(hp.call(hp.g("zoneinfo", "ZoneInfo"), hp.s(path))),
    lambda path: hp.dumps(hp.call(hp.g("pandas._libs.tslibs.timestamps", "_unpickle_timestamp"), hp.i(0),
                                  hp.pickle.NONE, hp.s(f"dateutil/{path}"), hp.i(10))),
], ids=["tz_argument", "dtype_string", "zoneinfo_key", "timestamp"])
def test_no_file_named_by_a_time_zone_is_opened_and_the_error_does_not_tell_if_it_exists(tmp_path, spell):
    secret, missing = tmp_path / "secret.txt", tmp_path / "missing.txt"
    secret.write_text("TZif-looking secret")
    known_zones()  # the installed zone names are read once, before anything is recorded
    there, opened_there = _refusal_and_opens(spell(str(secret)))
    absent, opened_absent = _refusal_and_opens(spell(str(missing)))
    assert "refused to unpickle" in there and "time zone" in there
    assert there.replace(str(secret), "PATH") == absent.replace(str(missing), "PATH")
    assert not [p for p in opened_there + opened_absent if str(tmp_path) in p], opened_there + opened_absent
    assert not [p for p in opened_there + opened_absent if "zoneinfo" in p or p.startswith("/etc")]


def test_real_time_zones_still_load():
    for value in (pd.Timestamp("2026-01-02 03:04", tz="Europe/Paris"), pd.DatetimeTZDtype("ns", "America/New_York"),
                  zoneinfo.ZoneInfo("Asia/Tokyo"), pd.date_range("2026-01-01", periods=3, tz="UTC")):
        for protocol in (2, 5):
            loaded = safe_loads(pickle.dumps(value, protocol=protocol))
            assert str(loaded) == str(value)


def test_numpy_scalar_types_are_not_called_with_containers():
    bomb = hp.numpy_scalar_bomb()
    assert len(bomb) < 200
    with pytest.raises(UnsafePickleError, match=r"numpy.float64\(<list>\) \(builds an array\)"):
        safe_loads(bomb)
    assert safe_loads(hp.dumps(hp.call(hp.g("numpy", "float64"), hp.lit(1.5)))) == np.float64(1.5)
