"""Prometheus metrics (SPEC §9), on a registry of this process's own (no global state).

Counters are bumped where things happen — the payload path through cached label children, so
counting costs a dict lookup and an increment. Gauges that describe state (groups by status, the
watcher's queue, fleet clients behind, waiting long polls, open event streams) are read from the
service when Prometheus scrapes, so they cost nothing in between.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter("model_manager_http_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.bytes_sent = Counter("model_manager_http_response_bytes", "Response body bytes sent", registry=r)
        self.payloads = Counter("model_manager_payload_responses", "Model payload answers, by model and result "
                                "(gzip: 200 gzip-encoded, identity: 200 plain, not_modified: 304)", ["model", "result"], registry=r)
        self.versions = Counter("model_manager_versions_recorded", "Versions recorded, by model", ["model"], registry=r)
        self.refreshes = Counter("model_manager_refreshes", "Directory and group refreshes, by outcome "
                                 "(ok, partial: some groups kept their previous payload or failed, refused, failed)",
                                 ["outcome"], registry=r)
        self.refresh_seconds = Histogram("model_manager_refresh_duration_seconds", "Time to re-read a directory or groups",
                                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=r)
        self._payload_children: dict[tuple[str, str], object] = {}
        self._request_children: dict[tuple[str, int], object] = {}

    def payload(self, model: str, result: str) -> None:
        child = self._payload_children.get((model, result))
        if child is None:
            child = self._payload_children[(model, result)] = self.payloads.labels(model, result)
        child.inc()

    def request(self, route: str, status: int, body_bytes: int) -> None:
        child = self._request_children.get((route, status))
        if child is None:
            child = self._request_children[(route, status)] = self.requests.labels(route, str(status))
        child.inc()
        if body_bytes:
            self.bytes_sent.inc(body_bytes)

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
