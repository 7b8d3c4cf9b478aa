"""Parser fuzzing: random and mutated bytes as each artifact kind, fed through `load_group`.

For every input the artifact module must return a group (never raise), whose summary and detail
are valid JSON, and either read the file or put an `error` issue naming it on the group — never
neither, never both. A model that loads must have as many features as factors.txt lists, or the
group carries the `dim_mismatch` error: a trading engine never gets a wrong mapping. Hostile
pickles (mutated or not) must not run anything: they try to create a sentinel file.

Examples per kind are bounded by `FUZZ_EXAMPLES` (default 60); raise it for a deeper run.
"""
from __future__ import annotations

import builtins
import dataclasses
import json
import os
import pickle
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model_manager.artifacts import GroupSnapshot, build_payload_bytes, load_group
from model_manager.cache import CacheDir
from tests.support import FACTORS

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
KEY = "SOLUSDT_mid_chg_1m"
SENTINEL = Path(tempfile.gettempdir()) / f"mm-fuzz-sentinel-{os.getpid()}"


# -- hostile pickles: each would create SENTINEL if anything in it ran ---------------------------
class _Call:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _hostile() -> list[bytes]:
    target = str(SENTINEL)
    calls = [
        _Call(os.system, f"touch {target}"),
        _Call(builtins.exec, f"open({target!r}, 'w').close()"),
        _Call(builtins.eval, f"open({target!r}, 'w')"),
        _Call(subprocess.call, ["touch", target]),
        _Call(Path.touch, Path(target)),
    ]
    out = []
    for protocol in (0, 2, 4, 5):
        for call in calls:
            out.append(pickle.dumps(call, protocol=protocol))
            out.append(pickle.dumps({"symbol": "SOLUSDT", "return_name": "mid_chg_1m", "dim": 5, "x": call}, protocol=protocol))
    return out


HOSTILE = _hostile()


# -- valid artifacts, and ways to damage them ---------------------------------------------------
@pytest.fixture(scope="module")
def valid(models) -> dict[str, bytes]:
    info = {"symbol": "SOLUSDT", "return_name": "mid_chg_1m", "dim": np.int64(5), "n_samples": np.int64(80),
            "train_start": pd.Timestamp("2026-10-01", tz="UTC"), "params": {"eta": np.float64(0.1)},
            "importance": pd.Series([0.5, 0.25], index=FACTORS[:2])}
    return {
        "factors.txt": ("\n".join(FACTORS) + "\n").encode(),
        "ic.csv": ("factor,ic,rank_ic,kendall_tau\n" + "".join(f"{f},0.01,0.02,0.03\n" for f in FACTORS)).encode(),
        "info.pkl": pickle.dumps(info),
        "model.pkl": pickle.dumps(models["regressor"]),
        "model.json": bytes(models["booster"].save_raw(raw_format="json")),
    }


TOKENS = [b"\x00", b"\xff", b"\xef\xbb\xbf", b"\r\n", b"\n", b",", b'"', b"nan", b"-inf", b"1e308", b"{", b"}", b"[", b"]",
          b'"num_feature":"999"', b'"num_feature":"-1"', b"\x80\x05", b".", b"R", b"b", b"\x93", b"cos\nsystem\n",
          b"cbuiltins\neval\n", b"\x8c\x02os\x94\x8c\x06system\x94\x93", b"(", b"t", b"s", b"\x85", b"\x94", b"N"]


@st.composite
def mutated(draw, base: bytes) -> bytes:
    """`base` damaged by a few byte-level edits: flips, insertions, deletions, truncation, splices."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "token", "duplicate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[pos:]
        elif op == "token":
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        elif op == "duplicate":
            chunk = data[pos:pos + draw(st.integers(1, 64))]
            data[pos:pos] = chunk
    return bytes(data)


def fuzz_bytes(base: bytes, *, text: bool = False) -> st.SearchStrategy[bytes]:
    options = [st.binary(max_size=4096), mutated(base), st.just(b""), st.just(base[: len(base) // 2])]
    if text:
        options.append(st.text(max_size=400).map(lambda t: t.encode("utf-8")))
        options.append(st.lists(st.text(max_size=30), max_size=10).map(lambda ls: "\r\n".join(ls).encode("utf-8")))
    return st.one_of(*options)


# -- the properties ------------------------------------------------------------------------------
def load(tmp: Path, valid: dict[str, bytes], kind: str, data: bytes, *, drop: str | None = None,
         cache: bool = False) -> tuple[GroupSnapshot, str]:
    files = {}
    for k, content in valid.items():
        if k == drop or (k == "model.json" and kind == "model.pkl"):
            continue  # JSON wins over pkl: leave it out when the pkl is the one under test
        name = f"{KEY}_{k}"
        (tmp / name).write_bytes(data if k == kind else content)
        files[k] = name
    conversions = CacheDir(tmp / "cache") if cache else None
    started = time.monotonic()
    group = load_group(tmp, KEY, files, cache=conversions, max_bytes=1 << 20)
    assert time.monotonic() - started < 30, "parsing one small group must not take this long"
    return group, files[kind]


def errors_naming(group: GroupSnapshot, name: str) -> list:
    return [i for i in group.issues if i.severity == "error" and i.file == name]


def check_common(group: GroupSnapshot) -> None:
    assert isinstance(group, GroupSnapshot)
    json.dumps(group.summary(), allow_nan=False)
    json.dumps(group.detail("fuzz"), allow_nan=False)
    for issue in group.issues:
        assert issue.severity in ("error", "warning") and issue.code and issue.message
    assert group.status == ("error" if group.errors else "warning" if group.issues else "ok")
    assert not SENTINEL.exists(), "an artifact ran code"


def check_model_consistency(group: GroupSnapshot, model_file: str) -> None:
    """A loaded model either matches factors.txt or the group says it does not, on the model file."""
    if group.model_sha256 is None:
        return
    codes = {i.code for i in errors_naming(group, model_file)}
    if group.dim != len(group.factors):
        assert "dim_mismatch" in codes or not group.factors, group.issues
    if group.status != "error":
        booster = xgb.Booster()
        model_json = group.model_json
        assert model_json is not None
        booster.load_model(bytearray(model_json))
        payload = json.loads(build_payload_bytes("fuzz", group, model_json))
        assert booster.num_features() == len(payload["payload"]["dim_factors"]) == len(group.factors)


def expected_factors(data: bytes) -> list[str] | None:
    """The reference reading of factors.txt: None when the bytes are not a usable factor list."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    if "\x00" in text:
        return None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return names or None


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory(prefix="mm-fuzz-") as d:
        yield Path(d)


def fresh(tmp: Path) -> Path:
    d = Path(tempfile.mkdtemp(dir=tmp))
    return d


@FUZZ
@given(data=st.data())
def test_factors_txt(tmp, valid, data):
    raw = data.draw(fuzz_bytes(valid["factors.txt"], text=True))
    group, name = load(fresh(tmp), valid, "factors.txt", raw)
    check_common(group)
    expected = expected_factors(raw)
    if expected is None:
        assert errors_naming(group, name) and group.factors == [] and group.status == "error"
    else:
        assert group.factors == expected and not errors_naming(group, name)
        assert (len(expected) == 5) or group.status == "error"  # the model has 5 features
    check_model_consistency(group, f"{KEY}_model.json")


@FUZZ
@given(data=st.data())
def test_ic_csv(tmp, valid, data):
    raw = data.draw(fuzz_bytes(valid["ic.csv"], text=True))
    group, name = load(fresh(tmp), valid, "ic.csv", raw)
    check_common(group)
    assert (group.ic is not None) != bool(errors_naming(group, name)), (raw, group.issues)
    if group.ic is not None:
        assert group.ic["columns"][0] == "factor"
        assert all(len(row) == len(group.ic["columns"]) and isinstance(row[0], str) for row in group.ic["rows"])
        assert all(v is None or isinstance(v, float) for row in group.ic["rows"] for v in row[1:])
    try:
        raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        assert errors_naming(group, name)


@FUZZ
@given(data=st.data())
def test_info_pkl(tmp, valid, data):
    raw = data.draw(st.one_of(fuzz_bytes(valid["info.pkl"]), st.sampled_from(HOSTILE).flatmap(
        lambda h: st.one_of(st.just(h), mutated(h)))))
    group, name = load(fresh(tmp), valid, "info.pkl", raw)
    check_common(group)
    # it parses, or an error names it; one that parses may still contradict the model (a mutated `dim`)
    unreadable = [i for i in errors_naming(group, name) if i.code != "info_dim_mismatch"]
    assert (group.info is not None) != bool(unreadable), (raw, group.issues)
    if raw in HOSTILE:
        assert any(i.code == "unsafe_pickle" for i in errors_naming(group, name)), group.issues


@FUZZ
@given(data=st.data(), cache=st.booleans())
def test_model_pkl(tmp, valid, data, cache):
    raw = data.draw(st.one_of(fuzz_bytes(valid["model.pkl"]), st.sampled_from(HOSTILE).flatmap(
        lambda h: st.one_of(st.just(h), mutated(h)))))
    group, name = load(fresh(tmp), valid, "model.pkl", raw, cache=cache)
    check_common(group)
    assert group.model_source == "pkl"
    assert group.model_sha256 is not None or errors_naming(group, name), group.issues
    if raw != valid["model.pkl"] and group.model_sha256 is None:
        assert group.status == "error"
    if raw in HOSTILE:
        assert any(i.code == "unsafe_pickle" for i in errors_naming(group, name)), group.issues
    check_model_consistency(group, name)


@FUZZ
@given(data=st.data(), cache=st.booleans())
def test_model_json(tmp, valid, data, cache):
    raw = data.draw(fuzz_bytes(valid["model.json"]))
    group, name = load(fresh(tmp), valid, "model.json", raw, cache=cache)
    check_common(group)
    assert group.model_source == "json"
    assert group.model_sha256 is not None or errors_naming(group, name), group.issues
    check_model_consistency(group, name)


def test_the_unmutated_artifacts_are_clean(tmp, valid):
    """The baseline the fuzzers damage is itself accepted (otherwise the properties prove little)."""
    for kind in ("factors.txt", "model.pkl", "model.json"):
        group, _ = load(fresh(tmp), valid, kind, valid[kind])
        assert group.status == "ok", (kind, group.issues)
        assert group.info["symbol"] == "SOLUSDT" and group.ic is not None and group.dim == 5


def test_hostile_pickles_run_nothing(tmp, valid):
    for raw in HOSTILE:
        for kind in ("info.pkl", "model.pkl"):
            group, name = load(fresh(tmp), valid, kind, raw)
            check_common(group)
            assert [i.code for i in errors_naming(group, name)] == ["unsafe_pickle"], group.issues


def _fan_out_list_pickle(depth: int) -> bytes:
    """An info dict whose `x` is [l, l] with l = [m, m] ... `depth` times: a few hundred bytes (the
    pickle stores each list once) that describe 2**depth leaves."""
    x: list = [1.0]
    for _ in range(depth):
        x = [x, x]
    return pickle.dumps({"symbol": "SOLUSDT", "return_name": "mid_chg_1m", "x": x, "s": slice(x, None)})


@pytest.mark.timeout(120)
def test_a_tiny_info_pickle_cannot_blow_up_into_billions_of_values(tmp, valid):
    raw = _fan_out_list_pickle(60)
    assert len(raw) < 600
    started = time.monotonic()
    group, name = load(fresh(tmp), valid, "info.pkl", raw)
    assert time.monotonic() - started < 20
    check_common(group)
    assert not errors_naming(group, name) and group.info["symbol"] == "SOLUSDT"
    assert len(json.dumps(group.detail("fuzz"))) < 10_000_000


def _slow_hash_pickle(depth: int) -> bytes:
    """A dict keyed by t = (u, u), u = (v, v), ... `depth` levels: under 500 bytes, but hashing the
    key walks 2**depth tuples (tuples do not cache their hash) while holding the GIL."""
    out = bytearray(b"\x80\x02}")  # PROTO 2, EMPTY_DICT
    out += b")q\x000"  # EMPTY_TUPLE, BINPUT 0, POP
    for i in range(depth):  # BINGET i, BINGET i, TUPLE2, BINPUT i+1, POP
        out += b"h" + bytes([i]) + b"h" + bytes([i]) + b"\x86q" + bytes([i + 1]) + b"0"
    out += b"h" + bytes([depth]) + b"K\x01s."  # BINGET depth, BININT1 1, SETITEM, STOP
    return bytes(out)


def test_a_pickle_that_would_take_hours_to_load_costs_a_bounded_wait():
    from model_manager.errors import ArtifactError
    from model_manager.isolation import check_info

    assert len(_slow_hash_pickle(60)) < 500
    started = time.monotonic()
    with pytest.raises(ArtifactError) as caught:
        check_info(_slow_hash_pickle(60), f"{KEY}_info.pkl", timeout=2)
    assert time.monotonic() - started < 15
    assert caught.value.code in ("too_slow", "unsafe_pickle", "corrupt"), caught.value
    # a small one of the same shape loads: the limit is time, not the shape
    assert check_info(_slow_hash_pickle(3), "small_info.pkl") == {json.dumps([[[[], []], [[], []]], [[[], []], [[], []]]]): 1}


# -- the payload body, put together from its parts ----------------------------------------------
_TEXT = st.text(alphabet=st.characters(min_codepoint=0, blacklist_categories=("Cs",)), max_size=40)


@FUZZ
@given(model_text=st.one_of(_TEXT, st.builds(lambda a, b: f'{{"learner":{{"a":"{a}","b":[1,2]}},"x":"{b}"}}', _TEXT, _TEXT)),
       info=st.dictionaries(_TEXT, st.one_of(_TEXT, st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                                               st.dictionaries(_TEXT, _TEXT, max_size=3)), max_size=5))
def test_payload_bytes_are_one_json_dumps_of_the_body(tmp_path_factory, model_text, info):
    """`build_payload_bytes` joins separately encoded parts and quotes the model text itself; the
    result must be exactly what encoding the whole body at once gives, whatever the text and the
    info.pkl hold (quotes, backslashes, control characters, keys named like ours)."""
    info = {**info, "payload": {"model_json": ""}}  # a key of ours inside the metadata
    group = dataclasses.replace(_GROUP, info=info)
    model_json = model_text.encode("utf-8")
    metadata = {**info, "symbol": group.symbol, "return_name": group.return_name, "group_key": group.group_key,
                "dim": group.dim, "model_source": group.model_source, "model_sha256": group.model_sha256,
                "updated_at": group.updated_at, "version": 3}
    whole = {"model_name": "m", "symbol": group.symbol, "group_key": group.group_key, "return_name": group.return_name,
             "payload": {"model_json": model_text, "metadata": metadata,
                         "dim_factors": [{"dim": i, "factor_name": f, "kendall_tau": None} for i, f in enumerate(group.factors)]}}
    expected = json.dumps(whole, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    assert build_payload_bytes("m", group, model_json, version=3) == expected


_GROUP = GroupSnapshot(group_key=KEY, symbol="SOLUSDT", return_name="mid_chg_1m", files={}, factors=list(FACTORS), ic=None,
                       info=None, importance=None, dim=len(FACTORS), model_source="json", model_file=f"{KEY}_model.json",
                       model_sha256="0" * 64, model_json=None, model_summary=None, updated_at="2026-12-01T00:00:00Z",
                       signature=None, issues=[])
