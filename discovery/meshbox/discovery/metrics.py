"""Prometheus metrics of the discovery server (its own registry, served on /metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.connected_proxies = Gauge(
            "meshbox_discovery_connected_proxies", "Discovery streams currently open", registry=r)
        self.pushes = Counter(
            "meshbox_discovery_pushes", "Responses sent to proxies", ["type"], registry=r)
        self.push_latency = Histogram(
            "meshbox_discovery_push_latency_seconds", "Time from sending a response to its ACK or NACK",
            ["type"], buckets=_LATENCY_BUCKETS, registry=r)
        self.nacks = Counter(
            "meshbox_discovery_nacks", "Responses a proxy rejected", ["type"], registry=r)
        self.stale_requests = Counter(
            "meshbox_discovery_stale_requests", "Requests echoing an outdated nonce (ignored)", registry=r)
        self.registry_errors = Gauge(
            "meshbox_discovery_registry_errors", "Registry objects left out because they are invalid", registry=r)
        self.rebuilds = Counter(
            "meshbox_discovery_config_rebuilds", "Registry snapshots turned into proxy configs", registry=r)
