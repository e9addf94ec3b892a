"""Request and TCP metrics with Istio's names and labels, kept in plain dicts on the hot path and
rendered through prometheus_client's exposition format on scrape.

Per-process values merge by addition, so ``--concurrency N`` workers send :meth:`Stats.export` to the
admin process, which renders the sum. prometheus_client is imported on the first scrape: it costs
about 5 MB of resident memory that a proxy nobody scrapes should not carry.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Any

REQUEST_LABELS = (
    "reporter", "source_workload", "source_workload_namespace", "source_app",
    "destination_workload", "destination_workload_namespace", "destination_app",
    "destination_service", "destination_service_name", "destination_service_namespace",
    "request_protocol", "response_code", "response_flags",
)
TCP_LABELS = (*REQUEST_LABELS[:10], "request_protocol", "response_flags")
# Istio's default duration buckets, in milliseconds.
DURATION_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
                    1800000, 3600000)

RequestKey = tuple[tuple[str, ...], int, str]
TcpKey = tuple[tuple[str, ...], str]


class Stats:
    """Counters of one process. Keys: (labels up to destination_service_namespace, code, flags)."""

    def __init__(self) -> None:
        self.requests: dict[RequestKey, list[float]] = {}  # [count, sum_ms, bucket counts...]
        self.tcp: dict[TcpKey, list[int]] = {}  # [opened, closed, sent bytes, received bytes]
        self.counters: dict[str, int] = {}

    def request(self, labels: tuple[str, ...], code: int, flags: str, duration_ms: float) -> None:
        key = (labels, code, flags)
        entry = self.requests.get(key)
        if entry is None:
            entry = self.requests[key] = [0.0] * (2 + len(DURATION_BUCKETS) + 1)
        entry[0] += 1
        entry[1] += duration_ms
        entry[2 + bisect.bisect_left(DURATION_BUCKETS, duration_ms)] += 1

    def tcp_opened(self, labels: tuple[str, ...]) -> None:
        self._tcp(labels, "-")[0] += 1

    def tcp_closed(self, labels: tuple[str, ...], flags: str, sent: int, received: int) -> None:
        entry = self._tcp(labels, flags)
        entry[1] += 1
        entry[2] += sent
        entry[3] += received

    def _tcp(self, labels: tuple[str, ...], flags: str) -> list[int]:
        key = (labels, flags)
        entry = self.tcp.get(key)
        if entry is None:
            entry = self.tcp[key] = [0, 0, 0, 0]
        return entry

    def incr(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by

    def export(self) -> dict[str, object]:
        """Plain data (picklable) for merging across worker processes."""
        return {"requests": {k: list(v) for k, v in self.requests.items()},
                "tcp": {k: list(v) for k, v in self.tcp.items()},
                "counters": dict(self.counters)}

    def merge(self, data: dict[str, object]) -> None:
        for key, values in data["requests"].items():  # type: ignore[attr-defined]
            entry = self.requests.setdefault(key, [0.0] * len(values))
            for i, v in enumerate(values):
                entry[i] += v
        for key, values in data["tcp"].items():  # type: ignore[attr-defined]
            tcp_entry = self.tcp.setdefault(key, [0, 0, 0, 0])
            for i, v in enumerate(values):
                tcp_entry[i] += v
        for name, value in data["counters"].items():  # type: ignore[attr-defined]
            self.incr(name, value)


def _families(stats: Iterable[Stats]) -> Iterator[Any]:
    """The metric families (prometheus_client objects) of the sum of ``stats``."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

    total = Stats()
    for s in stats:
        total.merge(s.export())
    requests = CounterMetricFamily("istio_requests_total", "Requests handled by the proxy.",
                                   labels=REQUEST_LABELS)
    duration = HistogramMetricFamily("istio_request_duration_milliseconds", "Request duration in milliseconds.",
                                     labels=REQUEST_LABELS)
    for (labels, code, flags), entry in sorted(total.requests.items()):
        values = [*labels, "http", str(code), flags]
        requests.add_metric(values, entry[0])
        cumulative, buckets = 0.0, []
        for bound, count in zip((*DURATION_BUCKETS, float("inf")), entry[2:], strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
        duration.add_metric(values, buckets, entry[1])
    yield requests
    yield duration
    opened = CounterMetricFamily("istio_tcp_connections_opened_total", "TCP connections opened.",
                                 labels=TCP_LABELS)
    closed = CounterMetricFamily("istio_tcp_connections_closed_total", "TCP connections closed.",
                                 labels=TCP_LABELS)
    sent = CounterMetricFamily("istio_tcp_sent_bytes_total", "Bytes sent to the downstream on TCP connections.",
                               labels=TCP_LABELS)
    received = CounterMetricFamily("istio_tcp_received_bytes_total",
                                   "Bytes received from the downstream on TCP connections.", labels=TCP_LABELS)
    for (labels, flags), (n_open, n_closed, n_sent, n_received) in sorted(total.tcp.items()):
        values = [*labels, "tcp", flags]
        opened.add_metric(values, n_open)
        closed.add_metric(values, n_closed)
        sent.add_metric(values, n_sent)
        received.add_metric(values, n_received)
    yield opened
    yield closed
    yield sent
    yield received
    for name, value in sorted(total.counters.items()):
        counter = CounterMetricFamily(f"meshbox_proxy_{name}", f"meshbox proxy counter {name}.")
        counter.add_metric([], value)
        yield counter


def render(stats: Iterable[Stats]) -> bytes:
    """Prometheus text exposition of the sum of ``stats``."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.registry import Collector

    families = list(_families(stats))

    class Snapshot(Collector):
        def collect(self) -> Iterator[Any]:
            return iter(families)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot())
    return generate_latest(registry)
