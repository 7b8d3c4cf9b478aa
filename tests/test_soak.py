"""Soak under churn: many clients poll model payloads (with ETags) from a real server while a writer
rewrites the model files, atomically and non-atomically, many times a second.

Every group flips between versions with different feature counts, so a payload built from the files
of two versions (factors of one, model of the other) would be caught: the model's `num_feature`
must equal the number of `dim_factors` in every answer. Also: no 5xx, nothing but 200/304, every
body valid JSON, one ETag never names two bodies, server RSS flat after warm-up (beyond what its
bounded caches may hold), and once the writer stops, every symbol serves exactly its final files.

The CI variant churns for `SOAK_SECONDS` (default 30); the long variant is marked `slow` and runs
only when asked for: `pytest -m slow tests/test_soak.py` (10 minutes, or `SOAK_SECONDS`).
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import pickle
import random
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import pytest
import xgboost as xgb

from tests.support import ServerProcess

CLIENTS = 32
GROUPS = {  # group key -> how its model is stored
    "SOLUSDT_mid_chg_1m": "json", "BTCUSDT_mid_chg_1m": "json", "ETHUSDT_mid_chg_5m": "json",
    "BNBUSDT_mid_chg_1m": "pkl", "XRPUSDT_mid_up_1m": "pkl",
}
FEATURE_COUNTS = (5, 7, 9)


@dataclass
class Version:
    factors: bytes
    ic: bytes
    model_json: bytes
    model_pkl: bytes


def train_versions() -> list[Version]:
    """One tiny trained model per feature count, with matching factor lists and IC tables."""
    versions = []
    rng = np.random.default_rng(7)
    for n in FEATURE_COUNTS:
        x = rng.normal(size=(60, n)).astype(np.float32)
        y = x[:, 0] - 0.5 * x[:, 1] + rng.normal(scale=0.1, size=60)
        reg = xgb.XGBRegressor(n_estimators=4, max_depth=2, n_jobs=1).fit(x, y)
        factors = [f"f{n}_{i}" for i in range(n)]
        # the first version's IC table (every group starts with it) has a quoted column name, which the
        # server reads with pandas: pandas is imported while registering, before RSS is sampled, not
        # later when a table half-written in place first needs it (a one-time import, not growth)
        header = '"factor",ic,kendall_tau\n' if not versions else "factor,ic,kendall_tau\n"
        versions.append(Version(
            factors=("\n".join(factors) + "\n").encode(),
            ic=(header + "".join(f"{f},0.01,0.0{i}\n" for i, f in enumerate(factors))).encode(),
            model_json=bytes(reg.get_booster().save_raw(raw_format="json")),
            model_pkl=pickle.dumps(reg),
        ))
    return versions


@dataclass
class Stats:
    statuses: Counter = field(default_factory=Counter)
    invalid_json: list = field(default_factory=list)
    mismatches: list = field(default_factory=list)
    etag_conflicts: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    etags: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Writer(threading.Thread):
    """Rewrites one group at a time to a random version, its files in a random order: atomically
    (temp + rename), in place with a pause half-way, or deleted and written again — the states a
    training job on a shared drive produces."""

    def __init__(self, directory: Path, versions: list[Version], stop: threading.Event):
        super().__init__(daemon=True, name="soak-writer")
        self.directory, self.versions, self.stop = directory, versions, stop
        self.rng = random.Random(11)
        self.rewrites = Counter()
        self.final: dict[str, Version] = {}
        self.error: BaseException | None = None

    def files_of(self, key: str, version: Version) -> dict[str, bytes]:
        model = ("model.json", version.model_json) if GROUPS[key] == "json" else ("model.pkl", version.model_pkl)
        return {f"{key}_factors.txt": version.factors, f"{key}_ic.csv": version.ic, f"{key}_{model[0]}": model[1]}

    def write_atomic(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{self.rng.randrange(1 << 30)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def write_in_place(self, path: Path, data: bytes) -> None:
        with open(path, "wb") as fh:
            cut = self.rng.randrange(1, max(len(data), 2))
            fh.write(data[:cut])
            fh.flush()
            time.sleep(self.rng.uniform(0.001, 0.03))  # readers may see the file cut short here
            fh.write(data[cut:])

    def write_after_unlink(self, path: Path, data: bytes) -> None:
        path.unlink(missing_ok=True)
        time.sleep(self.rng.uniform(0.001, 0.02))  # readers may find the file gone here
        path.write_bytes(data)

    def rewrite(self, key: str, version: Version) -> None:
        files = list(self.files_of(key, version).items())
        self.rng.shuffle(files)
        how = self.rng.choice(["atomic", "in_place", "unlink"])
        write = {"atomic": self.write_atomic, "in_place": self.write_in_place, "unlink": self.write_after_unlink}[how]
        for name, data in files:
            write(self.directory / name, data)
            time.sleep(self.rng.uniform(0, 0.01))
        self.rewrites[how] += 1
        self.final[key] = version

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.rewrite(self.rng.choice(list(GROUPS)), self.rng.choice(self.versions))
                time.sleep(self.rng.uniform(0.01, 0.08))
        except BaseException as exc:  # reported by the test
            self.error = exc


def check_payload(body: bytes, stats: Stats, symbol: str) -> None:
    try:
        doc = json.loads(body)
        payload = doc["payload"]
        model = json.loads(payload["model_json"])
    except (ValueError, KeyError, TypeError) as exc:
        with stats.lock:
            stats.invalid_json.append((symbol, repr(exc)[:200], body[:200]))
        return
    num_feature = int(model["learner"]["learner_model_param"]["num_feature"])
    dims = [d["dim"] for d in payload["dim_factors"]]
    if num_feature != len(dims) or dims != list(range(len(dims))) or payload["metadata"]["dim"] != num_feature:
        with stats.lock:
            stats.mismatches.append((symbol, num_feature, len(dims), payload["metadata"]["dim"]))


def client(url: str, token: str, symbols: list[str], stop: threading.Event, stats: Stats, seed: int) -> None:
    rng = random.Random(seed)
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    last_etag: dict[str, str] = {}
    while not stop.is_set():
        symbol = rng.choice(symbols)
        headers = {"Authorization": f"Bearer {token}"}
        if rng.random() < 0.7:
            headers["Accept-Encoding"] = "gzip"
        if symbol in last_etag and rng.random() < 0.8:
            headers["If-None-Match"] = last_etag[symbol]
        try:
            conn.request("GET", f"/api/models/soak/model/{symbol}", headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            with stats.lock:
                stats.errors.append(repr(exc))
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            continue
        with stats.lock:
            stats.statuses[resp.status] += 1
        etag = resp.getheader("ETag")
        if resp.status == 200:
            gzipped = resp.getheader("Content-Encoding") == "gzip"
            body = gzip.decompress(raw) if gzipped else raw
            check_payload(body, stats, symbol)
            digest = hashlib.sha256(body).hexdigest()
            with stats.lock:
                seen = stats.etags.setdefault(etag, digest)
                if seen != digest:
                    stats.etag_conflicts.append((symbol, etag))
            last_etag[symbol] = etag
        elif resp.status == 304:
            if headers.get("If-None-Match") != etag:
                with stats.lock:
                    stats.etag_conflicts.append((symbol, "304 for another ETag", etag))
        time.sleep(rng.uniform(0, 0.02))
    conn.close()


def soak(tmp_path: Path, seconds: float) -> None:
    versions = train_versions()
    directory = tmp_path / "models"
    directory.mkdir()
    writer = Writer(directory, versions, threading.Event())
    for key in GROUPS:
        writer.rewrite(key, versions[0])
    symbols = [key.split("_", 1)[0] for key in GROUPS]

    with ServerProcess(tmp_path / "data", extra_args=("--watch", "--watch-debounce", "0.1", "--watch-interval", "0.5",
                                                      "--log-level", "warning")) as server:
        token = server.login()
        status, _, raw = server.post("/api/models", {"name": "soak", "path": str(directory)}, token=token)
        assert status == 201, raw
        process = psutil.Process(server.proc.pid)

        stop, stats, rss = threading.Event(), Stats(), []
        clients = [threading.Thread(target=client, args=(server.url, token, symbols, stop, stats, i), daemon=True)
                   for i in range(CLIENTS)]
        writer.stop = stop
        started = time.monotonic()
        for t in [*clients, writer]:
            t.start()
        while time.monotonic() - started < seconds:
            time.sleep(0.5)
            rss.append((time.monotonic() - started, process.memory_info().rss))
            assert server.proc.poll() is None, server.output()[-3000:]
        stop.set()
        for t in [*clients, writer]:
            t.join(60)
        assert writer.error is None, writer.error

        total = sum(stats.statuses.values())
        summary = (f"{total} requests {dict(stats.statuses)}, {len(stats.etags)} distinct payloads, "
                   f"rewrites {dict(writer.rewrites)}, RSS MiB {[m >> 20 for _, m in rss][::4]}, errors {stats.errors[:3]}")
        print(summary)
        assert total > CLIENTS * seconds, summary  # everyone kept getting answers
        assert set(stats.statuses) <= {200, 304}, summary
        assert not stats.errors, summary
        assert not stats.invalid_json, stats.invalid_json[:3]
        assert not stats.mismatches, stats.mismatches[:5]
        assert not stats.etag_conflicts, stats.etag_conflicts[:5]
        assert sum(writer.rewrites.values()) > seconds * 5, writer.rewrites  # "many times a second"
        assert len(stats.etags) > seconds, summary  # the clients saw the models change, again and again

        # RSS is flat after warm-up: the last third is not above the middle by more than noise
        # (uncompressed bodies for clients without gzip are files in the cache dir, not memory)
        after = [m for t, m in rss if t > seconds * 0.4]
        middle, last = after[: len(after) // 3], after[-(len(after) // 3):]
        growth = statistics.median(last) - statistics.median(middle)
        allowed = 40 * 2**20
        assert growth < allowed, f"RSS grew {growth / 2**20:.1f} MiB after warm-up: {[m >> 20 for _, m in rss]}"

        # once the files are quiet, every symbol serves exactly its final files
        for key, version in writer.final.items():
            symbol = key.split("_", 1)[0]
            expected = [line for line in version.factors.decode().split()]
            deadline = time.monotonic() + 30
            while True:
                status, _, raw = server.get(f"/api/models/soak/model/{symbol}", token=token)
                payload = json.loads(raw)["payload"] if status == 200 else None
                if payload and [d["factor_name"] for d in payload["dim_factors"]] == expected:
                    break
                assert time.monotonic() < deadline, (key, status, raw[:300])
                time.sleep(0.2)
            model_param = json.loads(payload["model_json"])["learner"]["learner_model_param"]
            assert int(model_param["num_feature"]) == len(expected)
        assert "Traceback" not in server.output(), server.output()[-5000:]


def test_soak_short(tmp_path):
    soak(tmp_path, float(os.environ.get("SOAK_SECONDS", "30")))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_soak_long(tmp_path, request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the long soak runs by hand: pytest -m slow tests/test_soak.py")
    soak(tmp_path, float(os.environ.get("SOAK_SECONDS", "600")))
