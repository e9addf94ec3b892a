"""The metrics benchmark of issue 16: one scrape of a proxy that has served 1,000 clusters.

A real ``meshbox-proxy`` (its config from a file: one bound HTTP listener, one virtual host and cluster
per service, every cluster's endpoint a loopback backend in this process) gets one request per cluster,
so its metrics hold 1,000 request series with their duration histograms (21 buckets each). Then its admin
``GET /stats/prometheus`` is timed, SCRAPES times, on a fresh connection each (as Prometheus scrapes).

Baseline, measured in the same run: the same scrape of a proxy that served one cluster, i.e. the fixed
cost of a scrape. The target is the issue's absolute one: a scrape of the 1,000-cluster proxy in < 50 ms
(the median). Environment: MESHBOX_BENCH_METRICS_CLUSTERS (default 1000), MESHBOX_BENCH_METRICS_SCRAPES
(default 20).
"""

from __future__ import annotations

import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from server_processes import stop_process

CLUSTERS = int(os.environ.get("MESHBOX_BENCH_METRICS_CLUSTERS", "1000"))
SCRAPES = int(os.environ.get("MESHBOX_BENCH_METRICS_SCRAPES", "20"))
TARGET_MS = 50.0


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # head and body go out in two writes: no 40 ms delayed-ACK stall

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(clusters: int, listen: int, backend: int) -> str:
    lines = ["listeners:",
             f'- {{name: out, direction: OUTBOUND, address: 127.0.0.1, port: {listen}, protocol: HTTP, '
             'route_config: "80", bind: true}',
             "route_configs:", '- name: "80"', "  virtual_hosts:"]
    for i in range(clusters):
        lines.append(f'  - {{name: s{i}, domains: ["s{i}"], routes: [{{clusters: [{{cluster: c{i}, weight: 1}}]}}]}}')
    lines.append("clusters:")
    lines += [f"- {{name: c{i}, service: s{i}.default.svc.cluster.local}}" for i in range(clusters)]
    lines.append("endpoints:")
    for i in range(clusters):
        lines.append(f"- {{cluster_name: c{i}, endpoints: [{{address: 127.0.0.1, port: {backend}, "
                     f"workload: {{name: s{i}, namespace: default}}}}]}}")
    return "\n".join(lines) + "\n"


def _wait_ready(admin: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"meshbox-proxy exited {proc.returncode}")
        try:
            if _get(admin, "/ready")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError("meshbox-proxy not ready")


def _get(port: int, path: str, host: str = "localhost") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"host": host})
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def _scrape_ms(clusters: int, backend: int, tmp: Path) -> tuple[float, int]:
    """Median scrape time of a proxy that served ``clusters`` clusters, and the exposition's size."""
    listen, admin = _free_port(), _free_port()
    config = tmp / f"proxy-{clusters}.yaml"
    config.write_text(_config(clusters, listen, backend))
    proc = subprocess.Popen([sys.executable, "-m", "meshbox.proxy", "--config", str(config), "--admin-port",
                             str(admin), "--outbound-port", "0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "POD_NAME": "bench-5f7b9c8d4-x2x9z",
                                                            "POD_NAMESPACE": "default"})
    try:
        _wait_ready(admin, proc)
        conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=30)
        for i in range(clusters):
            conn.request("GET", "/", headers={"host": f"s{i}"})
            reply = conn.getresponse()
            reply.read()
            if reply.status != 200:
                raise RuntimeError(f"request to s{i} answered {reply.status}")
        conn.close()
        times, size = [], 0
        for _ in range(SCRAPES):
            start = time.perf_counter()
            status, body = _get(admin, "/stats/prometheus")
            times.append((time.perf_counter() - start) * 1000)
            if status != 200 or body.count(b"istio_requests_total{") != clusters:
                raise RuntimeError(f"scrape: HTTP {status}, {body.count(b'istio_requests_total{')} request series")
            size = len(body)
        return statistics.median(times), size
    finally:
        stop_process(proc, 15)


def rows() -> list[dict[str, Any]]:
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    try:
        with tempfile.TemporaryDirectory(prefix="meshbox-bench-metrics-") as tmp:
            base_ms, _ = _scrape_ms(1, backend.server_address[1], Path(tmp))
            value_ms, size = _scrape_ms(CLUSTERS, backend.server_address[1], Path(tmp))
    finally:
        backend.shutdown()
        backend.server_close()
    return [{"bench": "metrics", "metric": f"scrape of a proxy with {CLUSTERS} clusters ({size // 1024} KiB), median",
             "value": value_ms, "unit": "ms", "baseline": "same scrape, 1 cluster", "baseline_value": base_ms,
             "ratio": value_ms / base_ms, "target": f"< {TARGET_MS:g} ms", "ok": value_ms < TARGET_MS}]
