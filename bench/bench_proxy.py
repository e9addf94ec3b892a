"""The proxy benchmark of issue 5: meshbox-proxy against nginx as a reverse proxy.

Setup (all on 127.0.0.1, free ports, one temporary directory):
- backend: nginx, 1 worker, a fixed 400-byte body, pinned with wrk to the first CPU;
- targets, each driven by ``wrk -t1 -c50 -d<S>s --latency`` in interleaved rounds:
  ``direct`` (wrk → backend), ``nginx`` (1-worker reverse proxy with upstream keepalive,
  access log to a file), ``meshbox`` (meshbox-proxy --concurrency 1, default codec,
  access log = its stdout, redirected to a file) and ``meshbox-h11`` (same, --codec h11);
  the proxies are pinned to the second CPU;
- then a 1-connection phase with every process on the first CPU (a sidecar shares its
  pod's core), giving each proxy's added p50 over direct.

Proxy CPU time comes from /proc/<pid>/stat (utime+stime of the process tree) sampled
around each wrk run; RSS is the tree's peak (VmHWM). Values are medians over rounds.
Environment: MESHBOX_BENCH_SECONDS (default 10, the -c50 run length; the -c1 runs take a
third of it), MESHBOX_BENCH_ROUNDS (default 3), MESHBOX_BENCH_TARGETS (comma list, default
all four), MESHBOX_BENCH_PROFILE=DIR (after the measured rounds, record a py-spy profile of
each meshbox proxy under load into DIR/<target>.folded).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from proc_sampler import (
    machine_busy_seconds,
    pin_tree,
    tree_cpu_seconds,
    tree_cpu_split,
    tree_pss_bytes,
    tree_rss_bytes,
)
from server_processes import (
    ServerProcess,
    count_lines,
    first_line,
    http_get,
    start_meshbox_proxy,
    start_nginx,
    wait_until_serving,
)
from wrk_output import WrkResult, parse_wrk_output

ALL_TARGETS = ("direct", "nginx", "meshbox", "meshbox-h11")
LOAD_CONNECTIONS = 50
# About the size of an echoserver reply; the benchmark checks every path returns it intact.
BODY = ("meshbox proxy benchmark backend. " * 13)[:399] + "\n"
NAN = float("nan")
# Targets from issue 5.
RPS_RATIO_MIN = 0.50
CPU_US_PER_REQUEST_MAX = 30.0
ADDED_P50_RATIO_MAX = 2.0
RSS_MB_MAX = 25.0
ENVOY_LOG_LINE = re.compile(r'^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "GET / HTTP/1\.1" 200 ')


class BenchError(RuntimeError):
    """The benchmark cannot run here; the message says what is missing."""


@dataclass
class LoadSample:
    """One wrk run against a target, with CPU seconds used over the same span."""

    wrk: WrkResult
    proxy_cpu_s: float
    proxy_system_cpu_s: float  # the kernel's share of proxy_cpu_s (socket calls)
    wall_s: float
    # CPU time of everything else on the machine (other users' work, kernel threads): noise.
    others_cpu_s: float


@dataclass
class Target:
    """One way of reaching the backend, with everything measured through it."""

    key: str
    port: int
    server: ServerProcess | None  # the proxy under test; None for direct
    backend_pid: int
    load: list[LoadSample] = field(default_factory=list)
    single: list[WrkResult] = field(default_factory=list)
    requests_sent: int = 0
    rss_peak_bytes: int = 0
    pss_bytes: int = 0


def _env_int(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BenchError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise BenchError(f"{name} must be >= {minimum}, got {value}")
    return value


def _selected_targets() -> list[str]:
    raw = os.environ.get("MESHBOX_BENCH_TARGETS", "")
    chosen = [t.strip() for t in raw.split(",") if t.strip()] or list(ALL_TARGETS)
    unknown = [t for t in chosen if t not in ALL_TARGETS]
    if unknown:
        raise BenchError(f"MESHBOX_BENCH_TARGETS: unknown {unknown} (known: {', '.join(ALL_TARGETS)})")
    return [t for t in ALL_TARGETS if t in chosen]


def ensure_tools() -> None:
    """Install nginx and wrk from apt when missing (root only); taskset comes with util-linux."""
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if missing:
        if os.geteuid() != 0:
            raise BenchError(f"{' and '.join(missing)} missing; installing needs root: apt-get install nginx-light wrk")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-q"],
                     ["apt-get", "install", "-y", "-q", "--no-install-recommends", "nginx-light", "wrk"]):
            done = subprocess.run(argv, capture_output=True, text=True, env=env)
            if done.returncode != 0:
                raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-500:]}")
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found on PATH")


def pick_cpus() -> tuple[int, int]:
    """(client CPU, proxy CPU): the first two CPUs this process may run on."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise BenchError(f"needs 2 CPUs to pin the load generator and the proxy apart; allowed CPUs: {cpus}")
    return cpus[0], cpus[1]


def proxy_executable() -> str:
    """meshbox-proxy from the venv that runs the benchmark, else from PATH."""
    beside = Path(sys.executable).parent / "meshbox-proxy"
    found = str(beside) if beside.exists() else shutil.which("meshbox-proxy")
    if found is None:
        raise BenchError("meshbox-proxy not installed (make venv installs it into .venv/bin)")
    return found


def run_wrk(port: int, connections: int, seconds: int, cpu: int) -> WrkResult:
    """One wrk run pinned to cpu; wrk's own failure is an error carrying its stderr."""
    argv = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
            f"http://127.0.0.1:{port}/"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[:500]}")
    return parse_wrk_output(done.stdout)


def _own_cpu_seconds() -> float:
    """This process's CPU time plus that of its reaped children (each finished wrk)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def _check_alive(target: Target) -> None:
    server = target.server
    if server is not None and server.proc.poll() is not None:
        raise BenchError(f"{target.key} exited with code {server.proc.returncode} under load:\n{server.log_tail()}")


def _measure(target: Target, connections: int, seconds: int, cpu: int) -> LoadSample:
    def cpu_now() -> tuple[float, float, float, float, float]:
        _check_alive(target)
        user, system = tree_cpu_split(target.server.pid) if target.server else (0.0, 0.0)
        return user, system, tree_cpu_seconds(target.backend_pid), _own_cpu_seconds(), machine_busy_seconds()

    before = cpu_now()
    started = time.monotonic()
    try:
        result = run_wrk(target.port, connections, seconds, cpu)
    except BenchError:
        _check_alive(target)  # a dead proxy is the better explanation
        raise
    wall = time.monotonic() - started
    user, system, backend, own, machine = (b - a for a, b in zip(before, cpu_now(), strict=True))
    target.requests_sent += result.requests
    return LoadSample(wrk=result, proxy_cpu_s=user + system, proxy_system_cpu_s=system, wall_s=wall,
                      others_cpu_s=machine - user - system - backend - own)


def _start_targets(keys: list[str], tmp: Path, client_cpu: int, proxy_cpu: int,
                   stack: contextlib.ExitStack) -> dict[str, Target]:
    backend = start_nginx("backend", "backend.conf", tmp, {client_cpu}, BODY=BODY.replace("\n", "\\n"))
    stack.callback(backend.stop)
    wait_until_serving(backend)
    targets: dict[str, Target] = {}
    for key in keys:
        server: ServerProcess | None = None
        if key == "nginx":
            server = start_nginx("reverse-proxy", "reverse_proxy.conf", tmp, {proxy_cpu}, UPSTREAM_PORT=backend.port)
        elif key.startswith("meshbox"):
            codec = ["--codec", "h11"] if key == "meshbox-h11" else []
            server = start_meshbox_proxy(key, proxy_executable(), tmp, {proxy_cpu}, backend.port, codec)
        if server is not None:
            stack.callback(server.stop)
        targets[key] = Target(key=key, port=server.port if server else backend.port, server=server,
                              backend_pid=backend.pid)
    for target in targets.values():
        if target.server:
            wait_until_serving(target.server)
        status, body = http_get(target.port)
        target.requests_sent += 1
        if status != 200 or body != BODY.encode():
            raise BenchError(f"{target.key}: GET / answered {status} with {len(body)} bytes, not the backend's body")
    return targets


def _rotated(items: list[Target], by: int) -> list[Target]:
    by %= len(items)
    return items[by:] + items[:by]


def _profile(targets: dict[str, Target], seconds: int, client_cpu: int, out_dir: Path) -> None:
    """Record a py-spy profile (collapsed stacks) of each meshbox proxy under the -c50 load.

    Runs after the measured rounds, so sampling costs them nothing.
    """
    beside = Path(sys.executable).parent / "py-spy"
    py_spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if py_spy is None:
        raise BenchError("MESHBOX_BENCH_PROFILE needs py-spy (pip install -r requirements-dev.txt)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for target in targets.values():
        if target.server is None or not target.key.startswith("meshbox"):
            continue
        out = out_dir / f"{target.key}.folded"
        spy = subprocess.Popen(
            ["taskset", "-c", str(client_cpu), py_spy, "record", "--pid", str(target.server.pid), "--subprocesses",
             "--rate", "250", "--duration", str(seconds), "--format", "raw", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        try:
            _measure(target, LOAD_CONNECTIONS, seconds, client_cpu)
            _, err = spy.communicate(timeout=seconds + 30)
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
        if spy.returncode != 0:
            raise BenchError(f"py-spy failed on {target.key}: {err.strip()[-500:]}")
        print(f"bench_proxy: profile of {target.key} in {out}", file=sys.stderr)


def _run_rounds(targets: dict[str, Target], seconds: int, rounds: int, client_cpu: int,
                profile_dir: Path | None) -> None:
    order = list(targets.values())
    for target in order:  # warm-up: connection pools, caches, first-request imports
        _measure(target, LOAD_CONNECTIONS, 1, client_cpu)
    for r in range(rounds):
        for target in _rotated(order, r):
            target.load.append(_measure(target, LOAD_CONNECTIONS, seconds, client_cpu))
    if profile_dir is not None:
        _profile(targets, seconds, client_cpu, profile_dir)
    for target in order:
        if target.server:
            target.rss_peak_bytes = tree_rss_bytes(target.server.pid, peak=True)
            target.pss_bytes = tree_pss_bytes(target.server.pid)
            pin_tree(target.server.pid, {client_cpu})  # one shared core from here on
    single_seconds = max(1, round(seconds / 3))
    for r in range(rounds):
        for target in _rotated(order, r):
            target.single.append(_measure(target, 1, single_seconds, client_cpu).wrk)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else NAN


def _row(metric: str, value: float, unit: str, *, baseline: str = "-", baseline_value: float = NAN,
         target: str = "-", ok: bool = True) -> dict[str, object]:
    ratio = value / baseline_value if baseline_value > 0 else NAN  # NaN compares False: no baseline
    return {"bench": "proxy", "metric": metric, "value": value, "unit": unit, "baseline": baseline,
            "baseline_value": baseline_value, "ratio": ratio, "target": target, "ok": ok}


def _cpu_us_per_request(sample: LoadSample) -> float:
    return sample.proxy_cpu_s * 1e6 / max(sample.wrk.requests, 1)


def _load_median(pick: Callable[[LoadSample], float]) -> Callable[[Target, dict[str, Target]], float]:
    return lambda target, _: _median([pick(s) for s in target.load])


def _proxy_only(measure: Callable[[Target, dict[str, Target]], float]) -> Callable[[Target, dict[str, Target]], float]:
    return lambda target, targets: measure(target, targets) if target.server else NAN


def _added_p50_us(target: Target, targets: dict[str, Target]) -> float:
    """Median over rounds of (p50 through the target - p50 direct), both at one connection on one core."""
    direct = targets.get("direct")
    if direct is None or target.server is None:
        return NAN
    return _median([t.p50_us - d.p50_us for t, d in zip(target.single, direct.single, strict=True)])


@dataclass(frozen=True)
class Metric:
    """A measured quantity; target/check (value, ratio to baseline) apply to the default meshbox proxy."""

    name: str
    unit: str
    measure: Callable[[Target, dict[str, Target]], float]
    target: str = "-"
    check: Callable[[float, float], bool] | None = None


METRICS = (
    Metric(f"throughput, -c{LOAD_CONNECTIONS}", "req/s", _load_median(lambda s: s.wrk.rps),
           f">= {RPS_RATIO_MIN:.2f}x", lambda value, ratio: ratio >= RPS_RATIO_MIN),
    Metric(f"latency p50, -c{LOAD_CONNECTIONS}", "us", _load_median(lambda s: s.wrk.p50_us)),
    Metric(f"latency p99, -c{LOAD_CONNECTIONS}", "us", _load_median(lambda s: s.wrk.p99_us)),
    Metric("proxy CPU per request", "us", _proxy_only(_load_median(_cpu_us_per_request)),
           f"<= {CPU_US_PER_REQUEST_MAX:g} us", lambda value, ratio: value <= CPU_US_PER_REQUEST_MAX),
    Metric("proxy CPU per request, kernel part", "us",
           _proxy_only(_load_median(lambda s: s.proxy_system_cpu_s * 1e6 / max(s.wrk.requests, 1)))),
    Metric(f"proxy CPU busy, -c{LOAD_CONNECTIONS}", "%",
           _proxy_only(_load_median(lambda s: 100 * s.proxy_cpu_s / s.wall_s))),
    Metric("proxy RSS peak (process tree)", "MB", _proxy_only(lambda t, _: t.rss_peak_bytes / 1e6),
           f"<= {RSS_MB_MAX:g} MB", lambda value, ratio: value <= RSS_MB_MAX),
    Metric("proxy PSS after the load (process tree)", "MB", _proxy_only(lambda t, _: t.pss_bytes / 1e6)),
    Metric("added p50, -c1, one shared core", "us", _added_p50_us,
           f"<= {ADDED_P50_RATIO_MAX:g}x", lambda value, ratio: ratio <= ADDED_P50_RATIO_MAX),
)


def _reference(key: str, targets: dict[str, Target]) -> Target | None:
    """What a target is compared with: nginx for the meshbox proxies, direct for nginx."""
    wanted = "nginx" if key.startswith("meshbox") else "direct" if key == "nginx" else None
    return targets.get(wanted) if wanted else None


def _access_log_row(target: Target) -> dict[str, object]:
    """Lines logged per request sent: 1.0, or a little more (requests cut off at wrk's end), when logging is on."""
    assert target.server is not None
    meshbox = target.key.startswith("meshbox")
    log = target.server.stdout_path if meshbox else target.server.stdout_path.with_name("reverse-proxy-access.log")
    per_request = count_lines(log) / max(target.requests_sent, 1)
    if not meshbox:
        return _row(f"{target.key}: access log lines per request", per_request, "x")
    line = first_line(log)
    envoy_format = bool(ENVOY_LOG_LINE.match(line))
    if not envoy_format:
        print(f"bench_proxy: {target.key}'s first access log line is not in Envoy's format: {line[:200]!r}",
              file=sys.stderr)
    return _row(f"{target.key}: access log lines per request (Envoy format)", per_request, "x",
                target=">= 1.00, Envoy format", ok=per_request >= 1.0 and envoy_format)


def _rows(targets: dict[str, Target]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for target in targets.values():
        reference = _reference(target.key, targets)
        for metric in METRICS:
            value = metric.measure(target, targets)
            if math.isnan(value):
                continue
            base = metric.measure(reference, targets) if reference else NAN
            checked = target.key == "meshbox" and metric.check is not None
            ok = metric.check(value, value / base if base > 0 else NAN) if metric.check and checked else True
            rows.append(_row(f"{target.key}: {metric.name}", value, metric.unit,
                             baseline=reference.key if reference and not math.isnan(base) else "-",
                             baseline_value=base, target=metric.target if checked else "-", ok=ok))
        errors = sum(s.wrk.errors for s in target.load) + sum(w.errors for w in target.single)
        rows.append(_row(f"{target.key}: failed requests (socket errors + non-2xx)", errors, "req",
                         target="== 0", ok=errors == 0))
        if target.server is not None:
            rows.append(_access_log_row(target))
    if "meshbox" in targets:
        from meshbox.proxy.hot_path import HOT_PATH, compiled_modules

        compiled = len(compiled_modules())
        rows.append(_row("meshbox: hot-path modules running compiled (mypyc)", compiled, "modules",
                         target=f"== {len(HOT_PATH)}", ok=compiled == len(HOT_PATH)))
    others = _median([100 * s.others_cpu_s / s.wall_s for t in targets.values() for s in t.load])
    rows.append(_row(f"machine: CPU used by other processes during -c{LOAD_CONNECTIONS} runs", others,
                     "% of a core"))
    return rows


def rows() -> list[dict[str, object]]:
    """Run the benchmark and return its rows: about targets x (1 + rounds x 1.33 x MESHBOX_BENCH_SECONDS) s."""
    seconds = _env_int("MESHBOX_BENCH_SECONDS", 10, 1)
    rounds = _env_int("MESHBOX_BENCH_ROUNDS", 3, 1)
    keys = _selected_targets()
    profile = os.environ.get("MESHBOX_BENCH_PROFILE", "")
    profile_dir = Path(profile).resolve() if profile else None
    ensure_tools()
    client_cpu, proxy_cpu = pick_cpus()
    with tempfile.TemporaryDirectory(prefix="meshbox-bench-proxy-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)  # nginx workers run as an unprivileged user
        targets = _start_targets(keys, tmp, client_cpu, proxy_cpu, stack)
        _run_rounds(targets, seconds, rounds, client_cpu, profile_dir)
        stack.close()  # stop every server first, so their logs are flushed before they are counted
        return _rows(targets)
