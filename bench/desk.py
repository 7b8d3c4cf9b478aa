"""Desk scale: thousands of small groups (20 features, 20 trees, unique bytes each).

A desk with 500 symbols × several horizons × model families has thousands of groups, each model
small. There the per-group costs dominate (a check round trip, a version record, the symbol list),
not XGBoost. Measured on one real server in its default configuration:

- registering N groups (`POST /api/models`) against the single-threaded irreducible work of the
  same groups (unpickle + save_raw + gzip);
- the server's RSS after it, against 250 MB + 1.5 × the total gzip payload bytes;
- `GET /api/models/{name}/symbols` of the N-group model against the same request on a 10-group one;
- refresh latency of one group (watcher on, default debounce) in the N-group and the 10-group model.
"""
from __future__ import annotations

import json
import os
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import workload
from bench.tools import REPO, BenchError, Client, Server, bootstrap, built_before, mark_built

TREES, FEATURES = 20, 20
SPEC_VERSION = 1
MB = 1024 * 1024


def _log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def small_base_model(work: Path) -> Path:
    """One small XGBRegressor (20 trees, depth 6, 20 features), trained once and kept."""
    import xgboost as xgb

    path = work / "models" / f"small_{TREES}x{workload.DEPTH}x{FEATURES}.pkl"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2000, FEATURES)).astype(np.float32)
    y = x @ rng.normal(size=FEATURES) + rng.normal(scale=0.5, size=2000)
    model = xgb.XGBRegressor(n_estimators=TREES, max_depth=workload.DEPTH, n_jobs=1, random_state=7).fit(x, y)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
    os.replace(tmp, path)
    return path


def build_small_directory(work: Path, groups: int) -> Path:
    """`groups` small groups with unique model bytes under `work/workload/small-N` (reused when complete)."""
    base = small_base_model(work).read_bytes()
    directory = work / "workload" / f"small-{groups}"
    spec = json.dumps({"version": SPEC_VERSION, "groups": groups, "trees": TREES, "features": FEATURES})
    if built_before(directory, spec):
        return directory
    started = time.perf_counter()
    for i in range(groups):
        workload.write_group(directory, i, workload.variant_bytes(base, workload.group_key_of(i)),
                             features=FEATURES, trees=TREES)
    mark_built(directory, spec)
    _log(f"built small-{groups} in {time.perf_counter() - started:.1f} s")
    return directory


def small_variant(work: Path, tag: str) -> bytes:
    return workload.variant_bytes(small_base_model(work).read_bytes(), tag)


def irreducible(directory: Path, groups: int) -> dict:
    """The single-threaded irreducible work of `groups` groups, in a process of its own (one thread)."""
    from model_manager.versions import GZIP_LEVEL

    code = ("import json, sys; from pathlib import Path; from bench.workload import irreducible_work; "
            "print(json.dumps(irreducible_work(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))")
    done = subprocess.run([sys.executable, "-c", code, str(directory), str(groups), str(GZIP_LEVEL)],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise BenchError(f"the irreducible-work measurement failed: {done.stderr.strip()[-300:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["gzip_level"] = GZIP_LEVEL
    return result


def _median_ms(client: Client, path: str, reps: int = 15) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        status, _, _ = client.request("GET", path)
        times.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise BenchError(f"GET {path} answered {status}")
    return statistics.median(times)


def refresh_latency(client: Client, work: Path, model: str, directory: Path, index: int, tag: str,
                    timeout: float = 60) -> float:
    """Atomic replace of one group's model → seconds until a client polling every 10 ms sees a new ETag."""
    path = f"/api/models/{model}/model/{workload.symbol_of(index)}"
    status, headers, _ = client.request("GET", path, headers={"Accept-Encoding": "gzip"})
    old = headers.get("etag")
    if status != 200 or not old:
        raise BenchError(f"GET {path} answered {status}")
    blob = small_variant(work, tag)
    replaced = time.perf_counter()
    workload.replace_model_atomically(directory, index, blob)
    while time.perf_counter() - replaced < timeout:
        status, headers, _ = client.request("GET", path, headers={"Accept-Encoding": "gzip", "If-None-Match": old})
        if status == 200 and headers.get("etag") != old:
            return time.perf_counter() - replaced
        if status not in (200, 304):
            raise BenchError(f"GET {path} answered {status} while waiting for the refresh")
        time.sleep(0.01)
    raise BenchError(f"no new ETag {timeout:.0f} s after replacing {path}'s model")


def measure_desk(work: Path, run_dir: Path, logs: Path, groups: int, refresh_reps: int = 3) -> dict:
    source = build_small_directory(work, groups)
    _log(f"desk scale: irreducible work of {groups} small groups, one thread")
    irr = irreducible(source, groups)
    _log(f"  {irr['seconds']:.2f} s ({irr['cpu_seconds']:.2f} CPU-seconds)")
    big = workload.subset_directory(source, run_dir / f"desk-{groups}", groups)
    small = workload.subset_directory(source, run_dir / "desk-10", 10)
    out: dict = {"groups": groups, "irreducible_s": irr["seconds"], "irreducible_cpu_s": irr["cpu_seconds"],
                 "irreducible_server_gzip_s": irr["seconds_with_server_gzip"]}
    with Server(run_dir / "data-desk", logs / "serve-desk.log") as server:
        server.start()
        client = Client(server.port, bootstrap(server))
        _log(f"  registering {groups} groups (POST /api/models)")
        cpu_before, started = server.cpu(), time.perf_counter()
        model = client.json("POST", "/api/models", {"name": "desk", "path": str(big)}, expect=(201,))
        out["register_s"], out["register_cpu_s"] = time.perf_counter() - started, server.cpu() - cpu_before
        if model["group_count"] != groups or model["status"] != "ok":
            raise BenchError(f"desk registration loaded {model['group_count']} groups with status {model['status']}")
        out["rss_bytes"] = server.rss()[0]
        _log(f"  {out['register_s']:.2f} s ({out['register_cpu_s']:.2f} CPU-s in the server), "
             f"RSS {out['rss_bytes'] / MB:.0f} MB")
        client.json("POST", "/api/models", {"name": "desk10", "path": str(small)}, expect=(201,))
        gz = 0
        for i in range(groups):
            status, _, body = client.request("GET", f"/api/models/desk/model/{workload.symbol_of(i)}",
                                             headers={"Accept-Encoding": "gzip"})
            if status != 200:
                raise BenchError(f"desk payload {i} answered {status}")
            gz += len(body)
        out["payload_gzip_bytes"] = gz
        out["symbols_ms"] = _median_ms(client, "/api/models/desk/symbols")
        out["symbols_10_ms"] = _median_ms(client, "/api/models/desk10/symbols")
        _log(f"  GET /symbols: {out['symbols_ms']:.1f} ms at N={groups}, {out['symbols_10_ms']:.1f} ms at N=10")
        time.sleep(1.0)  # the watcher has the new directories
        for name, directory, n in (("desk10", small, 10), ("desk", big, groups)):
            samples = [refresh_latency(client, work, name, directory, (rep * 7 + 3) % n, f"desk-{name}-{rep}")
                       for rep in range(refresh_reps)]
            out[f"refresh_{'10' if n == 10 else 'n'}_s"] = statistics.median(samples)
            _log(f"  refresh latency at N={n}: {', '.join(f'{x:.3f}' for x in samples)} s")
        client.close()
    return out
