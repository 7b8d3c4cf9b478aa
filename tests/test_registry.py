"""The in-memory registry: parse records let a restart skip re-parsing groups whose files did not
change, and a changed or damaged record only costs a re-parse."""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import shutil

import pytest

from model_manager import registry as registry_module
from model_manager.artifacts import load_directory
from model_manager.errors import DuplicateSymbolError
from model_manager.service import ModelManager
from tests import support


def _loaded(settings) -> dict:
    """A fresh registry's first load of every registered model (what a restart does), as
    {group_key: (summary, detail, etag)}."""
    with ModelManager(settings) as manager:
        registry = manager.serve()
        registry.sync_registrations()
        model = registry.get("demo")
        return {k: (s.snapshot.summary(), s.snapshot.detail("demo"), s.payload.etag if s.payload else None)
                for k, s in model.groups.items()}


def test_restart_restores_unchanged_groups_and_reparses_changed_ones(settings, demo_dir):
    with ModelManager(settings) as manager:
        manager.serve()
        done = manager.register("demo", str(demo_dir))
        assert done.created
        first = {k: (s.snapshot.summary(), s.snapshot.detail("demo"), s.payload.etag if s.payload else None)
                 for k, s in done.model.groups.items()}
    served = [k for k, v in first.items() if v[2] is not None]
    records = list((settings.cache_dir / "snapshots").glob("*.json"))
    assert served and len(records) == len(served)  # one parse record per served group

    assert _loaded(settings) == first  # a restart shows exactly what the first load showed

    # a changed file is parsed again; the other groups are as they were
    changed = served[0]
    ic = demo_dir / f"{changed}_ic.csv"
    rows = list(csv.reader(ic.read_text().splitlines()))
    column = [c.lower() for c in rows[0]].index("kendall_tau")
    ic.write_text("\n".join(",".join(r[:column] + ["0.5"] + r[column + 1:]) if i else ",".join(r)
                            for i, r in enumerate(rows)) + "\n")
    again = _loaded(settings)
    assert again[changed][1]["ic"] != first[changed][1]["ic"]
    assert again[changed][2] != first[changed][2]  # the payload carries the new kendall_tau
    assert {k: v for k, v in again.items() if k != changed} == {k: v for k, v in first.items() if k != changed}

    # damaged records are only a miss: the groups are parsed again and come out the same
    for i, record in enumerate((settings.cache_dir / "snapshots").glob("*.json")):
        head, body = record.read_bytes().split(b"\n", 1)
        if i % 3 == 0:
            record.write_text("{not json")
        elif i % 3 == 1:  # an edited body under its old hash
            record.write_bytes(head + b"\n" + body.replace(b'"factors":[', b'"factors":["injected",', 1))
        else:  # a record of another layout
            record.write_bytes(head.replace(b'"version": "', b'"version": "0.0.1/') + b"\n" + body)
    assert _loaded(settings) == again

    # a start takes an unchanged group from its record, not from its files: a record rewritten whole
    # (fields and hash) is believed
    record = next((settings.cache_dir / "snapshots").glob("*.json"))
    head, body = record.read_bytes().split(b"\n", 1)
    body = body.replace(b'"factors":[', b'"factors":["from_the_record",', 1)
    head = json.dumps({**json.loads(head), "sha256": hashlib.sha256(body).hexdigest()}).encode()
    record.write_bytes(head + b"\n" + body)
    believed = [k for k, v in _loaded(settings).items() if "from_the_record" in json.dumps(v[1])]
    assert len(believed) == 1


def test_a_registered_pickles_json_is_written_once_and_found_in_its_version(settings, demo_dir):
    """A registration keeps a converted model's JSON in its version's payload only (no copy in the
    cache); a later version of the same model (here: a changed IC table) takes it from there, without
    checking the pickle again."""
    with ModelManager(settings) as manager:
        manager.serve()
        done = manager.register("demo", str(demo_dir))
        pickled = [k for k, s in done.model.groups.items() if s.payload is not None and s.snapshot.model_source == "pkl"]
        assert pickled
        assert not list((settings.cache_dir / "json").iterdir())
        before = {p.name: p.stat().st_ino for p in (settings.cache_dir / "models").iterdir()}
        first_json = json.loads(gzip.decompress(manager.versions.payload("demo", pickled[0], 1).gzip))["payload"]["model_json"]
    _set_tau(demo_dir, pickled[0], "0.5")
    again = _loaded(settings)
    assert again[pickled[0]][2] is not None
    with ModelManager(settings) as manager:
        payload = json.loads(gzip.decompress(manager.versions.payload("demo", pickled[0], 2).gzip))["payload"]
        assert payload["model_json"] == first_json and payload["metadata"]["version"] == 2
    assert {p.name: p.stat().st_ino for p in (settings.cache_dir / "models").iterdir()} == before  # nothing checked again
    assert not list((settings.cache_dir / "json").iterdir())


def _set_tau(demo_dir, group_key: str, tau: str) -> None:
    ic = demo_dir / f"{group_key}_ic.csv"
    rows = list(csv.reader(ic.read_text().splitlines()))
    rows[1][[c.lower() for c in rows[0]].index("kendall_tau")] = tau
    ic.write_text("\n".join(",".join(r) for r in rows) + "\n")


def _pickled(model) -> list[str]:
    return [k for k, s in model.groups.items() if s.payload is not None and s.snapshot.model_source == "pkl"]


def _loaded_at(registry, name: str) -> dict:
    return {k: (s.outcome, s.payload.version if s.payload else None) for k, s in registry.get(name).groups.items()
            if not s.snapshot.errors}


def test_a_missing_blob_of_a_converted_model_is_rebuilt_from_its_model_file_at_a_start(settings, demo_dir):
    """The blob of a pickle group's live version is lost while the server is down. The start restores
    the group from its parse record; no kept version holds its JSON any more, so the pickle is checked
    again and the blob is written back: the same version, byte for byte."""
    with ModelManager(settings) as manager:
        manager.serve()
        key = _pickled(manager.register("demo", str(demo_dir)).model)[0]
        info = manager.versions.get("demo", key, 1)
        blob = manager.versions.blobs.path(info.blob_sha256)
        body = gzip.decompress(blob.read_bytes())
    blob.unlink()
    with ModelManager(settings) as manager:
        registry = manager.serve()
        assert registry.sync_registrations()
        state = registry.get("demo").groups[key]
        assert (state.outcome, state.payload.version) == ("loaded", 1)
        assert gzip.decompress(manager.versions.payload("demo", key, 1).gzip) == body


def test_a_damaged_blob_does_not_stop_the_next_versions_of_its_model(settings, demo_dir):
    """The only version holding a converted model's JSON has a damaged blob. A change of the group's IC
    table still makes a new version: the pickle is checked again for its JSON."""
    with ModelManager(settings) as manager:
        registry = manager.serve()
        key = _pickled(manager.register("demo", str(demo_dir)).model)[0]
        blob = manager.versions.blobs.path(manager.versions.get("demo", key, 1).blob_sha256)
        blob.write_bytes(blob.read_bytes()[:100])
        for version, tau in ((2, "0.5"), (3, "0.6")):
            _set_tau(demo_dir, key, tau)
            registry.refresh("demo")
            state = registry.get("demo").groups[key]
            assert (state.outcome, state.payload.version) == ("updated", version)
            model_json = json.loads(gzip.decompress(manager.versions.payload("demo", key, version).gzip))["payload"]["model_json"]
            assert json.loads(model_json)["learner"]


def test_a_registration_whose_models_json_was_in_a_model_unregistered_meanwhile(settings, demo_dir):
    """`new` is registered from the directory `old` serves: the pickles are not converted again, their
    JSON is in `old`'s versions. `old` is unregistered before `new` records its versions (its versions
    pruned at once): the pickles are checked again, and every group of `new` is served."""
    with ModelManager(settings) as manager:
        registry = manager.serve()
        manager.register("old", str(demo_dir))
        install = registry.install

        def install_after_unregister(*args, **kwargs):
            manager.store.remove_model("old")  # `model-manager unregister old`, from another process
            return install(*args, **kwargs)

        registry.install = install_after_unregister
        new = manager.register("new", str(demo_dir)).model
        assert _pickled(new)
        assert set(_loaded_at(registry, "new").values()) == {("loaded", 1)}


def test_bodies_built_ahead_and_swept_before_their_rows_are_built_again(settings, demo_dir):
    """A sweep removes the blobs a registration built ahead before `install` writes their rows (an
    orphan left by a refused attempt, older than the grace period, has the same bytes): `install`
    builds them again from the model files, and no row names a missing blob."""
    with ModelManager(settings) as manager:
        registry = manager.serve()
        install = registry.install

        def install_after_sweep(name, path, registered_at, snap, prebuilt=None):
            assert prebuilt
            for built in prebuilt.values():
                manager.versions.blobs.delete(built.blob_sha256)
            return install(name, path, registered_at, snap, prebuilt)

        registry.install = install_after_sweep
        assert _pickled(manager.register("demo", str(demo_dir)).model)
        assert set(_loaded_at(registry, "demo").values()) == {("loaded", 1)}
        for (blob,) in manager.store.query("SELECT blob_sha256 FROM versions WHERE model = 'demo'"):
            assert manager.versions.blobs.exists(blob)


def test_a_re_read_refused_for_a_duplicate_symbol_records_no_version(settings, demo_dir):
    """A re-read that would put a symbol in two groups is refused whole: the changed group's new
    version is not recorded nor made live, so the workers that serve what the store says live agree
    with the one that refused it."""
    with ModelManager(settings) as manager:
        registry = manager.serve()
        keys = sorted(k for k, s in manager.register("demo", str(demo_dir)).model.groups.items() if s.payload is not None)
        changed, twin = keys[0], keys[1]
        live = manager.versions.live_versions("demo")
        _set_tau(demo_dir, changed, "0.5")
        for path in list(demo_dir.glob(f"{twin}_*")):  # a second group of the same symbol
            shutil.copy(path, demo_dir / path.name.replace(twin, f"{twin}x"))
        with pytest.raises(DuplicateSymbolError):
            registry.refresh("demo")
        assert manager.versions.live_versions("demo") == live
        assert manager.store.query("SELECT COUNT(*) FROM versions WHERE model = 'demo'") == [(len(live),)]
        assert registry.get("demo").groups[changed].payload.version == 1
        for path in list(demo_dir.glob(f"{twin}x_*")):  # the duplicate removed: the change goes through
            path.unlink()
        registry.refresh("demo")
        assert registry.get("demo").groups[changed].payload.version == 2
        assert manager.versions.live_versions("demo") == {**live, changed: 2}


def test_a_re_reads_hook_keeps_no_model_json_in_memory(settings, demo_dir):
    """Each group a re-read parses leaves the hook without its converted JSON: a changed one's body is
    built and stored, an unchanged one makes no version, a broken one makes none either."""
    with ModelManager(settings) as manager:
        registry = manager.serve()
        keys = sorted(k for k, s in manager.register("demo", str(demo_dir)).model.groups.items() if s.payload is not None)
        (demo_dir / f"{keys[0]}_factors.txt").write_text("a\nb\n")  # fewer factors than the model's features
        _set_tau(demo_dir, keys[1], "0.5")
        hook, prebuilt, parsed = registry.payload_hook("demo", str(demo_dir), None)
        seen: dict[str, tuple[bool, bytes | None]] = {}

        def watch(group) -> None:
            had_json = group.model_json is not None
            hook(group)
            seen[group.group_key] = (had_json, group.model_json)

        load_directory(str(demo_dir), cache=None, max_bytes=settings.max_artifact_bytes, prepare=watch)
        assert seen[keys[0]][0] and seen[keys[1]][0]  # (no cache: every model checked and converted)
        assert all(json is None for _, json in seen.values())
        assert set(prebuilt) == {keys[1]} and parsed == set(seen)


def _served(registry, name: str) -> dict:
    return {k: s.payload.etag if s.payload else None for k, s in registry.get(name).groups.items()}


def test_a_registration_through_another_worker_is_followed_not_checked_again(settings, demo_dir, tmp_path):
    """Of several workers sharing a store, the one a registration reaches checks the files and records
    the versions; another serves the same groups from its parse records and versions, writing nothing.
    A directory registered outside the server (no parse records) is loaded by the follower itself."""
    with ModelManager(settings) as worker, ModelManager(settings) as other:
        follower = other.serve()
        follower.load_registered()  # its first load: nothing registered yet
        follower.follows_registrations = True
        worker.serve()
        done = worker.register("demo", str(demo_dir))
        statements: list[str] = []
        other.store._db.set_trace_callback(statements.append)
        assert follower.sync_registrations()
        other.store._db.set_trace_callback(None)
        assert _served(follower, "demo") == {k: s.payload.etag if s.payload else None for k, s in done.model.groups.items()}
        assert statements and not [s for s in statements if not s.lstrip().upper().startswith("SELECT")]  # reads only

    # registered offline (the CLI): versions recorded, no parse records: the follower checks it itself
    offline_dir = support.copy_dir(demo_dir, tmp_path / "offline")
    with ModelManager(settings) as cli:
        cli.register("offline", str(offline_dir))
    with ModelManager(settings) as other:
        follower = other.serve()
        follower.follows_registrations = True
        assert follower.sync_registrations()
        groups = follower.get("offline").groups
        assert groups and all(s.payload is not None for s in groups.values() if not s.snapshot.errors)


def _registered_by_a_worker_that_died(settings, demo_dir) -> None:
    """What a worker that registered `demo` leaves when it dies before recording the versions: the
    parse records, the bodies built ahead (orphans) and the registration row, no version."""
    with ModelManager(settings) as worker:
        registry = worker.serve()
        hook = registry.registration_hook("demo", str(demo_dir))[0]
        load_directory(str(demo_dir), cache=worker.cache, max_bytes=settings.max_artifact_bytes, prepare=hook)
        worker.store.add_model("demo", str(demo_dir))


def test_a_start_after_a_registering_worker_died_checks_its_unrecorded_groups_again(settings, demo_dir):
    """The registering worker wrote the parse records and the registration, then died before recording
    the versions (the bodies it built ahead are orphans). A start does not restore those groups from
    their records (their converted JSON is nowhere but in the model files): it checks them again."""
    _registered_by_a_worker_that_died(settings, demo_dir)
    with ModelManager(settings) as fresh:
        registry = fresh.serve()
        assert registry.sync_registrations()
        groups = registry.get("demo").groups
        assert any(s.snapshot.model_source == "pkl" for s in groups.values())
        assert all(s.payload is not None and s.outcome == "loaded" for s in groups.values() if not s.snapshot.errors)


def test_the_primary_adopts_groups_a_registering_worker_left_unrecorded(settings, demo_dir, monkeypatch):
    """A worker that registered a model and died before recording its versions: records and the
    registration are written, no version. The primary worker follows, then loads the groups itself."""
    monkeypatch.setattr(registry_module, "ADOPT_SECONDS", 0.0)
    _registered_by_a_worker_that_died(settings, demo_dir)
    with ModelManager(settings) as primary:
        registry = primary.serve()
        registry.follows_registrations = registry.adopts_unrecorded = True
        assert registry.sync_registrations()
        assert not any(_served(registry, "demo").values())  # waiting for the registering worker
        assert registry.follow_live()  # past ADOPT_SECONDS: checked and recorded here
        assert all(s.payload is not None for s in registry.get("demo").groups.values() if not s.snapshot.errors)
        assert any(_served(registry, "demo").values())


def test_a_pin_made_while_a_re_read_runs_is_never_undone_by_it(settings, demo_dir, monkeypatch):
    """A pin does not wait for a re-read of other groups. The re-read installs the groups it did not
    read as they are when it installs, not as they were when it started: nothing announces the
    version the pin replaced, and the pinned one is served throughout."""
    import threading

    with ModelManager(settings) as manager:
        registry = manager.serve()
        keys = sorted(k for k, s in manager.register("demo", str(demo_dir)).model.groups.items() if s.payload is not None)
        pinned, reread = keys[0], keys[1]
        symbol = registry.get("demo").groups[pinned].snapshot.symbol
        _set_tau(demo_dir, pinned, "0.5")
        registry.refresh("demo")
        assert registry.get("demo").groups[pinned].payload.version == 2

        reached, go = threading.Event(), threading.Event()
        record = manager.versions.record

        def paused(*args, **kwargs):  # the real recording, once the test has pinned
            reached.set()
            assert go.wait(30)
            return record(*args, **kwargs)

        monkeypatch.setattr(manager.versions, "record", paused)
        _set_tau(demo_dir, reread, "0.5")
        thread = threading.Thread(target=registry.refresh_groups, args=("demo", {reread}))
        thread.start()
        try:
            assert reached.wait(30)  # the re-read has parsed its group and is recording it
            last = registry.events.since("demo", None)[-1].id
            manager.pin("demo", symbol, 1, reason="bad retrain")
            assert registry.get("demo").groups[pinned].payload.version == 1
        finally:
            go.set()
            thread.join(30)
        assert registry.get("demo").groups[pinned].payload.version == 1
        assert registry.get("demo").groups[reread].payload.version == 2
        told = [(e.data["group_key"], e.data["version"]) for e in registry.events.since("demo", last)
                if e.kind == "version" and e.data["live"]]
        assert told == [(pinned, 1), (reread, 2)]


def test_a_follower_tells_of_each_version_once_also_after_a_rollback(settings, demo_dir):
    """A worker that follows another's re-reads tells its event streams of every version once: after a
    rollback, a version recorded but not served (the rollback pins) is new, the versions it already
    told of as live are not."""
    with ModelManager(settings) as worker, ModelManager(settings) as other:
        follower = other.serve()
        follower.load_registered()
        follower.follows_registrations = True
        registry = worker.serve()
        key = sorted(k for k, s in worker.register("demo", str(demo_dir)).model.groups.items() if s.payload is not None)[0]
        symbol = registry.get("demo").groups[key].snapshot.symbol
        assert follower.sync_registrations()

        def retrain(tau: str) -> None:
            _set_tau(demo_dir, key, tau)
            registry.refresh_groups("demo", {key})
            follower.follow_groups("demo", {key})

        retrain("0.5")
        retrain("0.6")
        assert follower.get("demo").groups[key].payload.version == 3
        worker.rollback("demo", symbol, reason="bad retrain")
        follower.follow_live(files=True, look=True)
        assert follower.get("demo").groups[key].payload.version == 2
        last = follower.events.since("demo", None)[-1].id
        retrain("0.7")
        told = [(e.data["version"], e.data["live"]) for e in follower.events.since("demo", last) if e.kind == "version"]
        assert told == [(4, False)]
        assert follower.get("demo").groups[key].payload.version == 2


def test_a_read_whose_files_were_replaced_since_records_nothing(settings, demo_dir):
    """Two re-reads of one group can overlap (a refresh on each worker): the one that read the older
    files may come to record after the other recorded the newer ones. It records nothing: the files
    it read are no longer there, and a later read serves what is."""
    with ModelManager(settings) as manager:
        registry = manager.serve()
        key = sorted(k for k, s in manager.register("demo", str(demo_dir)).model.groups.items() if s.payload is not None)[0]
        _set_tau(demo_dir, key, "0.5")
        read = load_directory(str(demo_dir), cache=manager.cache, max_bytes=settings.max_artifact_bytes, only={key})
        group = read.groups[key]
        assert not group.errors
        before = manager.store.query("SELECT COUNT(*) FROM versions WHERE model = 'demo'")
        _set_tau(demo_dir, key, "0.6")  # the next training lands before this read is recorded
        payload, why = registry._build_payload("demo", group, str(read.path), parsed=True)
        assert payload is None and "changed again since they were read" in why
        assert manager.store.query("SELECT COUNT(*) FROM versions WHERE model = 'demo'") == before
        registry.refresh_groups("demo", {key})  # the next read serves what is there
        assert registry.get("demo").groups[key].payload.version == 2
        assert registry.get("demo").groups[key].snapshot.ic == load_directory(
            str(demo_dir), max_bytes=settings.max_artifact_bytes, only={key}).groups[key].ic


def test_a_version_a_pin_replaced_before_it_was_served_is_still_told_of(settings, demo_dir, monkeypatch):
    """A re-read records a group's new version as live; a pin lands before the re-read installs it.
    The version is never served, but it is new: the event stream tells of it (not live), once."""
    import threading

    with ModelManager(settings) as manager:
        registry = manager.serve()
        key = sorted(k for k, s in manager.register("demo", str(demo_dir)).model.groups.items() if s.payload is not None)[0]
        symbol = registry.get("demo").groups[key].snapshot.symbol
        recorded, go = threading.Event(), threading.Event()
        record = manager.versions.record

        def then_paused(*args, **kwargs):  # the real recording, then a pause for the test to pin
            done = record(*args, **kwargs)
            recorded.set()
            assert go.wait(30)
            return done

        monkeypatch.setattr(manager.versions, "record", then_paused)
        _set_tau(demo_dir, key, "0.5")
        last = registry.events.since("demo", None)[-1].id
        thread = threading.Thread(target=registry.refresh_groups, args=("demo", {key}))
        thread.start()
        try:
            assert recorded.wait(30)  # version 2 is recorded, live, not yet served
            manager.pin("demo", symbol, 1, reason="not that one")
        finally:
            go.set()
            thread.join(30)
        assert registry.get("demo").groups[key].payload.version == 1
        told = [(e.data["version"], e.data["live"]) for e in registry.events.since("demo", last) if e.kind == "version"]
        assert told.count((2, False)) == 1 and (2, True) not in told
