"""Request and TCP metrics with Istio's names and labels, kept in plain dicts on the hot path
(metrics_exposition renders them on scrape).

Per-process values merge by addition, so ``--concurrency N`` workers send :meth:`Stats.export` to the
admin process, which renders the sum.
"""

from __future__ import annotations

from typing import Final

REQUEST_LABELS = (
    "reporter", "source_workload", "source_workload_namespace", "source_app",
    "destination_workload", "destination_workload_namespace", "destination_app",
    "destination_service", "destination_service_name", "destination_service_namespace",
    "connection_security_policy", "source_principal", "destination_principal",
    "request_protocol", "response_code", "response_flags", "grpc_response_status",
)
# The labels a request key holds before request_protocol; a gRPC call's key adds ("grpc", its status).
LABELS_BEFORE_PROTOCOL = 13
TCP_LABELS = (*REQUEST_LABELS[:LABELS_BEFORE_PROTOCOL], "request_protocol", "response_flags")
# Istio's default duration buckets, in milliseconds.
DURATION_BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000,
                    1800000, 3600000)
# Istio's request/response size buckets, in bytes: powers of ten from 1 to 10^7.
SIZE_BUCKETS = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000)
# Offsets in a request entry: count, duration sum and buckets, then request size sum and buckets, then
# response size sum and buckets.
REQUEST_SIZE_AT: Final = 2 + len(DURATION_BUCKETS) + 1
RESPONSE_SIZE_AT: Final = REQUEST_SIZE_AT + 1 + len(SIZE_BUCKETS) + 1
REQUEST_ENTRY_SIZE: Final = RESPONSE_SIZE_AT + 1 + len(SIZE_BUCKETS) + 1

# The bounds as the bucket search compares them (floats: no int/float mix in the compiled comparisons).
_DURATION_BOUNDS: Final[tuple[float, ...]] = tuple(float(b) for b in DURATION_BUCKETS)
_SIZE_BOUNDS: Final[tuple[int, ...]] = SIZE_BUCKETS

RequestKey = tuple[tuple[str, ...], int, str]
TcpKey = tuple[tuple[str, ...], str]


class Stats:
    """Counters of one process. Keys: (labels up to destination_principal [+ "grpc", gRPC status], code, flags)."""

    def __init__(self) -> None:
        # [count, sum_ms, duration buckets..., request bytes sum, buckets..., response bytes sum, buckets...]
        self.requests: dict[RequestKey, list[float]] = {}
        self.tcp: dict[TcpKey, list[int]] = {}  # [opened, closed, sent bytes, received bytes]
        self.counters: dict[str, int] = {}
        # The key and entry of the last request counted (entries are never replaced, only added to).
        self._last_labels: tuple[str, ...] | None = None
        self._last_code = 0
        self._last_flags = ""
        self._last_entry: list[float] = []

    def request(self, labels: tuple[str, ...], code: int, flags: str, duration_ms: float,
                request_bytes: int, response_bytes: int) -> None:
        # The series of the previous request, remembered: most requests repeat it (a hit costs three
        # comparisons instead of building and hashing a key of 15 values).
        if labels is self._last_labels and code == self._last_code and flags == self._last_flags:
            entry = self._last_entry
        else:
            key = (labels, code, flags)
            found = self.requests.get(key)
            if found is None:
                found = self.requests[key] = [0.0] * REQUEST_ENTRY_SIZE
            entry = self._last_entry = found
            self._last_labels, self._last_code, self._last_flags = labels, code, flags
        entry[0] += 1
        entry[1] += duration_ms
        entry[2 + _duration_bucket(duration_ms)] += 1
        entry[REQUEST_SIZE_AT] += request_bytes
        entry[REQUEST_SIZE_AT + 1 + _size_bucket(request_bytes)] += 1
        entry[RESPONSE_SIZE_AT] += response_bytes
        entry[RESPONSE_SIZE_AT + 1 + _size_bucket(response_bytes)] += 1

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


def _duration_bucket(duration_ms: float) -> int:
    """``bisect_left(DURATION_BUCKETS, duration_ms)`` as a compiled loop (no call into the bisect module
    per request; most requests stop at one of the first bounds)."""
    i = 0
    for bound in _DURATION_BOUNDS:
        if duration_ms <= bound:
            return i
        i += 1
    return i


def _size_bucket(size: int) -> int:
    """``bisect_left(SIZE_BUCKETS, size)``, likewise."""
    i = 0
    for bound in _SIZE_BOUNDS:
        if size <= bound:
            return i
        i += 1
    return i
