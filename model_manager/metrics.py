"""Prometheus metrics (SPEC §9), on a registry of this process's own (no global state).

Counters are bumped where things happen — the payload path through cached label children, so
counting costs a dict lookup and an increment. Gauges that describe state (groups by status, the
watcher's queue, fleet clients behind, waiting long polls, open event streams) are read from the
service when Prometheus scrapes, so they cost nothing in between.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
