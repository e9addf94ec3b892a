"""HTTP/2 and gRPC through meshbox-proxy against nginx (issue 14).

Setup (all on 127.0.0.1, free ports, one temporary directory):
- backend: nginx, 1 worker, h2c (bench/nginx/h2_backend.conf): GET /h2 answers a 400-byte body, a POST
  under /meshbox.bench.Echo/ answers like a gRPC server (one message, trailer grpc-status 0);
  pinned with the load generator to the first CPU;
- proxies on the second CPU: ``nginx`` (1 worker, ``listen ... http2`` + ``grpc_pass`` over kept-alive
  upstream connections, access log to a file) and ``meshbox`` (meshbox-proxy --concurrency 1, access log
  = its stdout, to a file);
- load: ``h2load -c10 -m10`` (10 connections of 10 concurrent streams) for S seconds per run, rounds
  interleaved: plain HTTP/2 GETs, then gRPC unary calls (POST, content-type application/grpc, te:
  trailers, a 5-byte message).

Proxy CPU time comes from /proc (utime+stime of the process tree) around each run. Values are medians
over rounds. A call "fails" when h2load counts it failed, errored or timed out, or its status is not 2xx.
Environment: MESHBOX_BENCH_SECONDS (default 10), MESHBOX_BENCH_ROUNDS (default 3).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from proc_sampler import pin_tree, tree_cpu_seconds
from server_processes import ServerProcess, free_port, start_meshbox_proxy, start_nginx

BODY = ("meshbox h2 benchmark backend. " * 14)[:399] + "\n"
NAN = float("nan")
# Targets from issue 14.
RPS_RATIO_MIN = 0.4
GRPC_RATIO_MIN = 0.4
CPU_PER_CALL_RATIO_MAX = 2.5
H2LOAD = ["-c10", "-m10"]
GRPC_PATH = "/meshbox.bench.Echo/Say"
_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                       r"(\d+) errored, (\d+) timeout")
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


class BenchError(RuntimeError):
    """The benchmark cannot run here; the message says what is missing."""


@dataclass
class Run:
    """One h2load run: calls answered 2xx, calls that failed, seconds, proxy CPU seconds."""

    succeeded: int
    failed: int
    seconds: float
    cpu_s: float


@dataclass
class Proxy:
    key: str
    server: ServerProcess
    runs: dict[str, list[Run]] = field(default_factory=lambda: {"h2": [], "grpc": []})


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise BenchError(f"{name} must be a positive integer, got {raw!r}")
    return int(raw)


def ensure_tools() -> None:
    """nginx and h2load (Debian's nghttp2-client, scripts/bootstrap-system.sh) must be on PATH."""
    missing = [tool for tool in ("nginx", "h2load", "taskset") if shutil.which(tool) is None]
    if missing:
        raise BenchError(f"{', '.join(missing)} not found (apt-get install nginx-light nghttp2-client util-linux)")


def parse_h2load(text: str) -> tuple[int, int]:
    """(calls answered 2xx, calls that failed: h2load's "failed" counts non-2xx/3xx answers, errors and
    timeouts) from h2load's summary; BenchError if it has none."""
    requests, status = _REQUESTS.search(text), _STATUS.search(text)
    if requests is None or status is None:
        raise BenchError(f"h2load printed no summary:\n{text[-800:]}")
    failed = int(requests.group(5))
    return int(status.group(1)), failed + int(status.group(2))


def run_h2load(port: int, kind: str, seconds: int, cpu: int, workdir: Path) -> tuple[int, int, float]:
    url = f"http://127.0.0.1:{port}" + ("/h2" if kind == "h2" else GRPC_PATH)
    argv = ["taskset", "-c", str(cpu), "h2load", *H2LOAD, f"-D{seconds}", url]
    if kind == "grpc":
        argv += ["-d", str(workdir / "grpc-request.bin"), "-H", "content-type: application/grpc",
                 "-H", "te: trailers"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    ok, failed = parse_h2load(done.stdout)
    took = re.search(r"finished in ([\d.]+)s", done.stdout)
    return ok, failed, float(took.group(1)) if took else float(seconds)


def _grpc_message(payload: bytes) -> bytes:
    return b"\0" + struct.pack(">I", len(payload)) + payload


def _start(tmp: Path, client_cpu: int, proxy_cpu: int, stack: contextlib.ExitStack) -> list[Proxy]:
    # nginx's workers may run as another user: they need to reach the reply file (and nothing else).
    tmp.chmod(0o711)
    (tmp / "reply").mkdir(mode=0o755)
    reply = tmp / "reply" / "grpc-reply.bin"
    reply.write_bytes(_grpc_message(b"meshbox says hello"))
    reply.chmod(0o644)
    (tmp / "grpc-request.bin").write_bytes(_grpc_message(b"hello"))
    backend = start_nginx("h2-backend", "h2_backend.conf", tmp, {client_cpu}, BODY=BODY.rstrip("\n"),
                          REPLY_PORT=free_port())
    stack.callback(backend.stop)
    nginx = start_nginx("h2-proxy", "h2_proxy.conf", tmp, {proxy_cpu}, UPSTREAM_PORT=backend.port)
    stack.callback(nginx.stop)
    exe = shutil.which("meshbox-proxy", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                               os.environ.get("PATH", "")]))
    if exe is None:
        raise BenchError("meshbox-proxy not installed (make venv installs it into .venv/bin)")
    meshbox = start_meshbox_proxy("meshbox-h2", exe, tmp, {proxy_cpu}, backend.port, [])
    stack.callback(meshbox.stop)
    proxies = [Proxy("nginx", nginx), Proxy("meshbox", meshbox)]
    for proxy in proxies:
        _wait_h2(proxy.server, tmp, client_cpu)
        pin_tree(proxy.server.pid, {proxy_cpu})
    return proxies


def _wait_h2(server: ServerProcess, tmp: Path, cpu: int) -> None:
    """Until ``server`` answers both kinds of call over HTTP/2 (a one-second check run each)."""
    last = ""
    for _ in range(50):
        if server.proc.poll() is not None:
            raise BenchError(f"{server.name} exited with code {server.proc.returncode}:\n{server.log_tail()}")
        try:
            results = [run_h2load(server.port, kind, 1, cpu, tmp) for kind in ("h2", "grpc")]
        except BenchError as exc:
            last = str(exc)
        else:
            if all(ok > 0 and failed == 0 for ok, failed, _ in results):
                return
            last = f"{server.name}: {results} (answered, failed, seconds)"
    raise BenchError(f"{server.name} never served HTTP/2: {last}\n{server.log_tail()}")


def measure(seconds: int, rounds: int) -> list[Proxy]:
    ensure_tools()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise BenchError(f"needs 2 CPUs to pin the load generator and the proxy apart; allowed: {cpus}")
    client_cpu, proxy_cpu = cpus[0], cpus[1]
    with tempfile.TemporaryDirectory(prefix="meshbox-bench-h2-") as tmp, contextlib.ExitStack() as stack:
        proxies = _start(Path(tmp), client_cpu, proxy_cpu, stack)
        for _ in range(rounds):
            for kind in ("h2", "grpc"):
                for proxy in proxies:
                    before = tree_cpu_seconds(proxy.server.pid)
                    ok, failed, took = run_h2load(proxy.server.port, kind, seconds, client_cpu, Path(tmp))
                    if proxy.server.proc.poll() is not None:
                        raise BenchError(f"{proxy.key} exited under load:\n{proxy.server.log_tail()}")
                    proxy.runs[kind].append(Run(ok, failed, took, tree_cpu_seconds(proxy.server.pid) - before))
        return proxies


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else NAN


def _row(metric: str, value: float, unit: str, baseline_value: float, target: str, ok: bool) -> dict[str, object]:
    ratio = value / baseline_value if baseline_value > 0 else NAN
    return {"bench": "h2", "metric": metric, "value": value, "unit": unit, "baseline": "nginx",
            "baseline_value": baseline_value, "ratio": ratio, "target": target, "ok": ok}


def table(proxies: list[Proxy]) -> list[dict[str, object]]:
    by = {p.key: p for p in proxies}
    mesh, nginx = by["meshbox"], by["nginx"]

    def rate(p: Proxy, kind: str) -> float:
        return _median([r.succeeded / r.seconds for r in p.runs[kind]])

    def cpu_us(p: Proxy, kind: str) -> float:
        return _median([r.cpu_s * 1e6 / max(r.succeeded, 1) for r in p.runs[kind]])

    h2_rate, h2_base = rate(mesh, "h2"), rate(nginx, "h2")
    grpc_rate, grpc_base = rate(mesh, "grpc"), rate(nginx, "grpc")
    cpu, cpu_base = cpu_us(mesh, "grpc"), cpu_us(nginx, "grpc")
    failed = sum(r.failed for runs in mesh.runs.values() for r in runs)
    failed_base = sum(r.failed for runs in nginx.runs.values() for r in runs)
    return [
        _row("meshbox: HTTP/2 requests/s (h2load -c10 -m10)", h2_rate, "req/s", h2_base,
             f">= {RPS_RATIO_MIN}x", h2_rate >= RPS_RATIO_MIN * h2_base),
        _row("meshbox: gRPC unary calls/s (h2load -c10 -m10)", grpc_rate, "calls/s", grpc_base,
             f">= {GRPC_RATIO_MIN}x", grpc_rate >= GRPC_RATIO_MIN * grpc_base),
        _row("meshbox: proxy CPU per gRPC call", cpu, "us", cpu_base, f"<= {CPU_PER_CALL_RATIO_MAX}x",
             cpu <= CPU_PER_CALL_RATIO_MAX * cpu_base),
        _row("meshbox: failed HTTP/2 requests and gRPC calls", failed, "calls", failed_base, "0", failed == 0),
    ]


def rows() -> list[dict[str, object]]:
    """The benchmark's rows (bench/run.py calls this)."""
    return table(measure(_env_int("MESHBOX_BENCH_SECONDS", 10), _env_int("MESHBOX_BENCH_ROUNDS", 3)))
