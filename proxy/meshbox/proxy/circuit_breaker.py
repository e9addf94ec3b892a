"""Circuit breaking of one cluster: the limits on connections, pending and active requests and
retries that one proxy sends it (Envoy's thresholds), with their counts and overflow counters.

Pure bookkeeping: the exchange core and the I/O layer ask before they act and say when they are done.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

# Envoy's defaults: 3 retries in flight per cluster; a retry budget of 20 % with at least 3.
DEFAULT_MAX_RETRIES = 3
DEFAULT_BUDGET_PERCENT = 20.0
DEFAULT_MIN_RETRY_CONCURRENCY = 3


@dataclass(frozen=True)
class BreakerSettings:
    """A cluster's limits; 0 means none (max_retries 0 means DEFAULT_MAX_RETRIES)."""

    max_connections: int = 0
    max_pending_requests: int = 0
    max_requests: int = 0
    max_retries: int = 0
    max_requests_per_connection: int = 0
    # A retry budget (percent of requests in flight and pending) replaces max_retries when set.
    budget_percent: float | None = None
    min_retry_concurrency: int = DEFAULT_MIN_RETRY_CONCURRENCY

    @property
    def limits_requests(self) -> bool:
        """Whether requests must be counted (a limit on them, on connections, or a retry budget)."""
        return bool(self.max_connections or self.max_requests or self.budget_percent is not None)


# The settings of a cluster without circuit breakers of its own.
NO_LIMITS = BreakerSettings()


class ClusterLimits:
    """The counts behind a cluster's limits (one per cluster of a serving snapshot).

    ``pending`` holds requests waiting for a connection slot, as the I/O layer's opaque entries;
    entries whose request ended meanwhile are dropped when seen (``still_waiting``)."""

    __slots__ = ("cx_active", "cx_overflow", "max_connections", "max_pending", "max_requests",
                 "max_requests_per_connection", "pending", "per_connection", "retries_active", "retry_overflow",
                 "rq_active",
                 "rq_pending_overflow", "settings")

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self.max_connections = settings.max_connections
        self.max_pending = settings.max_pending_requests
        self.max_requests = settings.max_requests
        self.max_requests_per_connection = settings.max_requests_per_connection
        # Connections are counted (and tagged with these limits) only when a limit is on them.
        self.per_connection = bool(settings.max_connections or settings.max_requests_per_connection)
        self.cx_active = 0
        self.rq_active = 0
        self.retries_active = 0
        self.pending: deque[Any] = deque()
        # Overflow counters of this cluster (also counted proxy-wide in the metrics).
        self.cx_overflow = 0
        self.rq_pending_overflow = 0
        self.retry_overflow = 0

    # -- requests ----------------------------------------------------------------------------------
    def admit_request(self) -> bool:
        """Count a new request in; False (counted as an overflow) when max_requests are in flight."""
        if self.max_requests and self.rq_active >= self.max_requests:
            self.rq_pending_overflow += 1
            return False
        self.rq_active += 1
        return True

    def request_done(self) -> None:
        self.rq_active -= 1

    # -- retries -----------------------------------------------------------------------------------
    def admit_retry(self) -> bool:
        """Count a retry in; False (an overflow) when the retry limit or budget is used up."""
        settings = self.settings
        if settings.budget_percent is not None:
            allowed = max(settings.min_retry_concurrency,
                          int(settings.budget_percent * (self.rq_active + len(self.pending)) / 100))
        else:
            allowed = settings.max_retries or DEFAULT_MAX_RETRIES
        if self.retries_active >= allowed:
            self.retry_overflow += 1
            return False
        self.retries_active += 1
        return True

    def retry_done(self) -> None:
        self.retries_active -= 1

    # -- connections -------------------------------------------------------------------------------
    def connection_allowed(self) -> bool:
        """Whether another upstream connection may be opened now."""
        return not self.max_connections or self.cx_active < self.max_connections

    def queue(self, entry: Any, still_waiting: Any) -> bool:
        """Make ``entry`` wait for a connection slot; False (an overflow) when the queue is full.
        ``still_waiting(entry)`` tells whether an entry's request still waits (others are dropped)."""
        self.cx_overflow += 1
        if self.max_pending and len(self.pending) >= self.max_pending:
            self.pending = deque(e for e in self.pending if still_waiting(e))
            if len(self.pending) >= self.max_pending:
                self.rq_pending_overflow += 1
                return False
        self.pending.append(entry)
        return True

    def next_pending(self, still_waiting: Any) -> Any:
        """The oldest entry still waiting (taken off the queue), or None."""
        pending = self.pending
        while pending:
            entry = pending.popleft()
            if still_waiting(entry):
                return entry
        return None

    def lines(self, name: str) -> list[str]:
        """The admin /clusters lines of this cluster's limits and counts."""
        s = self.settings
        return [f"{name}::circuit_breakers::max_connections::{s.max_connections}",
                f"{name}::circuit_breakers::max_pending_requests::{s.max_pending_requests}",
                f"{name}::circuit_breakers::max_requests::{s.max_requests}",
                f"{name}::circuit_breakers::max_retries::{s.max_retries or DEFAULT_MAX_RETRIES}",
                f"{name}::cx_active::{self.cx_active}", f"{name}::rq_active::{self.rq_active}",
                f"{name}::rq_pending_active::{len(self.pending)}",
                f"{name}::rq_retry_active::{self.retries_active}",
                f"{name}::upstream_cx_overflow::{self.cx_overflow}",
                f"{name}::upstream_rq_pending_overflow::{self.rq_pending_overflow}",
                f"{name}::upstream_rq_retry_overflow::{self.retry_overflow}"]
