"""Many files checked in one child process (model_manager/checkbatch.py): each answer is the file's
own, a crash or a hang names the file that did it and costs one time limit, and the files after it
are still checked."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
import time

import pytest

from model_manager.artifacts import load_directory
from model_manager.checkbatch import CheckItem, check_files
from model_manager.conversion import ModelInfo
from model_manager.errors import ArtifactError
from tests.support import write_group
from tests.test_fuzz_parsers import _slow_hash_pickle


def crashing_pickle(models) -> bytes:
    """A Booster pickle whose raw model bytes declare a key 134 MB long: XGBoost's loader reads past
    the buffer and the process dies (SIGSEGV)."""
    raw = pickle.dumps(models["booster"])
    field = b"L\x00\x00\x00\x00\x00\x00\x00\x07learner"
    assert field in raw
    return raw.replace(field, b"L\x00\x00\x00\x00\x08\x00\x00\x07learner", 1)


@pytest.fixture(scope="module")
def crashing(models, tmp_path_factory) -> bytes:
    bad = crashing_pickle(models)
    probe = tmp_path_factory.mktemp("probe") / "probe.pkl"
    probe.write_bytes(bad)
    died = subprocess.run([sys.executable, "-c", f"import pickle; pickle.loads(open({str(probe)!r}, 'rb').read())"],
                          capture_output=True, timeout=60)
    if died.returncode >= 0:
        pytest.skip(f"this XGBoost no longer crashes on the corrupt model (exit {died.returncode})")
    return bad


def info_bytes(symbol: str) -> bytes:
    return pickle.dumps({"symbol": symbol, "return_name": "mid_chg_1m", "dim": 5})


def test_a_batch_answers_each_file_and_names_the_one_that_crashed(models, crashing):
    good = pickle.dumps(models["regressor"])
    items = [CheckItem("info", "A_info.pkl", info_bytes("A")), CheckItem("model", "A_model.pkl", good, "pkl"),
             CheckItem("model", "B_model.pkl", crashing, "pkl"), CheckItem("info", "C_info.pkl", info_bytes("C")),
             CheckItem("model", "C_model.pkl", pickle.dumps(models["booster"]), "pkl")]
    answers = dict(check_files(items))
    assert sorted(answers) == [0, 1, 2, 3, 4]
    assert answers[0]["symbol"] == "A" and answers[3]["symbol"] == "C"
    for i in (1, 4):
        info, model_json, _ = answers[i]
        assert isinstance(info, ModelInfo) and info.num_features == 5 and model_json.startswith(b"{")
        assert info.summary["num_trees"] == 5 and info.summary["params"]["max_tree_depth"] <= 2
    assert isinstance(answers[2], ArtifactError) and answers[2].code == "corrupt"
    assert "B_model.pkl crashed the XGBoost loader" in str(answers[2])


@pytest.mark.timeout(120)
def test_a_hang_in_a_batch_costs_one_time_limit_and_names_its_file(models):
    limit = 6
    items = [CheckItem("info", "A_info.pkl", info_bytes("A")),
             CheckItem("info", "B_info.pkl", _slow_hash_pickle(60), time_limit=limit),
             CheckItem("model", "B_model.pkl", pickle.dumps(models["regressor"]), "pkl"),
             CheckItem("info", "C_info.pkl", info_bytes("C"))]
    started = time.monotonic()
    answers = dict(check_files(items))
    elapsed = time.monotonic() - started
    assert answers[0]["symbol"] == "A" and answers[3]["symbol"] == "C"
    assert isinstance(answers[1], ArtifactError) and answers[1].code == "too_slow", answers[1]
    assert "B_info.pkl" in str(answers[1]) and f"within {limit}s" in str(answers[1])
    assert isinstance(answers[2][0], ModelInfo)
    assert limit <= elapsed < 2 * limit, "the hung file was waited for once, not checked again"


def test_a_directory_loaded_in_one_batch_keeps_each_groups_own_issues(tmp_path, models, crashing):
    directory = tmp_path / "models"
    for symbol in ("AAAUSDT", "BBBUSDT", "CCCUSDT"):
        info = {"symbol": symbol, "return_name": "mid_chg_1m", "dim": 5}
        write_group(directory, f"{symbol}_mid_chg_1m", model=models["regressor"], info=info)
    (directory / "BBBUSDT_mid_chg_1m_model.pkl").write_bytes(crashing)
    snap = load_directory(directory)
    assert [g.status for g in snap.groups.values()] == ["ok", "error", "ok"]
    bad = snap.groups["BBBUSDT_mid_chg_1m"]
    assert [(i.code, i.file) for i in bad.errors] == [("corrupt", "BBBUSDT_mid_chg_1m_model.pkl")]
    assert bad.info["symbol"] == "BBBUSDT", "its info.pkl was checked and kept"
    assert snap.groups["CCCUSDT_mid_chg_1m"].model_summary["num_trees"] == 5


def test_a_helper_several_checks_discard_at_once_is_closed_once(models):
    """A directory's batches run in parallel; when the helper fails them all, each discards it. Its
    descriptors are closed once (a second close of the pidfd fails, or closes whatever got its
    number since), the helper ends, and the next check gets a new one."""
    from model_manager.isolation import _CheckServer, check_model

    for _ in range(40):
        server = _CheckServer.get()
        assert server is not None
        barrier, errors = threading.Barrier(4), []

        def discard(server=server, barrier=barrier, errors=errors) -> None:
            barrier.wait()
            try:
                server.discard()
            except OSError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=discard) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        assert server.proc.poll() is not None and server.pidfd is None
    info, _json, _ = check_model(bytes(models["booster"].save_raw(raw_format="json")), "json", "after.json")
    assert info.num_features == 5


def test_batches_shrink_towards_the_end_so_the_last_ones_finish_together(tmp_path):
    """Batches of consecutive groups, at most BATCH_GROUPS and BATCH_BYTES each, and at most a
    (2 × workers)th of what is left: the last batches are small, so no core ends up alone with a
    large one."""
    from model_manager.artifacts.load import BATCH_BYTES, BATCH_GROUPS, _batches

    keys = [f"S{i:04d}USDT_mid_chg_1m" for i in range(200)]
    scanned = {key: {"model.pkl": f"{key}_model.pkl"} for key in keys}
    for key in keys:
        with open(tmp_path / f"{key}_model.pkl", "wb") as fh:
            fh.truncate(BATCH_BYTES // 24)  # 1.3 MB: 24 fill a batch's bytes
    parts = _batches(tmp_path, keys, scanned, 2)
    assert [k for part in parts for k in part] == keys
    sizes = [len(part) for part in parts]
    assert max(sizes) == 24 and sizes == sorted(sizes, reverse=True) and sizes[-4:] == [1, 1, 1, 1]
    assert len(parts) < 30  # not a fork per group either
    many = [f"S{i:04d}USDT_mid_chg_1m" for i in range(6 * BATCH_GROUPS + 8)]
    small = {key: {"model.pkl": "absent"} for key in many}  # no bytes: the group count decides
    assert [len(p) for p in _batches(tmp_path, many, small, 2)][:3] == [BATCH_GROUPS] * 3
    assert [len(p) for p in _batches(tmp_path, many, small, 1)] == [BATCH_GROUPS] * 6 + [8]


def test_the_check_process_runs_with_jemalloc_when_the_system_has_it():
    """XGBoost loads a model's JSON through many small allocations: with jemalloc the check process
    takes 12-25 % less CPU. Used when libjemalloc2 is installed (./setup.sh installs it where apt-get
    can run); the checks answer the same either way."""
    from pathlib import Path

    from model_manager.isolation import JEMALLOC_CONF, _CheckServer, check_allocator, check_info

    allocator = check_allocator()
    if allocator is None:
        pytest.skip("libjemalloc2 is not installed here")
    assert check_info(pickle.dumps({"dim": 3}), "x_info.pkl") == {"dim": 3}
    server = _CheckServer.get()
    assert server is not None
    mapped = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert allocator in mapped and "libjemalloc" in mapped
    # its children live one batch: freed pages are kept for the next model, not handed back
    environ = Path(f"/proc/{server.proc.pid}/environ").read_bytes().split(b"\0")
    expected = os.environ.get("MALLOC_CONF", JEMALLOC_CONF)
    assert f"MALLOC_CONF={expected}".encode() in environ
