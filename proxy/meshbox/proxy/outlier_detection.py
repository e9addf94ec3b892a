"""Outlier detection of one cluster (passive health checking, as Envoy does it): endpoints that
answer 5xx (or gateway errors) so many times in a row are ejected from load balancing for the base
ejection time times the number of times they were ejected; ejections are reviewed every interval.
Pure: every call carries ``now``."""

from __future__ import annotations

from dataclasses import dataclass

from meshbox.proxy.upstream_hosts import UpstreamHost

GATEWAY_STATUSES = frozenset({502, 503, 504})
# Envoy's max_ejection_time default: an ejection never lasts longer (unless the base time does).
MAX_EJECTION_TIME = 300.0


@dataclass(frozen=True)
class OutlierSettings:
    consecutive_5xx: int = 5
    consecutive_gateway_errors: int = 0
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0


class HostRecord:
    """One endpoint's failures in a row and ejection."""

    __slots__ = ("consecutive_5xx", "consecutive_gateway", "ejected_until", "times_ejected")

    def __init__(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway = 0
        self.ejected_until = 0.0
        # Envoy's ejection multiplier: up by one per ejection, down by one per interval without one.
        self.times_ejected = 0


class OutlierDetector:
    """The records of a cluster's endpoints; ``ejected`` is the set load balancing skips."""

    __slots__ = ("ejected", "ejections_total", "hosts", "next_review", "records", "settings")

    def __init__(self, settings: OutlierSettings, hosts: list[UpstreamHost]) -> None:
        self.settings = settings
        self.hosts = hosts
        self.records = {host: HostRecord() for host in hosts}
        self.ejected: set[UpstreamHost] = set()
        self.next_review = 0.0
        self.ejections_total = 0

    def report(self, host: UpstreamHost, status: int, now: float) -> bool:
        """One attempt's outcome on ``host`` (its status, or attempt_outcomes.NO_ANSWER). True: ``host`` was
        just ejected."""
        record = self.records.get(host)
        if record is None or host in self.ejected:
            return False
        s = self.settings
        if status >= 500:
            record.consecutive_5xx += 1
            if status in GATEWAY_STATUSES:
                record.consecutive_gateway += 1
            else:
                record.consecutive_gateway = 0
        else:
            record.consecutive_5xx = 0
            record.consecutive_gateway = 0
            return False
        if (s.consecutive_5xx and record.consecutive_5xx >= s.consecutive_5xx) or \
                (s.consecutive_gateway_errors and record.consecutive_gateway >= s.consecutive_gateway_errors):
            return self._eject(host, record, now)
        return False

    def _eject(self, host: UpstreamHost, record: HostRecord, now: float) -> bool:
        record.consecutive_5xx = 0
        record.consecutive_gateway = 0
        n = len(self.hosts)
        # At most max_ejection_percent of the endpoints, but at least one may be ejected (as Envoy).
        if self.ejected and (len(self.ejected) + 1) * 100 > self.settings.max_ejection_percent * n:
            return False
        record.times_ejected += 1
        base = self.settings.base_ejection_time
        record.ejected_until = now + min(base * record.times_ejected, max(MAX_EJECTION_TIME, base))
        self.ejected.add(host)
        self.ejections_total += 1
        if not self.next_review:
            self.next_review = now + self.settings.interval
        return True

    def review(self, now: float) -> bool:
        """Every interval: bring back endpoints whose ejection is over, lower the multiplier of those
        not ejected. True: the set of ejected endpoints changed."""
        if not self.next_review or now < self.next_review:
            return False
        changed = False
        any_multiplier = False
        for host, record in self.records.items():
            if host in self.ejected:
                if now >= record.ejected_until:
                    self.ejected.discard(host)
                    changed = True
            elif record.times_ejected:
                record.times_ejected -= 1
            any_multiplier = any_multiplier or record.times_ejected > 0
        if self.ejected or any_multiplier:
            # On the interval's grid from the first ejection, as a periodic timer would run.
            interval = self.settings.interval
            self.next_review += interval * ((now - self.next_review) // interval + 1)
        else:
            self.next_review = 0.0
        return changed

    def panic(self) -> bool:
        """Too few endpoints left (none, or fewer than min_health_percent): balance over all of them."""
        n = len(self.hosts)
        healthy = n - len(self.ejected)
        return healthy == 0 or healthy * 100 < self.settings.min_health_percent * n

    def lines(self, name: str) -> list[str]:
        """The admin /clusters lines: Envoy's health flag of each ejected endpoint, and the totals."""
        out = [f"{name}::outlier::ejections_active::{len(self.ejected)}",
               f"{name}::outlier::ejections_enforced_total::{self.ejections_total}"]
        out += [f"{name}::{host.host}::health_flags::/failed_outlier_check" for host in self.hosts
                if host in self.ejected]
        return out
