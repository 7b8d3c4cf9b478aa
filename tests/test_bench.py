"""The benchmark suite (bench/) itself.

`test_quick_bench_runs` runs `python -m bench --quick` for real (wrk, nginx, real servers, real
XGBoost models) so the bench cannot rot; its targets are only checked in the full run. What the
bench measures is tested where it lives: the payload fast path in test_models_api.py, parse records
in test_registry.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import REPO


def _bench(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_quick_bench_runs(tmp_path):
    from bench.tools import BenchError, ensure_tools

    try:
        ensure_tools()
    except BenchError as exc:
        pytest.skip(str(exc))
    out = tmp_path / "results.json"
    done = _bench("--quick", "--run-dir", str(tmp_path / "run"), "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads(out.read_text())
    f = result["figures"]
    assert result["mode"] == "quick" and result["groups"] == 20
    # every figure was measured, in the same run
    # the default configuration (as ./start.sh runs it: one worker per core) and nginx (as many workers)
    # for every mode; --log-level warning, one worker, and the previous release beside them for gzip and 304
    assert f["workers"] == min(len(os.sched_getaffinity(0)), 4)
    for mode in ("gzip", "identity", "not_modified"):
        whos = ("model_manager", "nginx") if mode == "identity" else \
            ("model_manager", "model_manager_warning", "model_manager_one", "previous_release", "nginx")
        assert set(f["throughput"][mode]) == set(whos), mode
        for who in whos:
            r = f["throughput"][mode][who]
            assert r["req_per_s"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"], (mode, who, r)
            assert not any(r["errors"].values()), (mode, who, r["errors"])
    assert f["irreducible_s"] > 0 and f["cold_start_s"] > 0 and f["warm_restart_s"] > 0
    assert 0 < f["payload_gzip_bytes"] < f["payload_raw_bytes"]
    assert f["rss_after_load_bytes"] > 0 and f["rss_after_cold_bytes"] > 0
    (refresh,) = f["refresh"]
    assert refresh["groups"] == 10 and len(refresh["samples_s"]) == 3
    # a refresh cannot be seen before the debounce has passed: the watcher really waited for quiet files
    assert min(refresh["samples_s"]) >= result["debounce_s"]
    # every parked long poll got the retrained payload, and waiting cost the server some CPU time, not none
    lp = f["long_poll"]
    assert lp["polls"] == 200 and 0 < lp["all_received_after_refresh_sent_s"] and lp["idle_cpu_seconds"] >= 0
    desk = f["desk"]
    assert desk["groups"] == 50 and desk["register_s"] > 0 and desk["payload_gzip_bytes"] > 0
    assert desk["symbols_ms"] > 0 and min(desk["refresh_n_s"], desk["refresh_10_s"]) >= result["debounce_s"]

    # the printed table carries every target with its verdict; quick mode does not enforce them
    names = {t["name"] for t in result["targets"]}
    assert {"gzip_rps_vs_nginx", "identity_rps_vs_nginx", "not_modified_rps_vs_nginx", "gzip_p99_vs_nginx",
            "access_log_cost", "gzip_vs_previous", "not_modified_vs_previous", "cold_vs_irreducible", "warm_vs_cold",
            "refresh_10_s", "rss_bytes", "long_poll_idle_cpu_s", "long_poll_all_received_s",
            "desk_register_vs_irreducible", "desk_rss_bytes", "desk_symbols_vs_10", "desk_refresh_vs_10"} <= names
    compare = {">=": float.__ge__, "<=": float.__le__, "<": float.__lt__}
    for target in result["targets"]:
        assert target["pass"] == compare[target["op"]](float(target["value"]), float(target["limit"])), target
        assert target["what"] in done.stdout
    assert "| gzip |" in done.stdout and "not checked in quick mode" in done.stdout


def test_bench_refuses_bad_usage():
    done = _bench("--groups", "1", timeout=60)
    assert done.returncode == 2
    assert "--groups must be at least 2" in done.stderr
    done = _bench("--refresh-groups", "ten", timeout=60)
    assert done.returncode == 2 and "comma-separated numbers" in done.stderr
