"""Parse the text wrk 4.x prints with ``--latency`` into numbers.

Pure functions only: the benchmarks run wrk and hand its stdout here. Anything the
parser does not recognise is an error naming the missing part, so a changed wrk output
format fails loudly instead of producing zeros.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# wrk prints times with these unit suffixes (src/units.c: units_time).
_TIME_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
_TIME = r"([0-9.]+)(us|ms|s|m|h)"

_REQUESTS = re.compile(r"^\s*(\d+) requests in " + _TIME + r", .* read\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([0-9.]+)\s*$", re.MULTILINE)
_PERCENTILE = re.compile(r"^\s+(\d+(?:\.\d+)?)%\s+" + _TIME + r"\s*$", re.MULTILINE)
_SOCKET_ERRORS = re.compile(
    r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*$", re.MULTILINE
)
_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses: (\d+)\s*$", re.MULTILINE)


class WrkOutputError(ValueError):
    """wrk's output lacks a part the benchmark needs (or wrk failed)."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: throughput, latency percentiles (µs) and error counts."""

    requests: int
    duration_s: float
    rps: float
    latency_us: dict[float, float]
    socket_errors: int
    non_2xx: int

    @property
    def p50_us(self) -> float:
        return self.latency_us[50.0]

    @property
    def p99_us(self) -> float:
        return self.latency_us[99.0]

    @property
    def errors(self) -> int:
        """Failed requests of any kind: socket errors plus non-2xx/3xx responses."""
        return self.socket_errors + self.non_2xx


def time_to_us(number: str, unit: str) -> float:
    """Convert a wrk time such as ('1.23', 'ms') to microseconds."""
    return float(number) * _TIME_UNITS_US[unit]


def parse_wrk_output(text: str) -> WrkResult:
    """Parse wrk's report (run with ``--latency``); raise WrkOutputError naming what is missing."""
    requests = _REQUESTS.search(text)
    if requests is None:
        raise WrkOutputError(f"no 'N requests in T' line in wrk output: {text.strip()[:300]!r}")
    rps = _RPS.search(text)
    if rps is None:
        raise WrkOutputError("no 'Requests/sec:' line in wrk output")
    latency = {float(p): time_to_us(n, u) for p, n, u in _PERCENTILE.findall(text)}
    for needed in (50.0, 99.0):
        if needed not in latency:
            raise WrkOutputError(f"no {needed:g}% latency line in wrk output (was wrk run with --latency?)")
    socket_errors = _SOCKET_ERRORS.search(text)
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests=int(requests.group(1)),
        duration_s=time_to_us(requests.group(2), requests.group(3)) / 1e6,
        rps=float(rps.group(1)),
        latency_us=latency,
        socket_errors=sum(int(g) for g in socket_errors.groups()) if socket_errors else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )
