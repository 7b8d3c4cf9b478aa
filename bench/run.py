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

from bench import tools, workload
from bench.tools import BenchError, Client, Nginx, Server, bootstrap, run_wrk, write_requests

MODEL_NAME = "bench"
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
        out=(a.out or (a.cache / "results-quick.json" if a.quick else tools.BENCH_DIR / "results.json")).resolve(),
    )


def log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


# -- sections -------------------------------------------------------------------------------------
def measure_irreducible(cfg: Config, directory: Path) -> dict:
    from model_manager.versions import GZIP_LEVEL

    log(f"irreducible work: unpickle + save_raw('json') + gzip -{GZIP_LEVEL} of {cfg.groups} models, one thread")
    # in a process of its own with OMP_NUM_THREADS=1: XGBoost would otherwise use OpenMP threads
    code = ("import json, sys; from pathlib import Path; from bench.workload import irreducible_work; "
            "print(json.dumps(irreducible_work(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))")
    done = subprocess.run([sys.executable, "-c", code, str(directory), str(cfg.groups), str(GZIP_LEVEL)],
                          capture_output=True, text=True, cwd=tools.REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise BenchError(f"the irreducible-work measurement failed: {done.stderr.strip()[-300:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["gzip_level"] = GZIP_LEVEL
    log(f"  {result['seconds']:.2f} s ({result['cpu_seconds']:.2f} CPU-seconds)")
    result["model_check_s"] = workload.model_check_seconds(directory, min(10, cfg.groups))
    if result["model_check_s"] is not None:
        log(f"  the server's model check: {result['model_check_s'] * 1000:.0f} ms per model (one at a time)")
    return result


def measure_cold(cfg: Config, directory: Path, data_dir: Path, logs: Path) -> dict:
    log(f"cold start: POST /api/models with {cfg.groups} groups into an empty data dir")
    with Server(data_dir, logs / "serve-cold.log") as server:
        server.start()
        client = Client(server.port, bootstrap(server.port))
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


def measure_throughput(cfg: Config, wrk: str, server: Server, token: str, nginx: Nginx, symbols: list[str],
                       ours_etags: dict[str, str], their_etags: dict[str, str], scratch: Path) -> dict:
    common = {"Authorization": f"Bearer {token}"}
    gz = {**common, "Accept-Encoding": "gzip"}
    ours = [f"/api/models/{MODEL_NAME}/model/{s}" for s in symbols]
    theirs = [f"/p/{s}.json" for s in symbols]
    plans = {
        "gzip": (gz, [(p, "") for p in ours], gz, [(p, "") for p in theirs]),
        "identity": (common, [(p, "") for p in ours], common, [(p, "") for p in theirs]),
        "not_modified": (gz, [(p, ours_etags[s]) for p, s in zip(ours, symbols)],
                         gz, [(p, their_etags[s]) for p, s in zip(theirs, symbols)]),
    }
    results: dict = {}
    for mode, (h_ours, r_ours, h_theirs, r_theirs) in plans.items():
        files = {"model_manager": write_requests(scratch / f"wrk-{mode}-ours.txt", h_ours, r_ours),
                 "nginx": write_requests(scratch / f"wrk-{mode}-nginx.txt", h_theirs, r_theirs)}
        urls = {"model_manager": server.url, "nginx": f"http://127.0.0.1:{nginx.port}"}
        runs: dict[str, list] = {"model_manager": [], "nginx": []}
        for rep in range(cfg.reps):
            order = ("model_manager", "nginx") if rep % 2 == 0 else ("nginx", "model_manager")
            for who in order:
                if not cfg.quick and rep == 0:  # a short warm-up run, not counted
                    run_wrk(wrk, urls[who], files[who], seconds=1, connections=cfg.connections)
                result = run_wrk(wrk, urls[who], files[who], seconds=cfg.seconds, connections=cfg.connections)
                bad = {k: v for k, v in result.errors.items() if v}
                if bad:
                    raise BenchError(f"wrk {mode} against {who}: errors {bad}")
                runs[who].append(result)
                log(f"  {mode:12s} {who:13s} {result.rps:9.0f} req/s  p50 {result.p50_ms:7.2f} ms  "
                    f"p99 {result.p99_ms:7.2f} ms  {result.mbytes_per_s:7.0f} MB/s")
        results[mode] = {who: best_of(rs) for who, rs in runs.items()}
    return results


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
        client = Client(server.port, bootstrap(server.port))
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


# -- report ---------------------------------------------------------------------------------------
def targets(cfg: Config, f: dict) -> list[dict]:
    t = []

    def add(name: str, value: float | None, op: str, limit: float, what: str) -> None:
        if value is None:
            return
        ok = value >= limit if op == ">=" else value <= limit
        t.append({"name": name, "what": what, "value": round(value, 4), "op": op, "limit": round(limit, 4), "pass": ok})

    tp = f["throughput"]
    ratio = lambda mode, key: tp[mode]["model_manager"][key] / tp[mode]["nginx"][key]  # noqa: E731
    add("gzip_rps_vs_nginx", ratio("gzip", "req_per_s"), ">=", 0.7, "gzip payload req/s ÷ nginx gzip_static")
    add("identity_rps_vs_nginx", ratio("identity", "req_per_s"), ">=", 0.5, "identity payload req/s ÷ nginx")
    add("not_modified_rps_vs_nginx", ratio("not_modified", "req_per_s"), ">=", 0.2, "304 req/s ÷ nginx 304")
    add("gzip_p99_vs_nginx", ratio("gzip", "p99_ms"), "<=", 2.0, "gzip p99 latency ÷ nginx's")
    add("cold_vs_irreducible", f["cold_start_s"] / f["irreducible_s"], "<=", 0.75,
        "cold start ÷ single-threaded irreducible work")
    add("warm_vs_cold", f["warm_restart_s"] / f["cold_start_s"], "<=", 0.1, "warm restart ÷ cold start")
    refresh = {r["groups"]: r for r in f["refresh"]}
    small = refresh.get(min(refresh)) if refresh else None
    large = refresh.get(max(refresh)) if len(refresh) > 1 else None
    if small and large:
        add(f"refresh_{large['groups']}_vs_{small['groups']}", large["median_s"] / small["median_s"], "<=", 1.2,
            f"refresh latency at N={large['groups']} ÷ at N={small['groups']}")
    for r in (small, large):
        if r:
            add(f"refresh_{r['groups']}_s", r["median_s"], "<=", cfg.debounce + 0.5,
                f"refresh latency at N={r['groups']} (s) ≤ debounce + 0.5 s")
    limit = 250 * MB + 1.5 * f["payload_gzip_bytes"]
    add("rss_bytes", max(f["rss_after_cold_bytes"], f["rss_after_load_bytes"]), "<=", limit,
        "server RSS after loading (the larger of cold start and warm restart) ≤ 250 MB + 1.5 × gzip bytes")
    return t


def fmt_ms(x: float) -> str:
    return f"{x:.2f}"


def render(cfg: Config, f: dict, checks: list[dict], meta: dict) -> str:
    tp = f["throughput"]
    lines = [f"### {'Quick' if cfg.quick else 'Full'} run, {meta['date']}: N={cfg.groups} groups, wrk {cfg.connections} "
             f"connections × {cfg.seconds:g} s, {meta['cpus']} cores, load average at start {meta['loadavg_start']}",
             "",
             "| payload | model-manager req/s | nginx req/s | ratio | model-manager p50 / p99 ms | nginx p50 / p99 ms | p99 ratio |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for mode, label in (("gzip", "gzip"), ("identity", "identity"), ("not_modified", "304 (If-None-Match)")):
        a, b = tp[mode]["model_manager"], tp[mode]["nginx"]
        lines.append(f"| {label} | {a['req_per_s']:,.0f} | {b['req_per_s']:,.0f} | {a['req_per_s'] / b['req_per_s']:.2f} | "
                     f"{fmt_ms(a['p50_ms'])} / {fmt_ms(a['p99_ms'])} | {fmt_ms(b['p50_ms'])} / {fmt_ms(b['p99_ms'])} | "
                     f"{a['p99_ms'] / b['p99_ms']:.2f} |")
    lines += ["", "| figure | value |", "|---|---:|",
              f"| irreducible work, one thread (unpickle + save_raw + gzip -{f['gzip_level']}, {cfg.groups} models) | "
              f"{f['irreducible_s']:.2f} s ({f['irreducible_cpu_s']:.2f} CPU-s) |",
              f"| cold start (POST /api/models, empty data dir) | {f['cold_start_s']:.2f} s "
              f"({f['cold_start_cpu_s']:.2f} CPU-s in the server process, model checks not included) |",
              f"| warm restart (process start → every payload ready, cache present) | {f['warm_restart_s']:.2f} s |",
              *([f"| per model: irreducible work / the server's model check in its child process (one at a time) | "
                 f"{f['irreducible_s'] / cfg.groups * 1000:.0f} ms / {f['model_check_s'] * 1000:.0f} ms |"]
                if f.get("model_check_s") else []),
              f"| payload bytes: gzip / raw JSON, all groups | {f['payload_gzip_bytes'] / MB:.1f} MB / {f['payload_raw_bytes'] / MB:.1f} MB |",
              f"| server RSS after cold start / after warm restart / after the wrk runs | "
              f"{f['rss_after_cold_bytes'] / MB:.0f} / {f['rss_after_load_bytes'] / MB:.0f} / {f['rss_after_wrk_bytes'] / MB:.0f} MB |"]
    for r in f["refresh"]:
        lines.append(f"| refresh latency at N={r['groups']} (median / max of {len(r['samples_s'])}, debounce {cfg.debounce:g} s) | "
                     f"{r['median_s']:.3f} / {r['max_s']:.3f} s |")
    lines += ["", "| target | value | limit | result |", "|---|---:|---:|---|"]
    for c in checks:
        if c["name"] == "rss_bytes":
            value, limit = f"{c['value'] / MB:.0f} MB", f"{c['limit'] / MB:.0f} MB"
        else:
            value, limit = f"{c['value']:.3g}", f"{c['limit']:.3g}"
        verdict = ("PASS" if c["pass"] else "MISS") + (" (not checked in quick mode)" if cfg.quick else "")
        lines.append(f"| {c['what']} | {value} | {c['op']} {limit} | {verdict} |")
    return "\n".join(lines)


def machine_meta() -> dict:
    from importlib.metadata import version as dist_version

    def version(cmd: list[str]) -> str:
        import subprocess

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
             model_json_gzip_bytes=irr["model_json_gzip_bytes"])
    data_dir = run_dir / "data"
    cold = measure_cold(cfg, main_dir, data_dir, logs)
    f.update(cold_start_s=cold["seconds"], cold_start_cpu_s=cold["cpu_seconds"], rss_after_cold_bytes=cold["rss_bytes"],
             rss_peak_cold_bytes=cold["rss_peak_bytes"])

    log("warm restart: the same data dir, conversion cache present")
    server = Server(data_dir, logs / "serve-warm.log")
    nginx = Nginx(bins["nginx"], run_dir / "nginx-root", run_dir / "nginx")
    try:
        f["warm_restart_s"] = server.start()
        f["rss_after_load_bytes"] = server.rss()[0]
        log(f"  {f['warm_restart_s']:.2f} s, RSS {f['rss_after_load_bytes'] / MB:.0f} MB")
        token = bootstrap(server.port)
        client = Client(server.port, token)
        exported = export_payloads(client, symbols, run_dir / "nginx-root")
        client.close()
        f.update(payload_gzip_bytes=exported["gzip_bytes"], payload_raw_bytes=exported["raw_bytes"])
        (run_dir / "nginx").mkdir()
        nginx.start()
        theirs = nginx_etags(nginx.port, symbols)
        log(f"throughput: wrk, {cfg.connections} connections, {cfg.seconds:g} s per run, {cfg.reps} runs each, alternating")
        f["throughput"] = measure_throughput(cfg, bins["wrk"], server, token, nginx, symbols, exported["etags"], theirs, run_dir)
        f["rss_after_wrk_bytes"] = server.rss()[0]
    finally:
        server.stop()
        nginx.stop()

    f["refresh"] = []
    for n in cfg.refresh_sizes:
        source = main_dir if n <= cfg.groups else workload.build_directory(cfg.cache, n, shared=True)
        f["refresh"].append(measure_refresh(cfg, n, source, run_dir, logs))

    meta["total_seconds"] = round(time.perf_counter() - started, 1)
    meta["loadavg_end"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    checks = targets(cfg, f)
    table = render(cfg, f, checks, meta)
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
