"""The mesh's pictures as PromQL over Istio's standard metrics, and their results shaped for the page.

Edges come from the source proxies' reports (``reporter="source"``): since endpoints carry their workload,
those name both ends. Errors are 5xx answers. Latencies are quantiles of the duration histogram.
Pure functions build the queries and shape the samples; :func:`graph` and :func:`workload_signals` ask.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from meshbox.ctl.dashboard.prometheus_api import Prometheus, Sample, Series, finite

_WINDOW = re.compile(r"^[1-9][0-9]{0,3}[smh]$")
# A Kubernetes namespace and workload name: DNS labels/subdomains ("unknown" is one too).
_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")
EDGE = ("source_workload_namespace", "source_workload", "destination_workload_namespace", "destination_workload")
ERRORS = 'response_code=~"5.."'


class BadQuery(ValueError):
    """A window or workload id the API cannot use; the message says what is wrong."""


def check_window(window: str) -> str:
    """A PromQL range such as 30s, 1m, 2h."""
    if not _WINDOW.match(window):
        raise BadQuery(f"window {window!r}: give a duration such as 30s, 1m or 1h")
    return window


def parse_workload(workload_id: str) -> tuple[str, str]:
    """``<namespace>/<workload>`` → (namespace, workload)."""
    namespace, sep, name = workload_id.partition("/")
    if not sep or not _NAME.match(namespace) or not _NAME.match(name):
        raise BadQuery(f"workload {workload_id!r}: give <namespace>/<workload> (Kubernetes names)")
    return namespace, name


def _by(labels: tuple[str, ...]) -> str:
    return ", ".join(labels)


def edge_queries(window: str) -> dict[str, str]:
    """rps, errors, p50, p99 per (source, destination) workload pair."""
    selector = '{reporter="source"}'
    rate = f"rate(istio_requests_total{selector}[{window}])"
    errors = f'rate(istio_requests_total{{reporter="source",{ERRORS}}}[{window}])'
    buckets = f"sum by (le, {_by(EDGE)}) (rate(istio_request_duration_milliseconds_bucket{selector}[{window}]))"
    return {
        "rps": f"sum by ({_by(EDGE)}) ({rate})",
        "errors": f"sum by ({_by(EDGE)}) ({errors})",
        "p50": f"histogram_quantile(0.5, {buckets})",
        "p99": f"histogram_quantile(0.99, {buckets})",
    }


def _workload_id(labels: dict[str, str], side: str) -> str:
    return f"{labels.get(f'{side}_workload_namespace', 'unknown')}/{labels.get(f'{side}_workload', 'unknown')}"


def _edge_key(labels: dict[str, str]) -> tuple[str, str]:
    return _workload_id(labels, "source"), _workload_id(labels, "destination")


def shape_graph(results: dict[str, list[Sample]]) -> dict[str, Any]:
    """The /api/graph document from the four edge queries' samples."""
    values: dict[tuple[str, str], dict[str, float | None]] = {}
    for name, samples in results.items():
        for sample in samples:
            values.setdefault(_edge_key(sample.labels), {})[name] = finite(sample.value)
    edges: list[dict[str, Any]] = []
    for (source, destination), v in sorted(values.items()):
        rps = v.get("rps") or 0.0
        errors = v.get("errors") or 0.0
        edges.append({
            "source": source, "destination": destination, "rps": round(rps, 4),
            "error_rate": round(errors / rps, 4) if rps > 0 else 0.0,
            "p50_ms": _ms(v.get("p50")), "p99_ms": _ms(v.get("p99")),
        })
    nodes = sorted({str(e["source"]) for e in edges} | {str(e["destination"]) for e in edges})
    return {"nodes": [{"id": n} for n in nodes], "edges": edges}


def _ms(value: float | None) -> float:
    """A latency for JSON: NaN (no request in the window) becomes 0."""
    return round(value, 3) if value is not None else 0.0


async def graph(prometheus: Prometheus, window: str) -> dict[str, Any]:
    """The live service graph over the last ``window``."""
    queries = edge_queries(check_window(window))
    return shape_graph({name: await prometheus.instant(q) for name, q in queries.items()})


@dataclass(frozen=True)
class Direction:
    """Requests a workload served (as the destination reporter) or sent (as the source reporter)."""

    name: str
    reporter: str
    prefix: str


DIRECTIONS = (Direction("inbound", "destination", "destination"), Direction("outbound", "source", "source"))


def signal_queries(namespace: str, workload: str, window: str) -> dict[str, dict[str, str]]:
    """Per direction: traffic (rps), errors (5xx share), latency (p50, p99) of one workload."""
    out = {}
    for d in DIRECTIONS:
        selector = (f'reporter="{d.reporter}",{d.prefix}_workload_namespace="{namespace}",'
                    f'{d.prefix}_workload="{workload}"')
        rate = f"sum(rate(istio_requests_total{{{selector}}}[{window}]))"
        errors = f"sum(rate(istio_requests_total{{{selector},{ERRORS}}}[{window}]))"
        buckets = f"sum by (le) (rate(istio_request_duration_milliseconds_bucket{{{selector}}}[{window}]))"
        out[d.name] = {
            "rps": rate,
            "error_rate": f"({errors} or vector(0)) / {rate}",
            "p50_ms": f"histogram_quantile(0.5, {buckets})",
            "p99_ms": f"histogram_quantile(0.99, {buckets})",
        }
    return out


def _points(series: list[Series]) -> list[list[float | None]]:
    if not series:
        return []
    return [[t, finite(v)] for t, v in series[0].points]


async def workload_signals(prometheus: Prometheus, workload_id: str, window: str, minutes: int) -> dict[str, Any]:
    """Golden-signal time series of one workload over the last ``minutes``."""
    namespace, workload = parse_workload(workload_id)
    check_window(window)
    if not 1 <= minutes <= 24 * 60:
        raise BadQuery(f"minutes {minutes}: give 1..1440")
    end = time.time()
    start = end - minutes * 60
    step = max(minutes * 60 / 120, 1.0)
    series: dict[str, dict[str, Any]] = {}
    for direction, queries in signal_queries(namespace, workload, window).items():
        series[direction] = {name: _points(await prometheus.range(q, start, end, step))
                             for name, q in queries.items()}
    return {"id": workload_id, "window": window, "start": start, "end": end, "step": step, "series": series}
