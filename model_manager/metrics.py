"""Prometheus metrics (SPEC §9), on a registry of this process's own (no global state).

Counters are bumped where things happen — the payload path through cached label children, so
counting costs a dict lookup and an increment. Gauges that describe state (groups by status, the
watcher's queue, fleet clients behind, waiting long polls, open event streams) are read from the
service when Prometheus scrapes, so they cost nothing in between.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# the text format 0.0.4; the response adds "; charset=utf-8" itself (as it does for any text/ type)
CONTENT_TYPE = "text/plain; version=0.0.4"

log = logging.getLogger(__name__)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        # counted on the event loop only (the payload path among them): plain ints, read at scrape time
        self._payloads: dict[tuple[str, str], int] = {}
        self._requests: dict[tuple[str, int], int] = {}
        self._bytes_sent = 0
        r.register(_HotCounters(self))
        self.versions = Counter("model_manager_versions_recorded", "Versions recorded, by model", ["model"], registry=r)
        self.refreshes = Counter("model_manager_refreshes", "Directory and group refreshes, by outcome "
                                 "(ok, partial: some groups kept their previous payload or failed, refused, failed)",
                                 ["outcome"], registry=r)
        self.refresh_seconds = Histogram("model_manager_refresh_duration_seconds", "Time to re-read a directory or groups",
                                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=r)

    def payload(self, model: str, result: str) -> None:
        """A payload answer (called on the event loop: an int increment, no lock)."""
        key = (model, result)
        self._payloads[key] = self._payloads.get(key, 0) + 1

    def request(self, route: str, status: int, body_bytes: int) -> None:
        """An answered request (called on the event loop: an int increment, no lock)."""
        key = (route, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        self._bytes_sent += body_bytes

    def watch_state(self, read: Callable[[], dict]) -> None:
        """Expose the gauges `read()` returns at scrape time (see `StateCollector`)."""
        self.registry.register(StateCollector(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def families(self) -> list[dict]:
        """Every metric of this process as plain data (what a worker leaves for the others)."""
        return [{"name": m.name, "type": m.type, "doc": m.documentation,
                 "samples": [[x.name, x.labels, x.value] for x in m.samples]} for m in self.registry.collect()]


# Gauges that add up across workers (each worker's own connections); the others describe state all
# workers share (groups, the fleet), so the largest value stands for all of them.
SUMMED_GAUGES = {"model_manager_long_polls_waiting", "model_manager_event_streams_open", "model_manager_watcher_queue"}
PER_PROCESS = ("process_", "python_")  # the process collectors: one series per worker, labelled `worker`


class SharedMetrics:
    """The metrics of every worker of one server (see workers.py), answered by whichever one is scraped.

    Each worker writes its metrics to `directory/worker-INDEX-PID.json` (`publish`, every second or
    two, and before it answers a scrape). `render` adds them up: counters and histograms summed —
    including those of workers that have died, whose last file stays, so a restart never makes a
    counter go down — the process metrics per worker, and gauges from the live workers only."""

    def __init__(self, metrics: Metrics, directory: Path, index: int):
        self.metrics = metrics
        self.directory = Path(directory)
        self.index = index
        self.path = self.directory / f"worker-{index}-{os.getpid()}.json"
        self._lock = threading.Lock()  # one writer at a time (the follow loop, concurrent scrapes)

    def publish(self) -> None:
        """Write this worker's metrics (atomically: readers never see half a file)."""
        with self._lock:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.metrics.families(), separators=(",", ":")))
            os.replace(tmp, self.path)

    def render(self) -> bytes:
        """Every worker's metrics combined, in the Prometheus text format (blocking: file reads)."""
        try:
            self.publish()
        except OSError as exc:  # a full disk: the other workers' last files and our previous one still count
            log.warning("metrics of this worker not written: %s", exc)
        merged: dict[str, Metric] = {}
        values: dict[tuple, float] = {}
        for path in sorted(self.directory.glob("worker-*.json")):
            try:
                index, pid = (int(x) for x in path.stem.split("-")[1:3])
                families = json.loads(path.read_text())
            except (OSError, ValueError):  # a worker's file being replaced, or damaged: skip it this once
                continue
            alive = pid == os.getpid() or _alive(pid)
            for family in families:
                _merge(merged, values, family, index, alive)
        for (name, sample, labels), value in values.items():
            merged[name].add_sample(sample, dict(labels), value)
        return generate_latest(_Fixed(list(merged.values())))


def _merge(merged: dict[str, Metric], values: dict[tuple, float], family: dict, index: int, alive: bool) -> None:
    name, kind = family["name"], family["type"]
    per_worker = name.startswith(PER_PROCESS)
    if not alive and (kind == "gauge" or per_worker):
        return
    if name not in merged:
        merged[name] = Metric(name, family["doc"], kind)
    for sample, labels, value in family["samples"]:
        if per_worker:
            labels = {**labels, "worker": str(index)}
        key = (name, sample, tuple(sorted(labels.items())))
        old = values.get(key)
        if old is None or per_worker:
            values[key] = value
        elif sample.endswith("_created"):
            values[key] = min(old, value)
        elif kind != "gauge" or name in SUMMED_GAUGES:
            values[key] = old + value
        else:
            values[key] = max(old, value)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Fixed:
    """What `generate_latest` needs of a registry: metrics to collect."""

    def __init__(self, metrics: list[Metric]):
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


class StateCollector(Collector):
    """Gauges read at scrape time from a dict: {"groups": {(model, status): n}, "watcher_queue": n,
    "fleet_behind": n, "long_polls": n, "event_streams": n}."""

    def __init__(self, read: Callable[[], dict]):
        self.read = read

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        state = self.read()
        groups = GaugeMetricFamily("model_manager_groups", "Groups by model and status", labels=["model", "status"])
        for (model, status), count in sorted(state.get("groups", {}).items()):
            groups.add_metric([model, status], count)
        yield groups
        for name, doc in (("watcher_queue", "Changed groups waiting for their debounce"),
                          ("fleet_clients_behind", "Clients whose last received version of some group is not the live one"),
                          ("long_polls_waiting", "Payload requests parked by a long poll"),
                          ("event_streams_open", "Open event streams")):
            yield GaugeMetricFamily(f"model_manager_{name}", doc, value=state.get(name, 0))


class _HotCounters(Collector):
    """The per-request counters, kept as plain ints by `Metrics` and turned into counters when scraped:
    a prometheus_client Counter takes a lock per increment, which showed on the payload path."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        requests = CounterMetricFamily("model_manager_http_requests", "HTTP requests answered, by route and status",
                                       labels=["route", "status"])
        for (route, status), n in sorted(dict(m._requests).items()):
            requests.add_metric([route, str(status)], n)
        yield requests
        yield CounterMetricFamily("model_manager_http_response_bytes", "Response body bytes sent", value=m._bytes_sent)
        payloads = CounterMetricFamily("model_manager_payload_responses", "Model payload answers, by model and result "
                                       "(gzip: 200 gzip-encoded, identity: 200 plain, not_modified: 304)",
                                       labels=["model", "result"])
        for (model, result), n in sorted(dict(m._payloads).items()):
            payloads.add_metric([model, result], n)
        yield payloads
