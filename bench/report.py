"""The bench's verdicts and its Markdown table: every figure next to its target, from one run."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.run import Config

MB = 1024 * 1024
WHO = {"model_manager": "model-manager (default: as ./start.sh runs it, log level info)",
       "model_manager_warning": "model-manager --log-level warning",
       "model_manager_one": "model-manager --workers 1 --log-level warning",
       "previous_release": "previous release (b8ee4e9), --log-level warning",
       "nginx": "nginx"}


def targets(cfg: Config, f: dict) -> list[dict]:
    t: list[dict] = []

    def add(name: str, value: float | None, op: str, limit: float, what: str) -> None:
        if value is None:
            return
        ok = {">=": value >= limit, "<=": value <= limit, "<": value < limit}[op]
        t.append({"name": name, "what": what, "value": round(value, 4), "op": op, "limit": round(limit, 4), "pass": ok})

    tp = f["throughput"]

    def ratio(mode: str, key: str, who: str = "model_manager", than: str = "nginx") -> float | None:
        if who not in tp[mode] or than not in tp[mode]:
            return None
        return tp[mode][who][key] / tp[mode][than][key]

    add("gzip_rps_vs_nginx", ratio("gzip", "req_per_s"), ">=", 0.9, "gzip payload req/s ÷ nginx gzip_static (default config)")
    add("identity_rps_vs_nginx", ratio("identity", "req_per_s"), ">=", 0.5, "identity payload req/s ÷ nginx (default config)")
    add("not_modified_rps_vs_nginx", ratio("not_modified", "req_per_s"), ">=", 0.5, "304 req/s ÷ nginx 304 (default config)")
    add("gzip_p99_vs_nginx", ratio("gzip", "p99_ms"), "<=", 1.5, "gzip p99 latency ÷ nginx's (default config)")
    add("access_log_cost", ratio("gzip", "req_per_s", "model_manager", "model_manager_warning"), ">=", 0.95,
        "gzip req/s at the default log level ÷ at warning (access log costs ≤ 5 %)")
    for mode, label in (("gzip", "gzip"), ("not_modified", "304")):
        add(f"{mode}_vs_previous", ratio(mode, "req_per_s", "model_manager_one", "previous_release"), ">=", 0.95,
            f"{label} req/s with fleet recording and metrics ÷ the previous release (one process each, at warning)")
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
        "server memory after loading (the larger of cold start and warm restart) ≤ 250 MB + 1.5 × gzip bytes")
    lp = f.get("long_poll")
    if lp:
        add("long_poll_idle_cpu_s", lp["idle_cpu_seconds"], "<", 1.0,
            f"CPU-seconds of {lp['polls']} idle long polls over {lp['idle_seconds']:g} s")
        add("long_poll_all_received_s", lp["all_received_after_refresh_sent_s"], "<", 2.0,
            f"seconds until all {lp['polls']} long polls have the change (from the refresh request)")
    d = f.get("desk")
    if d:
        n = d["groups"]
        add("desk_register_vs_irreducible", d["register_s"] / d["irreducible_s"], "<=", 1.0,
            f"desk: registering {n} small groups ÷ single-threaded irreducible work")
        add("desk_rss_bytes", d["rss_bytes"], "<=", 250 * MB + 1.5 * d["payload_gzip_bytes"],
            f"desk: server memory with {n} groups ≤ 250 MB + 1.5 × gzip bytes")
        add("desk_symbols_vs_10", d["symbols_ms"] / d["symbols_10_ms"], "<=", 20,
            f"desk: GET /symbols at N={n} ÷ at N=10")
        add("desk_refresh_vs_10", d["refresh_n_s"] / d["refresh_10_s"], "<=", 1.2,
            f"desk: refresh latency of one group at N={n} ÷ at N=10")
    return t


def fmt_ms(x: float) -> str:
    return f"{x:.2f}"


def _throughput_lines(tp: dict) -> list[str]:
    lines = ["| payload | server | req/s | ÷ nginx | p50 / p99 ms | p99 ÷ nginx's |", "|---|---|---:|---:|---:|---:|"]
    for mode, label in (("gzip", "gzip"), ("identity", "identity"), ("not_modified", "304 (If-None-Match)")):
        ref = tp[mode]["nginx"]
        for who in WHO:
            a = tp[mode].get(who)
            if a is None:
                continue
            lines.append(f"| {label} | {WHO[who]} | {a['req_per_s']:,.0f} | {a['req_per_s'] / ref['req_per_s']:.2f} | "
                         f"{fmt_ms(a['p50_ms'])} / {fmt_ms(a['p99_ms'])} | {a['p99_ms'] / ref['p99_ms']:.2f} |")
    return lines


def _figure_lines(cfg: Config, f: dict) -> list[str]:
    lines = ["| figure | value |", "|---|---:|",
             f"| irreducible work, one thread (unpickle + save_raw + gzip -{f['gzip_level']}, {cfg.groups} models) | "
             f"{f['irreducible_s']:.2f} s ({f['irreducible_cpu_s']:.2f} CPU-s) |",
             f"| the same with the server's compressor, libdeflate (gzip step: {f['irreducible_gzip_cpu_s']:.2f} → "
             f"{f['irreducible_server_gzip_cpu_s']:.2f} CPU-s); cold start ÷ it | {f['irreducible_server_gzip_s']:.2f} s; "
             f"{f['cold_start_s'] / f['irreducible_server_gzip_s']:.2f} × |",
             f"| cold start (POST /api/models, empty data dir) | {f['cold_start_s']:.2f} s "
             f"({f['cold_start_cpu_s']:.2f} CPU-s in the server process, model checks not included) |",
             f"| warm restart (process start → every payload ready, cache present) | {f['warm_restart_s']:.2f} s |"]
    if f.get("model_check_s"):
        lines.append(f"| per model: irreducible work / the server's model check in its child process (one at a time) | "
                     f"{f['irreducible_s'] / cfg.groups * 1000:.0f} ms / {f['model_check_s'] * 1000:.0f} ms |")
    lines += [f"| payload bytes: gzip / raw JSON, all groups | {f['payload_gzip_bytes'] / MB:.1f} MB / {f['payload_raw_bytes'] / MB:.1f} MB |",
              f"| server memory (RSS; of several workers, the sum of their PSS) after cold start / after warm restart / after the wrk runs | "
              f"{f['rss_after_cold_bytes'] / MB:.0f} / {f['rss_after_load_bytes'] / MB:.0f} / {f['rss_after_wrk_bytes'] / MB:.0f} MB |"]
    for r in f["refresh"]:
        lines.append(f"| refresh latency at N={r['groups']} (median / max of {len(r['samples_s'])}, debounce {cfg.debounce:g} s) | "
                     f"{r['median_s']:.3f} / {r['max_s']:.3f} s |")
    lp = f.get("long_poll")
    if lp:
        lines += [f"| {lp['polls']} idle long polls: server CPU over {lp['idle_seconds']:g} s | {lp['idle_cpu_seconds']:.3f} CPU-s |",
                  f"| {lp['polls']} long polls: all have the change, from the refresh request / first to last | "
                  f"{lp['all_received_after_refresh_sent_s']:.3f} / {lp['first_to_last_s']:.3f} s "
                  f"(the refresh request itself: {lp['refresh_request_s']:.3f} s) |"]
    d = f.get("desk")
    if d:
        n = d["groups"]
        lines += [f"| desk, {n} small groups: irreducible work / registering | {d['irreducible_s']:.2f} s / "
                  f"{d['register_s']:.2f} s ({d['register_cpu_s']:.2f} CPU-s in the server) |",
                  f"| desk: irreducible work with the server's compressor; registering ÷ it | "
                  f"{d['irreducible_server_gzip_s']:.2f} s; {d['register_s'] / d['irreducible_server_gzip_s']:.2f} × |",
                  f"| desk: server memory / gzip payload bytes | {d['rss_bytes'] / MB:.0f} MB / {d['payload_gzip_bytes'] / MB:.1f} MB |",
                  f"| desk: GET /symbols at N={n} / at N=10 (median of 15) | {d['symbols_ms']:.1f} / {d['symbols_10_ms']:.1f} ms |",
                  f"| desk: refresh latency of one group at N={n} / at N=10 (median) | {d['refresh_n_s']:.3f} / {d['refresh_10_s']:.3f} s |"]
    return lines


def render(cfg: Config, f: dict, checks: list[dict], meta: dict) -> str:
    lines = [f"### {'Quick' if cfg.quick else 'Full'} run, {meta['date']}: N={cfg.groups} groups, wrk {cfg.connections} "
             f"connections × {cfg.seconds:g} s, {meta['cpus']} cores, load average at start {meta['loadavg_start']}, "
             f"at the end {meta.get('loadavg_end', '?')}", ""]
    lines += _throughput_lines(f["throughput"]) + [""] + _figure_lines(cfg, f)
    lines += ["", "| target | value | limit | result |", "|---|---:|---:|---|"]
    for c in checks:
        if c["name"] in ("rss_bytes", "desk_rss_bytes"):
            value, limit = f"{c['value'] / MB:.0f} MB", f"{c['limit'] / MB:.0f} MB"
        else:
            value, limit = f"{c['value']:.3g}", f"{c['limit']:.3g}"
        verdict = ("PASS" if c["pass"] else "MISS") + (" (not checked in quick mode)" if cfg.quick else "")
        lines.append(f"| {c['what']} | {value} | {c['op']} {limit} | {verdict} |")
    return "\n".join(lines)
