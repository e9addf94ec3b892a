"""The Prometheus text exposition of :class:`~meshbox.proxy.metrics.Stats`, through prometheus_client.

Imported on the first scrape only: prometheus_client costs about 5 MB of resident memory that a proxy
nobody scrapes should not carry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from meshbox.proxy.metrics import DURATION_BUCKETS, REQUEST_LABELS, TCP_LABELS, Stats


class _Families(Collector):
    """Already computed metric families, collected once into a throwaway registry."""

    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        return iter(self._families)


def _families(stats: Iterable[Stats]) -> Iterator[Any]:
    """The metric families (prometheus_client objects) of the sum of ``stats``."""
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
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(_families(stats))))
    return generate_latest(registry)
