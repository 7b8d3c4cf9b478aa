"""Versions: recording, the live rule (pin, hold, rollback, release), retention, blob integrity, diff,
and crash safety, on a real sqlite file and payloads of tiny trained XGBoost models."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from model_manager.artifacts import load_group, scan_directory
from model_manager.blobs import BlobStore
from model_manager.conversion import sha256
from model_manager.errors import ConflictError, DamagedDataError, NotFoundError, UnprocessableError
from model_manager.settings import Settings
from model_manager.store import Store
from model_manager.versiondiff import prediction_inputs
from model_manager.versions import VersionStore, candidate
from tests.support import FACTORS, write_group

KEY = "SOLUSDT_mid_chg_1m"


@pytest.fixture(scope="module")
def training_data():
    """The rows every retrain of the group is fitted on (as support.train_models draws them)."""
    rng = np.random.default_rng(42)
    x = rng.normal(size=(80, len(FACTORS))).astype(np.float32)
    return x, x @ np.array([0.5, -0.2, 0.0, 0.3, 0.1]) + rng.normal(scale=0.1, size=80)


@pytest.fixture(scope="module")
def retrains(training_data):
    """Successive trainings of one group: different tree counts and seeds."""
    x, y = training_data
    return [xgb.XGBRegressor(n_estimators=3 + i, max_depth=2, n_jobs=1, random_state=i).fit(x, y) for i in range(4)]


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data" / "model-manager.sqlite3")
    yield s
    s.close()


@pytest.fixture
def vs(store, tmp_path):
    return VersionStore(store, tmp_path / "data", keep=20)


def parse(directory: Path, key: str = KEY):
    scanned, _ = scan_directory(directory)
    return load_group(directory, key, scanned[key])


def record(vs: VersionStore, directory: Path, key: str = KEY, model: str = "m"):
    group = parse(directory, key)
    return vs.record(candidate(model, group, group.model_json))


def retrain(directory: Path, model, **kwargs) -> None:
    for stale in directory.glob(f"{KEY}_model.*"):
        stale.unlink()
    write_group(directory, KEY, model_json=bytes(model.get_booster().save_raw(raw_format="json")), **kwargs)


def body(vs: VersionStore, version: int, key: str = KEY) -> dict:
    return json.loads(gzip.decompress(vs.payload("m", key, version).gzip))


def test_numbering_dedupe_and_metadata_version(vs, tmp_path, retrains):
    d = tmp_path / "models"
    retrain(d, retrains[0])
    first = record(vs, d)
    assert (first.created, first.version.version, first.live.version) == (True, 1, 1)
    # the same files again, and the same files touched later: no new version
    assert record(vs, d).created is False
    later = time.time() + 100
    for f in d.iterdir():
        os.utime(f, (later, later))
    again = record(vs, d)
    assert (again.created, again.version.version) == (False, 1)

    retrain(d, retrains[1])
    second = record(vs, d)
    assert (second.created, second.version.version, second.live_changed) == (True, 2, True)
    retrain(d, retrains[0])  # back to the first model: a new version with the first one's content
    third = record(vs, d)
    assert third.version.version == 3 and third.version.content_sha256 == first.version.content_sha256
    assert vs.heads("m") == {KEY: (3, False, first.version.content_sha256)}  # the latest of each group, one query

    for n in (1, 2, 3):
        stored = vs.payload("m", KEY, n)
        raw = gzip.decompress(stored.gzip)
        assert stored.etag == f'"{sha256(raw)[:32]}"' and stored.size == len(raw)
        payload = json.loads(raw)["payload"]
        assert payload["metadata"]["version"] == n
        assert [f["factor_name"] for f in payload["dim_factors"]] == FACTORS
    assert body(vs, 1)["payload"]["model_json"] == body(vs, 3)["payload"]["model_json"]
    assert second.payload.gzip == vs.payload("m", KEY, 2).gzip  # what record handed back is what is stored
    assert [v["version"] for v in vs.versions("m", KEY)["versions"]] == [3, 2, 1]
    blob = vs.blobs.path(vs.get("m", KEY, 1).blob_sha256)
    assert oct(blob.stat().st_mode & 0o777) == "0o600" and blob.parent.parent == tmp_path / "data" / "versions"


def test_broken_group_makes_no_version(vs, tmp_path, retrains):
    d = tmp_path / "models"
    write_group(d, KEY, model_json=b'{"not": "a model"')
    group = parse(d)
    assert group.errors
    with pytest.raises(UnprocessableError):
        candidate("m", group, b"")
    with pytest.raises(NotFoundError):
        vs.versions("m", KEY)


def test_live_rule_pin_hold_rollback_release(vs, store, tmp_path, retrains):
    d = tmp_path / "models"
    for model in retrains[:3]:
        retrain(d, model)
        record(vs, d)
    state = vs.versions("m", KEY)
    assert (state["live_version"], state["latest_version"], state["pinned_version"], state["held"]) == (3, 3, None, False)
    seq = vs.state_seq()

    state = vs.pin("m", KEY, 1, reason="v3 trades badly", client="cli")
    assert (state["live_version"], state["pinned_version"]) == (1, 1)
    assert vs.state_seq() > seq
    assert vs.live_infos("m") == {KEY: vs.live("m", KEY)} and vs.live_infos("m")[KEY].version == 1  # in one query
    retrain(d, retrains[3])
    rec = record(vs, d)  # a new version while pinned: recorded, not served
    assert (rec.version.version, rec.live.version, rec.live_changed) == (4, 1, False)

    state = vs.unpin("m", KEY, reason="fixed", client="cli")
    assert (state["live_version"], state["pinned_version"]) == (4, None)
    assert vs.live_infos("m")[KEY] == vs.live("m", KEY) and vs.live_infos("other") == {}

    assert vs.hold("m", reason="review first") is True
    assert vs.hold("m") is False
    retrain(d, retrains[1])
    rec = record(vs, d)
    assert (rec.version.version, rec.live.version) == (5, 4)
    assert vs.versions("m", KEY)["held"] is True
    # a pin still wins during a hold; unpinning goes back to the held version, not the latest
    vs.pin("m", KEY, 2)
    assert vs.live("m", KEY).version == 2
    vs.unpin("m", KEY)
    assert vs.live("m", KEY).version == 4
    assert vs.release("m", reason="looks fine") is True
    assert vs.release("m") is False
    assert vs.live("m", KEY).version == 5

    # rollback goes back through what was live and older, never forward: 5 -> 4 -> 2 -> 1
    state = vs.rollback("m", KEY, reason="bad")
    assert state["live_version"] == 4 and state["pinned_version"] == 4
    state = vs.rollback("m", KEY)
    assert state["live_version"] == 2  # v2 was live (pinned) before v4's last period, and is older than 4
    state = vs.rollback("m", KEY)
    assert state["live_version"] == 1
    with pytest.raises(ConflictError, match="nothing to roll back to"):
        vs.rollback("m", KEY)
    with pytest.raises(NotFoundError):
        vs.pin("m", KEY, 99)
    with pytest.raises(NotFoundError):
        vs.rollback("m", "NOPE_x")

    versions = {v["version"]: v for v in vs.versions("m", KEY)["versions"]}
    assert versions[1]["live"] and versions[1]["pinned"] and versions[1]["live_until"] is None
    assert all(not v["live"] for n, v in versions.items() if n != 1)
    assert versions[3]["live_from"] and versions[3]["live_until"]  # served once, then replaced
    assert len(versions[1]["live_periods"]) == 3 and versions[1]["live_periods"][0][1] is not None
    assert versions[5]["live_periods"] == [[versions[5]["live_from"], versions[5]["live_until"]]]
    events = {e["event"]: e["detail"] for e in store.audit_events(limit=50)}
    assert "v3 trades badly" in events["pin"] and "review first" in events["hold"]
    assert "looks fine" in events["release"] and "rolled back from v5 to v4: bad" in " ".join(
        e["detail"] for e in store.audit_events(event="rollback"))
    assert set(versions[1]) >= {"version", "etag", "model_sha256", "created_at", "live", "pinned", "live_from",
                                "live_until", "dim", "factor_count", "model_source", "status", "pruned"}

    # everything survives a restart
    before = vs.versions("m", KEY)
    store.close()
    reopened = Store(store.db_path)
    try:
        assert VersionStore(reopened, tmp_path / "data").versions("m", KEY) == before
    finally:
        reopened.close()


def test_group_first_seen_during_hold_is_held_at_its_first_version(vs, tmp_path, retrains):
    d = tmp_path / "models"
    retrain(d, retrains[0])
    record(vs, d)
    vs.hold("m")
    write_group(d, "BTCUSDT_mid_chg_1m", model_json=bytes(retrains[1].get_booster().save_raw(raw_format="json")))
    assert record(vs, d, "BTCUSDT_mid_chg_1m").live.version == 1
    write_group(d, "BTCUSDT_mid_chg_1m", model_json=bytes(retrains[2].get_booster().save_raw(raw_format="json")))
    assert record(vs, d, "BTCUSDT_mid_chg_1m").live.version == 1
    vs.release("m")
    assert vs.live("m", "BTCUSDT_mid_chg_1m").version == 2


def test_retention_prunes_bytes_keeps_records(store, tmp_path, retrains, training_data):
    vs = VersionStore(store, tmp_path / "data", keep=2)
    d = tmp_path / "models"
    x, y = training_data
    models = [xgb.XGBRegressor(n_estimators=2 + i, max_depth=2, n_jobs=1).fit(x, y) for i in range(6)]
    retrain(d, models[0])
    record(vs, d)
    vs.pin("m", KEY, 1)
    for model in models[1:]:
        retrain(d, model)
        record(vs, d)
    versions = {v["version"]: v for v in vs.versions("m", KEY)["versions"]}
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]
    assert [n for n, v in versions.items() if not v["pruned"]] == [6, 5, 1]  # newest two and the pinned one
    for n in (2, 3, 4):
        assert not vs.blobs.exists(vs.get("m", KEY, n).blob_sha256)
        with pytest.raises(NotFoundError, match="pruned"):
            vs.payload("m", KEY, n)
        with pytest.raises(ConflictError, match="pruned"):
            vs.pin("m", KEY, n)
    # unpinning lets v1 go, unless it is the rollback target: live 6 was preceded by 1 (pinned all along)
    vs.unpin("m", KEY)
    assert vs.live("m", KEY).version == 6
    assert not vs.get("m", KEY, 1).pruned  # the rollback target keeps its bytes
    assert vs.rollback("m", KEY)["live_version"] == 1
    # a diff of a pruned version still compares what the records hold
    diff = vs.diff("m", KEY, 2, 6)
    assert diff["predictions"] is None and "pruned" in diff["predictions_note"]
    assert diff["model"]["num_trees"] == {"from": 3, "to": 7}


def test_a_blob_is_hashed_when_read_unless_this_process_wrote_that_very_file(vs):
    """The first read of a blob by the process that wrote it skips the hash only while the file is the
    one it wrote (inode, size, mtime): one edited in place since, even to the same size, is refused;
    so is a second read of a damaged one."""
    blobs = vs.blobs
    first = blobs.put(b"version bytes one", durable=False)
    assert bytes(blobs.get(first, mapped=True)) == b"version bytes one"
    second = blobs.put(b"version bytes two")
    path = blobs.path(second)
    stamp = path.stat().st_mtime_ns
    path.write_bytes(b"version bytes 2wo")  # the same size, a later mtime
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))
    with pytest.raises(DamagedDataError, match="damaged"):
        blobs.get(second, mapped=True)
    path = blobs.path(first)
    path.write_bytes(b"version bytes 0ne")
    os.utime(path, ns=(stamp, stamp))  # even with its mtime put back: read once already
    with pytest.raises(DamagedDataError, match="damaged"):
        blobs.get(first)


def test_another_process_trusts_a_blob_only_as_its_writer_would(vs):
    """A worker that has just written and hashed blobs hands their identities to the other workers
    (`fresh`, `trust`): their first read skips the hash as the writer's would, only while the file is
    the one written; a file changed since (a later mtime) is refused, and so is any read after the
    first. What is not a digest and three integers is not taken."""
    writer, reader = vs.blobs, BlobStore(vs.blobs.root)  # two processes' stores of one data dir
    one, two = writer.put(b"version bytes one", durable=False), writer.put(b"version bytes two", durable=False)
    offered = {d: list(i) for d, i in writer.fresh([one, two, "cd" * 32]).items()}  # (as JSON hands them over)
    assert set(offered) == {one, two}
    assert reader.trust({**offered, "not a digest": [1, 2, 3], "ef" * 32: [1, 2], "01" * 32: ["1", 2, 3]}) == 2
    path = reader.path(one)
    stamp = path.stat().st_mtime_ns
    path.write_bytes(b"version bytes 0ne")  # changed in place, to the same size and mtime:
    os.utime(path, ns=(stamp, stamp))
    assert bytes(reader.get(one)) == b"version bytes 0ne"  # what the writer's own first read would pass too
    with pytest.raises(DamagedDataError, match="damaged"):
        reader.get(one)  # a second read is checked
    path = reader.path(two)
    path.write_bytes(b"version bytes 2wo")
    os.utime(path, ns=(stamp + 10**9, stamp + 10**9))  # a later mtime: not the file written
    with pytest.raises(DamagedDataError, match="damaged"):
        reader.get(two)


def test_blob_integrity(vs, tmp_path, retrains):
    d = tmp_path / "models"
    retrain(d, retrains[0])
    info = record(vs, d).version
    path = vs.blobs.path(info.blob_sha256)
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(DamagedDataError, match="damaged"):
        vs.payload("m", KEY, 1)
    path.unlink()
    with pytest.raises(DamagedDataError):
        vs.payload("m", KEY)
    # recording the same, untouched files again rewrites the exact bytes that went missing
    assert record(vs, d).created is False
    assert vs.payload("m", KEY).gzip == data


def test_blob_written_by_the_standard_librarys_zlib_is_healed_too(vs, store, tmp_path, retrains):
    """Blobs of releases before zlib-ng and libdeflate hold zlib's bytes (another sha256): a missing one is rebuilt
    with the compressor that made it, so its name still matches its content. One no compressor here
    reproduces is rebuilt with ours, under a new name."""
    d = tmp_path / "models"
    retrain(d, retrains[0])
    info = record(vs, d).version
    raw = gzip.decompress(vs.payload("m", KEY, 1).gzip)
    old = gzip.compress(raw, 6, mtime=0)
    assert old != vs.payload("m", KEY, 1).gzip  # libdeflate's bytes differ from zlib's
    with store.transaction() as db:
        db.execute("UPDATE versions SET blob_sha256 = ? WHERE version = 1", (sha256(old),))
    vs.blobs.path(info.blob_sha256).unlink()
    assert record(vs, d).created is False
    assert vs.payload("m", KEY, 1).gzip == old
    # a blob whose bytes no compressor here reproduces (zlib-ng's, from an earlier release): the payload is
    # rebuilt, and the version's row names the new blob
    with store.transaction() as db:
        db.execute("UPDATE versions SET blob_sha256 = ? WHERE version = 1", ("0" * 64,))
    assert record(vs, d).created is False
    assert gzip.decompress(vs.payload("m", KEY, 1).gzip) == raw
    assert vs.get("m", KEY, 1).blob_sha256 != "0" * 64


def test_identical_bytes_stored_once_and_sweep(vs, tmp_path, retrains):
    d = tmp_path / "models"
    retrain(d, retrains[0])
    info = record(vs, d).version
    packed = vs.payload("m", KEY, 1).gzip
    assert vs.blobs.put(packed) == info.blob_sha256
    assert len(list((tmp_path / "data" / "versions").rglob("*.gz"))) == 1
    orphan = vs.blobs.put(b"left by a writer killed before its row")
    assert vs.sweep() == 0 and vs.blobs.exists(orphan)  # too young: its row may be about to commit
    old = time.time() - 3600
    os.utime(vs.blobs.path(orphan), (old, old))
    assert vs.blobs.put(b"left by a writer killed before its row") == orphan  # stored again: young again
    assert vs.sweep() == 0 and vs.blobs.exists(orphan)
    os.utime(vs.blobs.path(orphan), (old, old))
    assert vs.sweep() == 1 and not vs.blobs.exists(orphan) and vs.blobs.exists(info.blob_sha256)


def test_a_blob_swept_between_its_write_and_its_row_is_written_again(vs):
    """`record` writes the blob, then commits the row that names it; a sweep in between may take an
    identical old orphan that `put` found intact. `ensure` (in the row's transaction) puts it back."""
    digest = vs.blobs.put(b"a payload")
    assert vs.blobs.delete(digest)
    vs.blobs.ensure(b"a payload", digest)
    assert vs.blobs.get(digest) == b"a payload"


def test_a_body_built_ahead_is_recorded_without_the_model_json(vs, tmp_path, retrains):
    """A registration builds each group's first version while the group's JSON is in memory
    (`prebuild`) and writes the row later (`record(cand, prebuilt)`), without the JSON."""
    d = tmp_path / "models"
    retrain(d, retrains[0])
    group = parse(d)
    prebuilt = vs.prebuild(candidate("m", group, group.model_json), 1)
    assert vs.history("m", KEY) == [] and vs.blobs.exists(prebuilt.blob_sha256)  # no row yet

    def gone() -> bytes:
        raise AssertionError("the JSON is not needed: the body was built ahead")

    recorded = vs.record(candidate("m", group, gone), prebuilt)
    assert (recorded.created, recorded.version.version, recorded.live.version) == (True, 1, 1)
    assert recorded.version.blob_sha256 == prebuilt.blob_sha256 and recorded.version.size == prebuilt.size
    raw = gzip.decompress(vs.payload("m", KEY, 1).gzip)
    assert recorded.version.etag == f'"{sha256(raw)[:32]}"' and json.loads(raw)["payload"]["metadata"]["version"] == 1
    # the version's payload is where the model JSON is found from now on
    assert vs.has_model_json(group.model_sha256) and vs.find_model_json(group.model_sha256) == group.model_json
    assert not vs.has_model_json("0" * 64) and vs.find_model_json("0" * 64) is None

    # a body built for a number taken meanwhile, or swept before its row, is built again from the JSON
    retrain(d, retrains[1])
    second = parse(d)
    stale = vs.prebuild(candidate("m", second, second.model_json), 1)
    assert vs.record(candidate("m", second, second.model_json), stale).version.version == 2
    retrain(d, retrains[2])
    third = parse(d)
    swept = vs.prebuild(candidate("m", third, third.model_json), 3)
    assert vs.blobs.delete(swept.blob_sha256)
    info = vs.record(candidate("m", third, third.model_json), swept).version
    assert info.version == 3 and vs.blobs.exists(info.blob_sha256)
    assert json.loads(gzip.decompress(vs.payload("m", KEY, 3).gzip))["payload"]["model_json"].encode() == third.model_json


def test_a_body_built_ahead_is_synced_to_disk_before_a_row_names_it(vs, store, tmp_path, retrains, monkeypatch):
    """`prebuild` writes without an fsync; the blobs are synced together (`make_durable`) before the
    rows are written, and `record` syncs one that was not, so no committed row names bytes a power cut
    could lose. Every fsync of a blob is logged with the rows naming it at that moment."""
    import model_manager.blobs as blobs_module

    synced: list[tuple[str, int]] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.endswith(".gz"):
            rows = store.query("SELECT COUNT(*) FROM versions WHERE blob_sha256 = ?", (name[:-3],))[0][0]
            synced.append((name[:-3], rows))

    monkeypatch.setattr(blobs_module.os, "fsync", fsync)
    d = tmp_path / "models"
    retrain(d, retrains[0])
    group = parse(d)
    first = vs.prebuild(candidate("m", group, group.model_json), 1)
    assert synced == []  # written, not yet synced
    vs.make_durable([first])
    assert synced == [(first.blob_sha256, 0)]
    vs.make_durable([first])  # synced once
    vs.record(candidate("m", group, group.model_json), first)
    assert synced == [(first.blob_sha256, 0)]

    retrain(d, retrains[1])
    second = parse(d)
    left_over = vs.prebuild(candidate("m", second, second.model_json), 2)
    assert vs.record(candidate("m", second, second.model_json), left_over).created
    assert synced[1:] == [(left_over.blob_sha256, 0)]  # synced by `record`, before its row
    assert store.query("SELECT COUNT(*) FROM versions WHERE blob_sha256 = ?", (left_over.blob_sha256,))[0][0] == 1

    # built again by `record` (no body handed to it): the same bytes, on disk unsynced, are synced first
    retrain(d, retrains[2])
    third = parse(d)
    unsynced = vs.prebuild(candidate("m", third, third.model_json), 3)
    del synced[:]
    assert vs.record(candidate("m", third, third.model_json)).version.blob_sha256 == unsynced.blob_sha256
    assert (unsynced.blob_sha256, 0) in synced


def test_a_body_built_ahead_whose_fsync_fails_is_built_again(vs, store, tmp_path, retrains, monkeypatch):
    """After a failed writeback Linux reports the error to one fsync and lets the next succeed, so a
    blob whose fsync failed is deleted, never synced again: `record` builds and writes it once more,
    durably."""
    import errno

    import model_manager.blobs as blobs_module

    failing: set[str] = set()
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        digest = name.lstrip(".").partition(".gz")[0] if ".gz" in name else None  # (a blob or its temp file)
        if digest in failing:
            failing.discard(digest)
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)
        if digest:
            synced.append(digest)

    monkeypatch.setattr(blobs_module.os, "fsync", fsync)
    d = tmp_path / "models"
    retrain(d, retrains[0])
    group = parse(d)
    cand = candidate("m", group, group.model_json)
    ahead = vs.prebuild(cand, 1)
    failing.add(ahead.blob_sha256)
    assert vs.blobs.make_durable([ahead.blob_sha256]) == {ahead.blob_sha256}
    assert not vs.blobs.exists(ahead.blob_sha256)  # deleted, not left for a second fsync to "succeed"
    recorded = vs.record(cand, ahead)
    assert recorded.created and recorded.version.blob_sha256 == ahead.blob_sha256  # (the same bytes, rebuilt)
    assert vs.blobs.exists(ahead.blob_sha256) and synced == [ahead.blob_sha256]
    assert json.loads(gzip.decompress(vs.payload("m", KEY, 1).gzip))["payload"]["metadata"]["version"] == 1


def test_bodies_built_ahead_are_recorded_a_batch_to_a_transaction(vs, store, tmp_path, retrains, monkeypatch):
    """A registration's first versions are written by `record_prebuilt`, RECORD_BATCH to a
    transaction, as `record` would write each. A group whose number was taken meanwhile, whose content
    is its latest version's or whose blob is gone is left out, for `record`; during a hold, a group
    that first appears is held at its first version."""
    import model_manager.versions as versions_module

    monkeypatch.setattr(versions_module, "RECORD_BATCH", 2)
    d = tmp_path / "models"
    keys = [f"SYM{i}USDT_mid_chg_1m" for i in range(5)]
    for i, key in enumerate(keys):
        write_group(d, key, model_json=bytes(retrains[i % 3].get_booster().save_raw(raw_format="json")))
    groups = {key: parse(d, key) for key in keys}
    cands = {key: candidate("m", g, g.model_json) for key, g in groups.items()}
    ahead = {key: vs.prebuild(cands[key], 1) for key in keys}
    vs.record(cands[keys[0]], ahead[keys[0]])  # recorded on its own already: equal content, left out
    vs.record(candidate("m", groups[keys[1]], groups[keys[1]].model_json))  # (the same bytes as version 1)
    vs.hold("m")
    assert vs.blobs.delete(ahead[keys[2]].blob_sha256)  # swept before its row
    batch = vs.record_prebuilt([(cands[key], ahead[key]) for key in keys])
    assert set(batch) == set(keys[3:])
    for key in keys[3:]:
        rec = batch[key]
        assert rec.created and rec.version.version == 1 and rec.version.blob_sha256 == ahead[key].blob_sha256
        assert rec.live is not None and rec.live.version == 1 and rec.live_changed
        assert vs.get("m", key, 1) == rec.version and vs.live("m", key).version == 1
        assert store.query("SELECT version FROM held_versions WHERE model = 'm' AND group_key = ?", (key,)) == [(1,)]
        assert json.loads(gzip.decompress(vs.payload("m", key).gzip))["payload"]["metadata"]["version"] == 1
    # what was left out: recorded already (keys 0 and 1), or recorded by `record`, which builds it again (key 2)
    assert [vs.history_head("m", key).version for key in keys[:2]] == [1, 1]
    rec = vs.record(cands[keys[2]], ahead[keys[2]])
    assert rec.created and rec.version.version == 1 and vs.blobs.exists(rec.version.blob_sha256)

def test_restored_groups_are_looked_up_together_as_record_would(vs, store, tmp_path, retrains):
    """A start restores its groups from their parse records and `record_unchanged` looks up their
    versions in one query and one transaction: for each group whose content is its latest version's,
    what `record` says (nothing new; its live version; a live period a removal had closed opened
    again); a group whose content changed is left out, for `record`."""
    d = tmp_path / "models"
    keys = [f"SYM{i}USDT_mid_chg_1m" for i in range(4)]
    for i, key in enumerate(keys):
        write_group(d, key, model_json=bytes(retrains[i % 3].get_booster().save_raw(raw_format="json")))
        record(vs, d, key)
    vs.group_removed("m", keys[1])  # its files went and came back: no live version until it is seen again
    write_group(d, keys[2], model_json=bytes(retrains[3].get_booster().save_raw(raw_format="json")))  # retrained
    groups = {key: parse(d, key) for key in keys}
    cands = [candidate("m", g, g.model_json) for g in groups.values()]
    together = vs.record_unchanged(cands)
    assert set(together) == {keys[0], keys[1], keys[3]}
    assert together[keys[1]].live_changed and not together[keys[0]].live_changed
    for key, rec in together.items():
        head = vs.history_head("m", key)  # (as `record`, the row as read before its live period was put right)
        assert not rec.created and (rec.version.version, rec.version.etag) == (head.version, head.etag)
        assert rec.live == vs.live("m", key) and rec.live.version == 1
    alone = vs.record(cands[2])  # what it left out
    assert alone.created and alone.version.version == 2


def test_unregister_keeps_history_and_drops_pins(vs, store, tmp_path, retrains):
    d = tmp_path / "models"
    store.add_model("m", str(d))
    for model in retrains[:2]:
        retrain(d, model)
        record(vs, d)
    vs.pin("m", KEY, 1)
    vs.hold("m")
    blob = vs.get("m", KEY, 1).blob_sha256
    assert store.remove_model("m")
    assert vs.live("m", KEY) is None and vs.hold_info("m") is None
    assert vs.sweep() == 2 and not vs.blobs.exists(blob)
    history = vs.versions("m", KEY)
    assert history["pinned_version"] is None and all(v["pruned"] for v in history["versions"])
    assert all(v["live_until"] for v in history["versions"])
    # a new registration of the name continues the numbers; the same content is a new version
    store.add_model("m", str(d))
    rec = record(vs, d)
    assert (rec.created, rec.version.version, rec.live.version) == (True, 3, 3)


def test_diff_values(vs, tmp_path, training_data):
    x, y = training_data
    d = tmp_path / "models"
    old_model = xgb.XGBRegressor(n_estimators=4, max_depth=2, n_jobs=1, learning_rate=0.3).fit(x, y)
    new_model = xgb.XGBRegressor(n_estimators=6, max_depth=3, n_jobs=1, learning_rate=0.1).fit(x[:, [1, 0, 2, 3, 4]], y)
    retrain(d, old_model, info={"train_end": "2026-10-01", "lr": 0.3, "gone": 1},
            ic="factor,ic,kendall_tau\n" + "".join(f"{f},0.0{i + 1},0.1\n" for i, f in enumerate(FACTORS)))
    record(vs, d)
    new_factors = [FACTORS[1], FACTORS[0], "book_skew", FACTORS[3], FACTORS[4]]
    retrain(d, new_model, factors=new_factors, info={"train_end": "2026-11-01", "lr": 0.1, "new": True},
            ic="factor,ic,kendall_tau\n" + "".join(f"{f},0.0{i + 2},\n" for i, f in enumerate(new_factors)))
    record(vs, d)
    diff = vs.diff("m", KEY)
    assert (diff["from"]["version"], diff["to"]["version"]) == (1, 2)
    assert diff["factors"] == {"added": ["book_skew"], "removed": ["depth_imb_5"],
                               "moved": [{"factor": "spread_bps", "from_dim": 1, "to_dim": 0},
                                         {"factor": "ofi_1m", "from_dim": 0, "to_dim": 1}]}
    assert diff["dim"] == {"from": 5, "to": 5}
    ic = {(e["factor"], e["metric"]): e for e in diff["ic"]}
    assert ic[("spread_bps", "ic")]["from"] == 0.02 and ic[("spread_bps", "ic")]["to"] == 0.02
    assert ic[("ofi_1m", "ic")]["delta"] == pytest.approx(0.02)
    assert ic[("ofi_1m", "kendall_tau")]["to"] is None and ic[("ofi_1m", "kendall_tau")]["delta"] is None
    assert ic[("book_skew", "ic")]["from"] is None and ic[("depth_imb_5", "ic")]["to"] is None
    assert diff["info"]["changed"] == {"train_end": {"from": "2026-10-01", "to": "2026-11-01"}, "lr": {"from": 0.3, "to": 0.1}}
    assert (diff["info"]["added"], diff["info"]["removed"]) == (["new"], ["gone"])
    assert diff["model"]["num_trees"] == {"from": 4, "to": 6}
    assert diff["model"]["params"]["changed"]["max_tree_depth"] == {"from": 2, "to": 3}
    assert "objective" not in diff["model"]["params"]["changed"]
    # predictions: both models on the same inputs, compared here with xgboost directly
    jsons = [json.loads(gzip.decompress(vs.payload("m", KEY, n).gzip))["payload"]["model_json"].encode() for n in (1, 2)]
    inputs = prediction_inputs(jsons, 5)
    a = old_model.get_booster().predict(xgb.DMatrix(inputs)).astype(np.float64)
    b = new_model.get_booster().predict(xgb.DMatrix(inputs)).astype(np.float64)
    pred = diff["predictions"]
    assert pred["rows"] == len(inputs) == 1000
    assert pred["mean_abs_diff"] == pytest.approx(np.abs(a - b).mean(), rel=1e-6)
    assert pred["max_abs_diff"] == pytest.approx(np.abs(a - b).max(), rel=1e-6)
    assert pred["correlation"] == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-6)
    assert vs.diff("m", KEY, 1, 1)["predictions"]["max_abs_diff"] == 0.0
    with pytest.raises(NotFoundError):
        vs.diff("m", KEY, 1, 9)
    with pytest.raises(NotFoundError, match="no version before"):
        vs.diff("m", KEY, None, 1)
    json.dumps(diff, allow_nan=False)  # printable as it is


def test_diff_of_different_dims_has_no_predictions(vs, tmp_path, training_data):
    x, y = training_data
    d = tmp_path / "models"
    retrain(d, xgb.XGBRegressor(n_estimators=2, max_depth=2, n_jobs=1).fit(x, y))
    record(vs, d)
    retrain(d, xgb.XGBRegressor(n_estimators=2, max_depth=2, n_jobs=1).fit(x[:, :4], y), factors=FACTORS[:4])
    record(vs, d)
    diff = vs.diff("m", KEY)
    assert diff["dim"] == {"from": 5, "to": 4} and diff["predictions"] is None
    assert diff["factors"]["removed"] == ["vol_5m"]


def test_keep_versions_setting():
    assert Settings().keep_versions == 20
    assert Settings.from_env({"MODEL_MANAGER_KEEP_VERSIONS": "3"}).keep_versions == 3


_WRITER = textwrap.dedent("""
    import dataclasses, sys
    from pathlib import Path
    from model_manager.artifacts import load_group, scan_directory
    from model_manager.store import Store
    from model_manager.versions import VersionStore, candidate
    data, models = Path(sys.argv[1]), Path(sys.argv[2])
    store = Store(data / "model-manager.sqlite3")
    vs = VersionStore(store, data, keep=4)
    scanned, _ = scan_directory(models)
    group = load_group(models, "SOLUSDT_mid_chg_1m", scanned["SOLUSDT_mid_chg_1m"])
    i = vs.history_head("m", group.group_key).version if vs.history_head("m", group.group_key) else 0
    while True:
        i += 1
        g = dataclasses.replace(group, info={"run": i})
        vs.record(candidate("m", g, group.model_json))
        if i % 3 == 0:
            vs.pin("m", g.group_key, max(1, i - 2), reason="crash test")
        elif i % 3 == 1:
            vs.unpin("m", g.group_key, reason="crash test")
        print(i, flush=True)
""")


def test_kill_9_while_recording_and_pinning_leaves_a_consistent_store(tmp_path, retrains):
    d = tmp_path / "models"
    retrain(d, retrains[0])
    data = tmp_path / "data"
    data.mkdir()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    for round_ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(data), str(d)], stdout=subprocess.PIPE, env=env)
        try:
            for _ in range(5 + 3 * round_):  # let it get a few versions in, then kill it mid-flight
                assert proc.stdout.readline(), "the writer died on its own"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()
    store = Store(data / "model-manager.sqlite3")
    try:
        vs = VersionStore(store, data, keep=4)
        numbers = sorted(v.version for v in vs.history("m", KEY))
        assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 20
        for info in vs.history("m", KEY):
            if not info.pruned:
                assert json.loads(gzip.decompress(vs.payload("m", KEY, info.version).gzip))["payload"]["metadata"]["version"] == info.version
        live = vs.live("m", KEY)
        assert live is not None and vs.payload("m", KEY).version == live.version
        periods = store.query("SELECT COUNT(*) FROM live_periods WHERE model = 'm' AND live_until IS NULL")
        assert periods == [(1,)]
        vs.sweep()  # orphans of killed writers are young, so only what retention released goes
        assert vs.record(candidate("m", parse(d), parse(d).model_json)).version.version == len(numbers) + 1
    finally:
        store.close()
