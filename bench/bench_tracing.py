"""Tracing's cost (issue 16): proxy CPU per request with tracing on at 100 % sampling against tracing off,
measured in the same run.

Setup (127.0.0.1, free ports): the nginx backend of bench_proxy pinned to the first CPU with wrk; two
meshbox-proxy processes pinned to the second CPU, ``off`` (no tracing flags: trace headers pass through)
and ``on`` (``--trace-socket`` to a Unix datagram socket this process reads and counts, as the agent
would, ``--trace-sampling 100``: every request starts a trace, gets its span, and the span is encoded
and sent). ``wrk -t1 -c50`` in interleaved rounds; CPU from /proc (utime+stime of the proxy's tree).
The row is the median over rounds of CPU µs per request, on / off, with the issue's target of <= 1.15x.
The spans received are checked against the requests served, so a tracer that silently sent nothing
cannot pass. Environment: MESHBOX_BENCH_SECONDS (default 10), MESHBOX_BENCH_ROUNDS (default 3).
"""

from __future__ import annotations

import contextlib
import socket
import statistics
import tempfile
import threading
from pathlib import Path

from bench_proxy import (
    BODY,
    LOAD_CONNECTIONS,
    BenchError,
    Target,
    _env_int,
    _measure,
    ensure_tools,
    pick_cpus,
    proxy_executable,
)
from server_processes import http_get, start_meshbox_proxy, start_nginx, wait_until_serving

CPU_RATIO_MAX = 1.15
NAN = float("nan")


class SpanSink:
    """The agent's end of the span socket, reduced to counting the spans that arrive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.settimeout(0.2)
        self.spans = 0
        self.stopped = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stopped:
            try:
                self.spans += self.sock.recv(1 << 16).count(b"\n")
            except TimeoutError:
                continue

    def close(self) -> None:
        self.stopped = True
        self.thread.join()
        self.sock.close()


def _row(metric: str, value: float, unit: str, *, baseline: str = "-", baseline_value: float = NAN,
         target: str = "-", ok: bool = True) -> dict[str, object]:
    ratio = value / baseline_value if baseline_value > 0 else NAN
    return {"bench": "tracing", "metric": metric, "value": value, "unit": unit, "baseline": baseline,
            "baseline_value": baseline_value, "ratio": ratio, "target": target, "ok": ok}


def rows() -> list[dict[str, object]]:
    """Proxy CPU per request with tracing at 100 % sampling, against tracing off."""
    ensure_tools()
    seconds = _env_int("MESHBOX_BENCH_SECONDS", 10, 1)
    rounds = _env_int("MESHBOX_BENCH_ROUNDS", 3, 1)
    client_cpu, proxy_cpu = pick_cpus()
    with tempfile.TemporaryDirectory(prefix="meshbox-bench-tracing-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        sink = SpanSink(tmp / "spans.sock")
        stack.callback(sink.close)
        backend = start_nginx("backend", "backend.conf", tmp, {client_cpu}, BODY=BODY.replace("\n", "\\n"))
        stack.callback(backend.stop)
        wait_until_serving(backend)
        targets: dict[str, Target] = {}
        for key, args in (("off", []), ("on", ["--trace-socket", str(sink.path), "--trace-sampling", "100"])):
            server = start_meshbox_proxy(f"meshbox-tracing-{key}", proxy_executable(), tmp, {proxy_cpu},
                                         backend.port, args)
            stack.callback(server.stop)
            wait_until_serving(server)
            status, body = http_get(server.port)
            if status != 200 or body != BODY.encode():
                raise BenchError(f"tracing {key}: GET / answered {status}, not the backend's body")
            targets[key] = Target(key=key, port=server.port, server=server, backend_pid=backend.pid,
                                  requests_sent=1)
        for target in targets.values():
            _measure(target, LOAD_CONNECTIONS, 1, client_cpu)  # warm-up
        for r in range(rounds):
            for key in (("off", "on") if r % 2 == 0 else ("on", "off")):
                targets[key].load.append(_measure(targets[key], LOAD_CONNECTIONS, seconds, client_cpu))
        served = targets["on"].requests_sent
        # Spans of the last requests may still be on their way (flushed every 0.2 s).
        for _ in range(20):
            if sink.spans >= served:
                break
            threading.Event().wait(0.1)
        if sink.spans < served * 0.99:
            raise BenchError(f"tracing on: {served} requests served but only {sink.spans} spans received")

    def cpu_us(key: str, kernel: bool = False) -> float:
        return statistics.median((s.proxy_system_cpu_s if kernel else s.proxy_cpu_s) * 1e6 / max(s.wrk.requests, 1)
                                 for s in targets[key].load)

    off, on = cpu_us("off"), cpu_us("on")
    kernel_off, kernel_on = cpu_us("off", kernel=True), cpu_us("on", kernel=True)
    ratio = on / off if off > 0 else NAN
    return [
        _row("meshbox: proxy CPU per request, tracing 100 %", on, "us", baseline="tracing off",
             baseline_value=off, target=f"<= {CPU_RATIO_MAX:.2f}x", ok=ratio <= CPU_RATIO_MAX),
        _row("meshbox: kernel CPU per request, tracing 100 %", kernel_on, "us", baseline="tracing off",
             baseline_value=kernel_off),
        _row("meshbox: spans received (tracing 100 %)", float(sink.spans), "spans"),
    ]
