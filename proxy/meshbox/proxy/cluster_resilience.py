"""A cluster's resilience settings (circuit breakers, outlier detection, consistent hashing) and the
guard that applies them when a request picks an endpoint: counted against the limits, endpoints
the outlier detector ejected skipped (all used in panic), hashed onto the ring.

Clusters without any of these have no guard: the exchange core tests one attribute and picks as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from meshbox.proxy.circuit_breaker import NO_LIMITS, BreakerSettings, ClusterLimits
from meshbox.proxy.consistent_hash import DEFAULT_RING_SIZE, HashKey, HashRing
from meshbox.proxy.metrics import Stats
from meshbox.proxy.outlier_detection import OutlierDetector, OutlierSettings
from meshbox.proxy.upstream_hosts import UpstreamHost

PickerFactory = Callable[[str, list[UpstreamHost], list[int]], Callable[[], UpstreamHost | None]]
_NOTHING: set[UpstreamHost] = set()


@dataclass(frozen=True)
class ResilienceSettings:
    """What a cluster's config asks for (picklable: it travels with the compiled snapshot)."""

    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    outlier: OutlierSettings | None = None
    # Consistent hashing: (kind, header or cookie name) of consistent_hash.HashKey, and the ring size.
    hash_on: tuple[str, str] | None = None
    ring_size: int = DEFAULT_RING_SIZE

    @property
    def guarded(self) -> bool:
        """Whether picking an endpoint needs the guard."""
        return self.breaker.limits_requests or self.outlier is not None or self.hash_on is not None


class ClusterGuard:
    """Picks endpoints for a cluster with resilience settings, and takes outcomes for outlier detection."""

    __slots__ = ("counting", "hosts", "key", "limits", "make_picker", "outlier", "picker", "policy", "ring",
                 "weights")

    def __init__(self, settings: ResilienceSettings, policy: str, hosts: list[UpstreamHost], weights: list[int],
                 limits: ClusterLimits, make_picker: PickerFactory) -> None:
        self.limits = limits
        self.counting = settings.breaker.limits_requests
        self.policy = policy
        self.hosts = hosts
        self.weights = weights
        self.make_picker = make_picker
        self.outlier = OutlierDetector(settings.outlier, hosts) if settings.outlier is not None else None
        self.ring = HashRing(hosts, weights, settings.ring_size) if settings.hash_on is not None else None
        self.key = HashKey(*settings.hash_on) if settings.hash_on is not None else None
        self.picker = make_picker(policy, hosts, weights)

    def pick(self, headers: list[tuple[bytes, bytes]], remote: str | None, now: float,
             stats: Stats) -> UpstreamHost | None:
        """An endpoint for a request (None: the cluster has none); ejections that end now leave the
        gauge ``outlier_detection_ejections_active`` of ``stats``."""
        skip = _NOTHING
        outlier = self.outlier
        if outlier is not None:
            ejected = len(outlier.ejected)
            if outlier.review(now):
                stats.incr("outlier_detection_ejections_active", len(outlier.ejected) - ejected)
                self._rebuild()
            if outlier.ejected and not outlier.panic():
                skip = outlier.ejected
        ring = self.ring
        if ring is not None:
            key = self.key.of(headers, remote) if self.key is not None else None
            return ring.pick(key, skip)
        return self.picker()

    def report(self, host: UpstreamHost | None, status: int, now: float, stats: Stats) -> None:
        """An attempt's outcome on ``host`` (status, or attempt_outcomes.NO_ANSWER), counted in ``stats``
        when it ejects the host."""
        outlier = self.outlier
        if outlier is None or host is None or not outlier.report(host, status, now):
            return
        stats.incr("outlier_detection_ejections_enforced")
        stats.incr("outlier_detection_ejections_active")
        self._rebuild()

    def inherit(self, before: ClusterGuard) -> None:
        """Take over the records and ejections of ``before`` (the same cluster in the previous config)
        for the endpoints still in the cluster."""
        outlier, old = self.outlier, before.outlier
        if outlier is None or old is None:
            return
        for host in outlier.records:
            record = old.records.get(host)
            if record is not None:
                outlier.records[host] = record
                if host in old.ejected:
                    outlier.ejected.add(host)
        outlier.next_review = old.next_review
        outlier.ejections_total = old.ejections_total
        self._rebuild()

    def _rebuild(self) -> None:
        """Balance over the endpoints not ejected (over all of them in panic)."""
        outlier = self.outlier
        if outlier is None or not outlier.ejected or outlier.panic():
            self.picker = self.make_picker(self.policy, self.hosts, self.weights)
            return
        kept = [(h, w) for h, w in zip(self.hosts, self.weights, strict=True) if h not in outlier.ejected]
        self.picker = self.make_picker(self.policy, [h for h, _ in kept], [w for _, w in kept])



def resilience_lines(name: str, settings: ResilienceSettings | None, limits: ClusterLimits,
                     guard: ClusterGuard | None) -> list[str]:
    """A cluster's admin /clusters lines about its limits and ejections (none for a cluster that has
    neither settings of its own nor a retry overflow to show)."""
    lines = []
    if (settings is not None and settings.breaker != NO_LIMITS) or limits.retry_overflow:
        lines += limits.lines(name)
    if guard is not None and guard.outlier is not None:
        lines += guard.outlier.lines(name)
    return lines
