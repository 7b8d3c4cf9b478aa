"""Packed snapshot fields (artifacts/packed.py): what a group's parse keeps packed in memory reads back
exactly as it was parsed (every float bit for bit, key order, tuples), a read is a copy of its own,
factor names shared by groups are one string, and the answers built from a packed parse (the detail,
the payload) are the same bytes as from a parse restored from its record."""
from __future__ import annotations

import dataclasses
import json
import math
import struct
import sys

from model_manager.artifacts import GroupSnapshot, build_payload_bytes, load_directory
from model_manager.artifacts.packed import pack, unpack
from model_manager.heap import release_free_memory
from model_manager.state import snapshot_from_record, snapshot_record
from tests.support import FACTORS, write_group

IC = {"columns": ["factor", "ic", "kendall_tau"],
      "rows": [["ofi_1m", 0.1 + 0.2, None], ["spread_bps", -0.0, 5e-324], ["vol_5m", 1.7976931348623157e308, -1e-300]]}
INFO = {"z": 1, "a": [1, 2.5, {"nested": None, "big": 2 ** 70}], "ü": "ñ\u2603", "flag": True, "when": "2026-01-01T00:00:00"}


def bits(value):
    """Every float of a value as its IEEE bits (so -0.0 and 0.0 differ), for an exact comparison."""
    if isinstance(value, float):
        return ("f", struct.pack("<d", value))
    if isinstance(value, dict):
        return ("d", [(k, bits(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [bits(v) for v in value])
    return (type(value).__name__, value)


def snapshot(**fields) -> GroupSnapshot:
    base = {"group_key": "SOLUSDT_r", "symbol": "SOLUSDT", "return_name": "r",
            "files": {"factors.txt": "SOLUSDT_r_factors.txt", "ic.csv": "SOLUSDT_r_ic.csv"}, "factors": list(FACTORS)}
    return GroupSnapshot(**{**base, **fields})


def test_packed_fields_read_back_exactly():
    importance = {"gain": {"ofi_1m": 1.5, "vol_5m": 0.1}, "weight": {"vol_5m": 3.0}}
    summary = {"num_trees": 5, "params": {"eta": "0.3"}}
    signature = (("factors.txt", 40, 1796177918667784360, 5537799), ("ic.csv", None, None, None))
    g = snapshot(ic=IC, info=INFO, importance=importance, model_summary=summary, signature=signature)
    assert bits(g.ic) == bits(IC) and bits(g.info) == bits(INFO)
    assert bits(g.importance) == bits(importance) and g.model_summary == summary
    assert g.signature == signature and type(g.signature[0]) is tuple
    assert list(g.info) == list(INFO)  # key order kept
    assert g.files == {"factors.txt": "SOLUSDT_r_factors.txt", "ic.csv": "SOLUSDT_r_ic.csv"}
    assert snapshot().ic is None and snapshot().signature == ()


def test_each_read_is_a_copy_of_its_own():
    g = snapshot(ic=IC, info=INFO)
    first = g.ic
    first["rows"].clear()
    g.info["z"] = 99
    assert g.ic == IC and g.info == INFO


def test_a_value_marshal_cannot_write_is_kept_as_it_is():
    class Odd:
        pass

    odd = {"x": Odd()}
    assert unpack(pack(odd)) is odd
    assert pack(None) is None
    assert math.isnan(unpack(pack({"v": float("nan")}))["v"])


def test_factor_names_of_different_groups_are_one_string(tmp_path, models):
    for key in ("SOLUSDT_r", "BTCUSDT_r"):
        write_group(tmp_path, key, model=models["booster"])
    snap = load_directory(tmp_path)
    a, b = snap.groups["SOLUSDT_r"], snap.groups["BTCUSDT_r"]
    assert a.factors == b.factors == FACTORS
    assert all(x is y for x, y in zip(a.factors, b.factors))
    assert a.return_name is b.return_name is sys.intern("r")


def test_a_restored_parse_answers_the_same_bytes(tmp_path, models):
    """The detail and the payload of a group parsed from its files and of the same group restored from
    its parse record (a restart, another worker) are the same bytes."""
    info = {"symbol": "SOLUSDT", "return_name": "r", "dim": 5, "train_start": "2026-01-01"}
    write_group(tmp_path, "SOLUSDT_r", model=models["regressor"], info=info,
                ic="factor,IC,Kendall_Tau\n" + "".join(f"{f},0.{i}1,-0.00{i}7\n" for i, f in enumerate(FACTORS)))
    parsed = load_directory(tmp_path).groups["SOLUSDT_r"]
    assert parsed.status == "ok" and parsed.ic["columns"] == ["factor", "ic", "kendall_tau"] and parsed.importance
    restored = snapshot_from_record(json.loads(json.dumps(snapshot_record(parsed))))
    assert restored is not None and dataclasses.replace(restored, model_json=parsed.model_json) == parsed

    def detail_bytes(g: GroupSnapshot) -> bytes:
        return json.dumps(g.detail("m"), separators=(",", ":")).encode()

    assert detail_bytes(restored) == detail_bytes(parsed)
    body = build_payload_bytes("m", parsed, parsed.model_json, version=1)
    assert build_payload_bytes("m", restored, parsed.model_json, version=1) == body
    taus = [d["kendall_tau"] for d in json.loads(body)["payload"]["dim_factors"]]
    assert taus == [-float(f"0.00{i}7") for i in range(len(FACTORS))]


def test_free_memory_is_given_back_on_linux():
    assert release_free_memory() is (sys.platform.startswith("linux") and _glibc())


def _glibc() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc"


def test_big_builds_pause_the_cyclic_collector_and_a_big_load_is_frozen_out_of_it():
    import gc
    import threading
    import weakref

    from model_manager.heap import cyclic_gc_paused, freeze_loaded

    assert gc.isenabled()
    started, release = threading.Event(), threading.Event()

    def other_build():
        with cyclic_gc_paused():
            started.set()
            release.wait(10)

    thread = threading.Thread(target=other_build)
    thread.start()
    started.wait(10)
    with cyclic_gc_paused():  # two builds at once, from two threads: enabled again only after both
        assert not gc.isenabled()
    assert not gc.isenabled()
    release.set()
    thread.join(10)
    assert gc.isenabled()

    class Node:
        pass

    loop = Node()
    loop.me = loop  # a cycle: collected by freeze_loaded's collection, not frozen
    gone = weakref.ref(loop)
    del loop
    alive = [Node() for _ in range(100)]
    frozen_before = gc.get_freeze_count()
    try:
        freeze_loaded()
        assert gone() is None
        assert gc.get_freeze_count() >= frozen_before + len(alive)
    finally:
        gc.unfreeze()
