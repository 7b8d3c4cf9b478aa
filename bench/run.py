"""The performance benchmark of model-manager (see bench/README.md).

    .venv/bin/python -m bench            # full run: 200 groups, refresh at N=10 and N=1000, targets checked
    .venv/bin/python -m bench --quick    # 20 groups, short runs, N=10 only: keeps the bench from rotting

Everything runs in one go, side by side on the same machine: the single-threaded irreducible work,
a cold start (register N groups into an empty data dir), a warm restart, wrk against model-manager
and against nginx serving the very same bytes, refresh latency through the watcher, and RSS.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import desk, engines, report, tools, workload
from bench.tools import BenchError, Client, Nginx, Server, bootstrap, run_wrk, write_requests

MODEL_NAME = "bench"
PREVIOUS_RELEASE = "b8ee4e9"  # the release before fleet recording and metrics
DEFAULT_DEBOUNCE = 2.0   # the server's default MODEL_MANAGER_WATCH_DEBOUNCE
MB = 1024 * 1024


@dataclass
class Config:
    quick: bool
    groups: int
    seconds: float
    connections: int
    reps: int
    refresh_sizes: list[int]
    refresh_reps: int
    debounce: float
    cache: Path      # trained models and workload directories, kept between runs
    run_dir: Path    # data dirs, nginx files and logs of this run (emptied at the start)
    out: Path
    install: bool
    previous: bool   # measure the previous release beside this one
    polls: int       # long polls in the engines test
    desk_groups: int  # groups of the desk-scale test (0: skipped)


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N=20, 2 s wrk runs, refresh at N=10 only; targets not checked")
    p.add_argument("--groups", type=int, default=None, help="groups in the workload (default 200; 20 with --quick)")
    p.add_argument("--seconds", type=float, default=None, help="length of each wrk run (default 10; 2 with --quick)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--refresh-groups", default=None,
                   help="comma-separated directory sizes for the refresh test (default 10,1000; 10 with --quick)")
    p.add_argument("--debounce", type=float, default=DEFAULT_DEBOUNCE, help="watch debounce of the refresh test (s)")
    p.add_argument("--cache", type=Path, default=tools.BENCH_DIR / "work",
                   help="where trained models and workload directories are kept between runs (default bench/work)")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="data dirs, nginx files and logs of this run; emptied first (default CACHE/run)")
    p.add_argument("--out", type=Path, default=None,
                   help="results file (default bench/results.json; bench/work/results-quick.json with --quick)")
    p.add_argument("--no-install", action="store_true", help="do not apt-get install wrk/nginx when missing")
    p.add_argument("--no-previous", action="store_true", help=f"skip the previous release ({PREVIOUS_RELEASE})")
    p.add_argument("--polls", type=int, default=None, help="long polls in the engines test (default 1000; 200 with --quick)")
    p.add_argument("--desk", type=int, default=None,
                   help="small groups of the desk-scale test (default 5000; 50 with --quick; 0 skips it)")
    a = p.parse_args(argv)
    groups = a.groups or (20 if a.quick else 200)
    if groups < 2:
        p.error("--groups must be at least 2")
    if a.refresh_groups:
        try:
            sizes = [int(s) for s in a.refresh_groups.split(",") if s.strip()]
        except ValueError:
            p.error("--refresh-groups takes comma-separated numbers, e.g. 10,1000")
        if any(s < 1 for s in sizes):
            p.error("--refresh-groups sizes must be at least 1")
    else:
        sizes = [10] if a.quick else [10, 1000]
    return Config(
        quick=a.quick, groups=groups, seconds=a.seconds or (2.0 if a.quick else 10.0), connections=a.connections,
        reps=1 if a.quick else 3, refresh_sizes=sizes, refresh_reps=3 if a.quick else 5, debounce=a.debounce,
        cache=a.cache.resolve(), run_dir=(a.run_dir or a.cache / "run").resolve(), install=not a.no_install,
        previous=not a.no_previous, polls=a.polls or (200 if a.quick else 1000),
        desk_groups=a.desk if a.desk is not None else (50 if a.quick else 5000),
        out=(a.out or (a.cache / "results-quick.json" if a.quick else tools.BENCH_DIR / "results.json")).resolve(),
    )


def log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


# -- sections -------------------------------------------------------------------------------------
def measure_irreducible(cfg: Config, directory: Path) -> dict:
    from model_manager.versions import GZIP_LEVEL

    log(f"irreducible work: unpickle + save_raw('json') + gzip -{GZIP_LEVEL} of {cfg.groups} models, one thread")
    result = desk.irreducible(directory, cfg.groups)  # its own process, OMP_NUM_THREADS=1
    log(f"  {result['seconds']:.2f} s ({result['cpu_seconds']:.2f} CPU-seconds; with the server's compressor "
        f"{result['seconds_with_server_gzip']:.2f} s)")
    result["model_check_s"] = workload.model_check_seconds(directory, min(10, cfg.groups))
    if result["model_check_s"] is not None:
        log(f"  the server's model check: {result['model_check_s'] * 1000:.0f} ms per model (one at a time)")
    return result


def measure_cold(cfg: Config, directory: Path, data_dir: Path, logs: Path) -> dict:
    log(f"cold start: POST /api/models with {cfg.groups} groups into an empty data dir")
    with Server(data_dir, logs / "serve-cold.log") as server:
        server.start()
        client = Client(server.port, bootstrap(server))
        cpu_before, started = server.cpu(), time.perf_counter()
        model = client.json("POST", "/api/models", {"name": MODEL_NAME, "path": str(directory)}, expect=(201,))
        seconds, cpu = time.perf_counter() - started, server.cpu() - cpu_before
        rss, hwm = server.rss()
        if model["group_count"] != cfg.groups or model["status"] != "ok":
            raise BenchError(f"registration loaded {model['group_count']} groups with status {model['status']}")
        client.close()
    log(f"  {seconds:.2f} s ({cpu:.2f} CPU-seconds), RSS {rss / MB:.0f} MB (peak {hwm / MB:.0f} MB)")
    return {"seconds": seconds, "cpu_seconds": cpu, "rss_bytes": rss, "rss_peak_bytes": hwm}


def export_payloads(client: Client, symbols: list[str], root: Path) -> dict:
    """Fetch every payload (gzip and identity) and write the same bytes where nginx serves them."""
    target = root / "p"
    target.mkdir(parents=True, exist_ok=True)
    etags, gz_total, raw_total = {}, 0, 0
    for symbol in symbols:
        path = f"/api/models/{MODEL_NAME}/model/{symbol}"
        status, headers, gz = client.request("GET", path, headers={"Accept-Encoding": "gzip"})
        if status != 200 or headers.get("content-encoding") != "gzip":
            raise BenchError(f"GET {path} with gzip answered {status} {headers.get('content-encoding')}")
        status, headers2, raw = client.request("GET", path)
        if status != 200 or "content-encoding" in headers2:
            raise BenchError(f"GET {path} without gzip answered {status} {headers2.get('content-encoding')}")
        if gzip.decompress(gz) != raw or headers["etag"] != headers2["etag"]:
            raise BenchError(f"{path}: gzip and identity bodies differ")
        (target / f"{symbol}.json").write_bytes(raw)
        (target / f"{symbol}.json.gz").write_bytes(gz)
        etags[symbol] = headers["etag"]
        gz_total += len(gz)
        raw_total += len(raw)
    sample = json.loads(raw)
    if not sample["payload"]["model_json"].startswith("{") or len(sample["payload"]["dim_factors"]) != workload.FEATURES:
        raise BenchError("the payload does not hold the model JSON and its 150 factors")
    return {"etags": etags, "gzip_bytes": gz_total, "raw_bytes": raw_total}


def nginx_etags(port: int, symbols: list[str]) -> dict[str, str]:
    client = Client(port)
    out = {}
    for symbol in symbols:
        status, headers, body = client.request("GET", f"/p/{symbol}.json", headers={"Accept-Encoding": "gzip"})
        if status != 200 or headers.get("content-encoding") != "gzip" or "etag" not in headers:
            raise BenchError(f"nginx did not serve {symbol}.json.gz with gzip_static (status {status})")
        out[symbol] = headers["etag"]
        status, _, _ = client.request("GET", f"/p/{symbol}.json", headers={"Accept-Encoding": "gzip",
                                                                           "If-None-Match": headers["etag"]})
        if status != 304:
            raise BenchError(f"nginx answered {status}, not 304, to If-None-Match")
    client.close()
    return out


@dataclass
class Target:
    """A server under wrk: its URL, the path of each symbol's payload, and each symbol's ETag."""

    url: str
    path: str          # with {symbol}
    etags: dict[str, str]
    token: str = ""


MODES = {"gzip": ("model_manager", "model_manager_warning", "model_manager_one", "previous_release", "nginx"),
         "identity": ("model_manager", "nginx"),
         "not_modified": ("model_manager", "model_manager_warning", "model_manager_one", "previous_release", "nginx")}


def measure_throughput(cfg: Config, wrk: str, targets: dict[str, Target], symbols: list[str], scratch: Path) -> dict:
    """wrk against every target for each mode, alternating the order between repetitions."""
    results: dict = {}
    for mode, wanted in MODES.items():
        whos = [w for w in wanted if w in targets]
        files = {}
        for who in whos:
            t = targets[who]
            headers = {"Authorization": f"Bearer {t.token}"} if t.token else {}
            if mode != "identity":
                headers["Accept-Encoding"] = "gzip"
            requests = [(t.path.format(symbol=s), t.etags[s] if mode == "not_modified" else "") for s in symbols]
            files[who] = write_requests(scratch / f"wrk-{mode}-{who}.txt", headers, requests)
        runs: dict[str, list] = {who: [] for who in whos}
        for rep in range(cfg.reps):
            order = whos[rep % len(whos):] + whos[:rep % len(whos)]
            for who in order:
                if not cfg.quick and rep == 0:  # a short warm-up run, not counted
                    run_wrk(wrk, targets[who].url, files[who], seconds=1, connections=cfg.connections)
                result = run_wrk(wrk, targets[who].url, files[who], seconds=cfg.seconds, connections=cfg.connections)
                bad = {k: v for k, v in result.errors.items() if v}
                if bad:
                    raise BenchError(f"wrk {mode} against {who}: errors {bad}")
                runs[who].append(result)
                log(f"  {mode:12s} {who:21s} {result.rps:9.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                    f"p99 {result.p99_ms:7.2f} ms  {result.mbytes_per_s:7.0f} MB/s")
        results[mode] = {who: best_of(rs) for who, rs in runs.items()}
    return results


def fetch_etags(port: int, token: str, symbols: list[str]) -> dict[str, str]:
    client = Client(port, token)
    out = {}
    for symbol in symbols:
        status, headers, _ = client.request("GET", f"/api/models/{MODEL_NAME}/model/{symbol}",
                                            headers={"Accept-Encoding": "gzip"})
        if status != 200:
            raise BenchError(f"GET {symbol} answered {status}")
        out[symbol] = headers["etag"]
    client.close()
    return out


def start_previous(cfg: Config, directory: Path, logs: Path) -> Server:
    """The previous release's server at --log-level warning, registering the same directory."""
    release = tools.previous_release(PREVIOUS_RELEASE, cfg.cache / f"release-{PREVIOUS_RELEASE}")
    log(f"previous release {PREVIOUS_RELEASE}: registering the same {cfg.groups} groups")
    server = Server(cfg.run_dir / "data-previous", logs / "serve-previous.log", log_level="warning", release=release)
    server.start()
    client = Client(server.port, bootstrap(server))
    client.json("POST", "/api/models", {"name": MODEL_NAME, "path": str(directory)}, expect=(201,))
    client.close()
    return server


def best_of(runs: list) -> dict:
    """Each figure's best over the repetitions (the run least disturbed by anything else on the
    machine), for both servers alike: highest req/s, lowest latencies."""
    out = max(runs, key=lambda r: r.rps).to_dict()
    for key in ("p50_ms", "p90_ms", "p99_ms"):
        out[key] = min(r.to_dict()[key] for r in runs)
    out["runs"] = [r.to_dict() for r in runs]
    return out


def measure_refresh(cfg: Config, n: int, source: Path, run_dir: Path, logs: Path) -> dict:
    """Atomic replace of one model file → the new ETag seen by a client polling every 10 ms."""
    directory = workload.subset_directory(source, run_dir / f"refresh-{n}", n)
    data_dir = run_dir / f"data-refresh-{n}"
    base = workload.base_model_paths(cfg.cache)[0].read_bytes()
    variants = [workload.variant_bytes(base, f"refresh-{n}-{rep}") for rep in range(cfg.refresh_reps)]
    log(f"refresh latency at N={n} (debounce {cfg.debounce:g} s, {cfg.refresh_reps} replacements)")
    with Server(data_dir, logs / f"serve-refresh-{n}.log", watch=True, debounce=cfg.debounce) as server:
        server.start()
        client = Client(server.port, bootstrap(server))
        started = time.perf_counter()
        client.json("POST", "/api/models", {"name": MODEL_NAME, "path": str(directory)}, expect=(201,))
        load_seconds = time.perf_counter() - started
        rss = server.rss()[0]
        time.sleep(1.0)  # let the watcher pick up the new directory
        latencies = []
        for rep, blob in enumerate(variants):
            i = (rep * 7 + 3) % n
            path = f"/api/models/{MODEL_NAME}/model/{workload.symbol_of(i)}"
            status, headers, _ = client.request("GET", path, headers={"Accept-Encoding": "gzip"})
            old = headers.get("etag")
            if status != 200 or not old:
                raise BenchError(f"GET {path} answered {status}")
            replaced = time.perf_counter()
            workload.replace_model_atomically(directory, i, blob)
            deadline = replaced + cfg.debounce + 30
            while True:
                status, headers, _ = client.request("GET", path, headers={"Accept-Encoding": "gzip", "If-None-Match": old})
                if status == 200 and headers.get("etag") != old:
                    latencies.append(time.perf_counter() - replaced)
                    break
                if status not in (200, 304):
                    raise BenchError(f"GET {path} answered {status} while waiting for the refresh")
                if time.perf_counter() > deadline:
                    raise BenchError(f"no new ETag {cfg.debounce + 30:.0f} s after replacing {path}'s model")
                time.sleep(0.01)
            log(f"  replacement {rep + 1}: new ETag after {latencies[-1]:.3f} s")
            time.sleep(0.3)
        client.close()
    return {"groups": n, "median_s": statistics.median(latencies), "max_s": max(latencies),
            "samples_s": [round(x, 4) for x in latencies], "load_seconds": load_seconds, "rss_bytes": rss}


def machine_meta() -> dict:
    from importlib.metadata import version as dist_version

    def version(cmd: list[str]) -> str:

        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (done.stdout + done.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "?"

    return {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpus": os.cpu_count(),
            "python": platform.python_version(), "xgboost": __import__("xgboost").__version__,
            "litestar": dist_version("litestar"), "uvicorn": dist_version("uvicorn"), "loadavg_start": " ".join(f"{x:.1f}" for x in os.getloadavg()),
            "wrk": version([tools.find_tool("wrk") or "wrk", "-v"]),
            "nginx": version([tools.find_tool("nginx") or "nginx", "-v"])}


# -- main -----------------------------------------------------------------------------------------
def run(cfg: Config) -> tuple[dict, list[dict], str]:
    started = time.perf_counter()
    bins = tools.ensure_tools(cfg.install)
    tools.compile_package()
    meta = machine_meta()
    run_dir = cfg.run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    logs = run_dir / "logs"
    logs.mkdir(parents=True)
    main_dir = workload.build_directory(cfg.cache, cfg.groups)
    symbols = [workload.symbol_of(i) for i in range(cfg.groups)]

    f: dict = {}
    irr = measure_irreducible(cfg, main_dir)
    f.update(irreducible_s=irr["seconds"], irreducible_cpu_s=irr["cpu_seconds"], model_check_s=irr["model_check_s"],
             gzip_level=irr["gzip_level"], model_json_bytes=irr["model_json_bytes"],
             model_json_gzip_bytes=irr["model_json_gzip_bytes"], irreducible_server_gzip_s=irr["seconds_with_server_gzip"],
             irreducible_gzip_cpu_s=irr["gzip_cpu_seconds"], irreducible_server_gzip_cpu_s=irr["server_gzip_cpu_seconds"])
    data_dir = run_dir / "data"
    cold = measure_cold(cfg, main_dir, data_dir, logs)
    f.update(cold_start_s=cold["seconds"], cold_start_cpu_s=cold["cpu_seconds"], rss_after_cold_bytes=cold["rss_bytes"],
             rss_peak_cold_bytes=cold["rss_peak_bytes"])

    log("warm restart: the same data dir, conversion cache present")
    servers = {"model_manager": Server(data_dir, logs / "serve-warm.log")}
    nginx = None
    try:
        server = servers["model_manager"]
        f["warm_restart_s"] = server.start()
        f["rss_after_load_bytes"] = server.rss()[0]
        f["workers"] = len(server.pids()) - 1 or 1
        log(f"  {f['warm_restart_s']:.2f} s, memory {f['rss_after_load_bytes'] / MB:.0f} MB, {f['workers']} worker processes")
        token = bootstrap(server)
        client = Client(server.port, token)
        exported = export_payloads(client, symbols, run_dir / "nginx-root")
        client.close()
        f.update(payload_gzip_bytes=exported["gzip_bytes"], payload_raw_bytes=exported["raw_bytes"])
        servers["model_manager_warning"] = Server(data_dir, logs / "serve-warning.log", log_level="warning")
        servers["model_manager_warning"].start()
        if cfg.previous:  # the previous release runs one process: compared with one worker of ours
            servers["model_manager_one"] = Server(data_dir, logs / "serve-one.log", log_level="warning",
                                                  extra=("--workers", "1"))
            servers["model_manager_one"].start()
            servers["previous_release"] = start_previous(cfg, main_dir, logs)
        (run_dir / "nginx").mkdir()
        nginx = Nginx(bins["nginx"], run_dir / "nginx-root", run_dir / "nginx", workers=f["workers"])
        nginx.start()
        mm_path = f"/api/models/{MODEL_NAME}/model/{{symbol}}"
        targets = {"model_manager": Target(server.url, mm_path, exported["etags"], token)}
        for who, other in servers.items():
            if who != "model_manager":
                other_token = bootstrap(other)
                targets[who] = Target(other.url, mm_path, fetch_etags(other.port, other_token, symbols), other_token)
        targets["nginx"] = Target(f"http://127.0.0.1:{nginx.port}", "/p/{symbol}.json", nginx_etags(nginx.port, symbols),
                                  token)  # nginx ignores the header; it makes the requests the same size
        log(f"throughput: wrk, {cfg.connections} connections, {cfg.seconds:g} s per run, {cfg.reps} runs each, alternating")
        f["throughput"] = measure_throughput(cfg, bins["wrk"], targets, symbols, run_dir)
        f["rss_after_wrk_bytes"] = server.rss()[0]
    finally:
        for s in servers.values():
            s.stop()
        if nginx is not None:
            nginx.stop()

    f["refresh"] = []
    for n in cfg.refresh_sizes:
        source = main_dir if n <= cfg.groups else workload.build_directory(cfg.cache, n, shared=True)
        f["refresh"].append(measure_refresh(cfg, n, source, run_dir, logs))
    f["long_poll"] = engines.measure_engines(cfg.cache, run_dir, logs, cfg.polls)
    if cfg.desk_groups:
        f["desk"] = desk.measure_desk(cfg.cache, run_dir, logs, cfg.desk_groups, refresh_reps=1 if cfg.quick else 3)

    meta["total_seconds"] = round(time.perf_counter() - started, 1)
    meta["loadavg_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    checks = report.targets(cfg, f)
    table = report.render(cfg, f, checks, meta)
    result = {"mode": "quick" if cfg.quick else "full", "groups": cfg.groups, "connections": cfg.connections,
              "seconds_per_wrk_run": cfg.seconds, "debounce_s": cfg.debounce, "meta": meta, "figures": f,
              "targets": checks, "table": table}
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(result, indent=2) + "\n")
    return result, checks, table


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        result, checks, table = run(cfg)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    print()
    print(table)
    print()
    print(f"results written to {cfg.out} ({result['meta']['total_seconds']:.0f} s in all)")
    missed = [c["name"] for c in checks if not c["pass"]]
    if missed and not cfg.quick:
        print(f"targets missed: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0
