"""The benchmark harness's own parts, on real processes: the wrk output parser fed by real
wrk runs against a tiny real server, the /proc CPU/RSS sampler against processes whose
usage is known, and bench/run.py's discovery, error rows and exit status.

No speed is asserted here: benchmarks report numbers, tests check the measuring is right.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from conftest import need

BENCH = Path(__file__).resolve().parent.parent / "bench"
BODY = b"b" * 400


def load_bench_module(name: str) -> ModuleType:
    """Import bench/<name>.py by path (bench/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_under_test_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


wrk_output = load_bench_module("wrk_output")
proc_sampler = load_bench_module("proc_sampler")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        status = 200 if self.path == "/" else 404
        # One write per response: a separate header write would meet Nagle + delayed ACK.
        head = f"HTTP/1.1 {status} X\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
        self.wfile.write(head + BODY)
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:
        return


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """wrk drops its connections mid-request when its time is up: not an error worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@pytest.fixture
def tiny_server() -> Iterator[int]:
    """A real keep-alive HTTP/1.1 server on 127.0.0.1: 200 on '/', 404 elsewhere."""
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run_wrk(*args: str) -> str:
    need(shutil.which("wrk") is not None, "needs wrk (make bootstrap installs it)")
    done = subprocess.run(["wrk", "-t1", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_wrk_parser_reads_a_real_run(tiny_server: int) -> None:
    text = run_wrk("-c2", "-d1s", "--latency", f"http://127.0.0.1:{tiny_server}/")
    result = wrk_output.parse_wrk_output(text)
    assert result.requests > 0
    assert 0.5 < result.duration_s < 3
    # wrk's Requests/sec is its request count over its own run time.
    assert result.rps == pytest.approx(result.requests / result.duration_s, rel=0.05)
    assert set(result.latency_us) == {50.0, 75.0, 90.0, 99.0}
    assert 0 < result.p50_us <= result.latency_us[75.0] <= result.latency_us[90.0] <= result.p99_us
    assert result.errors == 0


def test_wrk_parser_counts_non_2xx(tiny_server: int) -> None:
    result = wrk_output.parse_wrk_output(
        run_wrk("-c1", "-d1s", "--latency", f"http://127.0.0.1:{tiny_server}/missing")
    )
    assert result.requests > 0
    assert result.non_2xx == result.requests
    assert result.errors == result.requests


def test_wrk_parser_counts_socket_errors() -> None:
    """A server that accepts and hangs up at once: every request is a read error for wrk."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)

    def hang_up() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.close()

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        text = run_wrk("-c2", "-d1s", "--latency", f"http://127.0.0.1:{listener.getsockname()[1]}/")
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
    result = wrk_output.parse_wrk_output(text)
    assert result.requests == 0
    assert result.socket_errors > 0
    assert result.errors == result.socket_errors


def test_wrk_parser_names_what_is_missing(tiny_server: int) -> None:
    text = run_wrk("-c1", "-d1s", f"http://127.0.0.1:{tiny_server}/")  # no --latency
    with pytest.raises(wrk_output.WrkOutputError, match=r"50% latency line.*--latency"):
        wrk_output.parse_wrk_output(text)
    with pytest.raises(wrk_output.WrkOutputError, match="requests in"):
        wrk_output.parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_time_units() -> None:
    assert wrk_output.time_to_us("250.00", "us") == 250
    assert wrk_output.time_to_us("1.50", "ms") == 1500
    assert wrk_output.time_to_us("2.00", "s") == 2_000_000
    assert wrk_output.time_to_us("1.00", "m") == 60_000_000


BURN = """
import sys, time
while time.process_time() < float(sys.argv[1]):
    pass
print(time.process_time(), flush=True)
sys.stdin.read()
"""


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)


def _finish(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=10)


def test_cpu_sampler_matches_the_process_own_clock() -> None:
    tick = 1 / proc_sampler.CLOCK_TICKS_PER_S
    proc = _spawn(BURN, "0.3")
    try:
        assert proc.stdout is not None
        own = float(proc.stdout.readline())
        sampled = proc_sampler.tree_cpu_seconds(proc.pid)
    finally:
        _finish(proc)
    assert own >= 0.3
    assert sampled == pytest.approx(own, abs=3 * tick)


def test_cpu_sampler_counts_children_alive_and_reaped() -> None:
    parent_code = f"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", {BURN!r}, "0.3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
print(child.pid, child.stdout.readline().strip(), flush=True)
sys.stdin.readline()
child.stdin.close(); child.wait()
print("reaped", flush=True)
sys.stdin.read()
"""
    tick = 1 / proc_sampler.CLOCK_TICKS_PER_S
    parent = _spawn(parent_code)
    try:
        assert parent.stdout is not None and parent.stdin is not None
        child_pid, child_cpu = parent.stdout.readline().split()
        assert proc_sampler.process_tree(parent.pid) == [parent.pid, int(child_pid)]
        alive = proc_sampler.tree_cpu_seconds(parent.pid)
        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "reaped"
        after_reap = proc_sampler.tree_cpu_seconds(parent.pid)
        assert proc_sampler.process_tree(parent.pid) == [parent.pid]
    finally:
        _finish(parent)
    # /proc rounds utime and stime down to a tick each; the parent's own start-up time comes on top.
    assert alive >= float(child_cpu) - 2 * tick
    assert after_reap >= alive - tick  # the reaped child's time moved to the parent's cutime


def test_machine_busy_time_includes_a_busy_process() -> None:
    """Other work may add to the machine's busy time, never subtract: the burn is a lower bound."""
    tick = 1 / proc_sampler.CLOCK_TICKS_PER_S
    before = proc_sampler.machine_busy_seconds()
    proc = _spawn(BURN, "0.3")
    try:
        assert proc.stdout is not None
        own = float(proc.stdout.readline())
        after = proc_sampler.machine_busy_seconds()
    finally:
        _finish(proc)
    assert after - before >= own - 2 * tick


def test_rss_sampler_sees_allocation_and_keeps_the_peak() -> None:
    code = """
import sys
block = bytearray(64 * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
print("big", flush=True)
sys.stdin.readline()
del block
print("small", flush=True)
sys.stdin.read()
"""
    proc = _spawn(code)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "big"
        big = proc_sampler.tree_rss_bytes(proc.pid)
        big_pss = proc_sampler.tree_pss_bytes(proc.pid)
        proc.stdin.write("free\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "small"
        small = proc_sampler.tree_rss_bytes(proc.pid)
        peak = proc_sampler.tree_rss_bytes(proc.pid, peak=True)
    finally:
        _finish(proc)
    assert big >= 64 * 1024 * 1024
    assert big_pss >= 64 * 1024 * 1024  # private pages count whole in PSS too
    assert small < big - 32 * 1024 * 1024
    assert peak >= 64 * 1024 * 1024  # VmHWM: the peak survives the free (the kernel updates it lazily)


def test_pin_tree_moves_every_thread() -> None:
    code = """
import sys, threading
threading.Thread(target=sys.stdin.read, daemon=True).start()
print("up", flush=True)
threading.Event().wait(30)
"""
    cpu = min(os.sched_getaffinity(0))
    proc = _spawn(code)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "up"
        proc_sampler.pin_tree(proc.pid, {cpu})
        tids = [int(t.name) for t in Path(f"/proc/{proc.pid}/task").iterdir()]
        assert len(tids) == 2
        assert all(os.sched_getaffinity(tid) == {cpu} for tid in tids)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_sampler_names_a_missing_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=10)
    with pytest.raises(ProcessLookupError, match=str(proc.pid)):
        proc_sampler.tree_cpu_seconds(proc.pid)


GOOD_BENCH = """
def rows():
    return [{"bench": "good", "metric": "speed", "value": 2.0, "unit": "x", "baseline": "slow",
             "baseline_value": 4.0, "ratio": 0.5, "target": ">= 1x", "ok": False},
            {"bench": "good", "metric": "info", "value": 3, "unit": "req", "baseline": "-",
             "baseline_value": float("nan"), "ratio": float("nan"), "target": "-", "ok": True}]
"""


def _run_harness(bench_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH / "run.py"), "--bench-dir", str(bench_dir), *args],
                          capture_output=True, text=True, timeout=60)


def test_harness_reports_crashes_and_keeps_going(tmp_path: Path) -> None:
    (tmp_path / "bench_good.py").write_text(GOOD_BENCH)
    (tmp_path / "bench_crash.py").write_text("def rows():\n    raise RuntimeError('no nginx here')\n")
    (tmp_path / "bench_shape.py").write_text("def rows():\n    return [{'bench': 'shape', 'metric': 'x'}]\n")
    (tmp_path / "helper.py").write_text("raise SystemExit('helpers are not benchmarks')\n")
    out = tmp_path / "rows.json"
    done = _run_harness(tmp_path, "--json", str(out))
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert any("ERROR: RuntimeError: no nginx here" in line for line in lines)
    assert any("ERROR: MalformedRowError: bench_shape.py: row 0 (x) lacks key 'value'" in line for line in lines)
    speed = next(line for line in lines if " speed " in line)
    assert speed.split() == ["good", "speed", "2.00", "x", "slow", "4.00", "0.50x", ">=", "1x", "NO"]
    info = next(line for line in lines if " info " in line)
    assert info.split() == ["good", "info", "3", "req", "-", "-", "-", "-", "yes"]
    assert "crashed: bench_crash.py, bench_shape.py" in done.stdout
    rows = json.loads(out.read_text())
    assert [r["bench"] for r in rows] == ["crash", "good", "good", "shape"]
    assert rows[2]["baseline_value"] is None and rows[2]["value"] == 3


def test_harness_exit_zero_when_targets_are_missed_but_nothing_crashed(tmp_path: Path) -> None:
    (tmp_path / "bench_good.py").write_text(GOOD_BENCH)
    (tmp_path / "bench_crash.py").write_text("def rows():\n    raise RuntimeError('not selected')\n")
    done = _run_harness(tmp_path, "--only", "good")
    assert done.returncode == 0, done.stderr
    assert "NO" in done.stdout.split()  # the missed target is shown, not hidden
    assert "not selected" not in done.stdout
    unknown = _run_harness(tmp_path, "--only", "nope")
    assert unknown.returncode == 2
    assert "no such benchmark (found: crash, good)" in unknown.stderr



server_processes = load_bench_module("server_processes")


def test_bench_proxy_config_is_a_valid_model_config() -> None:
    """The YAML the proxy benchmark hands to meshbox-proxy --config parses and validates in the shared model."""
    from meshbox.api.loader import parse_proxy_config
    from meshbox.api.v1 import proxy_config_pb2

    config = parse_proxy_config(server_processes.meshbox_proxy_config(18080, 19090), source="bench.yaml")
    (listener,) = config.listeners
    assert (listener.address, listener.port, listener.bind) == ("127.0.0.1", 18080, True)
    assert listener.protocol == proxy_config_pb2.HTTP
    (endpoints,) = config.endpoints
    assert [(e.address, e.port) for e in endpoints.endpoints] == [("127.0.0.1", 19090)]
    assert config.route_configs[0].virtual_hosts[0].domains == ["*"]


def test_nginx_templates_serve_and_stop(tmp_path: Path) -> None:
    """The backend and reverse-proxy templates run on real nginx, pinned, and stop by PID."""
    need(shutil.which("nginx") is not None, "needs nginx (make bootstrap installs nginx-light)")
    need(shutil.which("taskset") is not None, "needs taskset (util-linux)")
    tmp_path.chmod(0o755)  # nginx workers run unprivileged when the master is root
    cpu = min(os.sched_getaffinity(0))
    body = "x" * 399 + "\\n"
    backend = server_processes.start_nginx("backend", "backend.conf", tmp_path, {cpu}, BODY=body)
    proxy = None
    try:
        assert server_processes.wait_until_serving(backend) == b"x" * 399 + b"\n"
        assert os.sched_getaffinity(backend.pid) == {cpu}
        proxy = server_processes.start_nginx("reverse-proxy", "reverse_proxy.conf", tmp_path, {cpu},
                                             UPSTREAM_PORT=backend.port)
        assert server_processes.wait_until_serving(proxy) == b"x" * 399 + b"\n"
    finally:
        for server in (proxy, backend):
            if server is not None:
                server.stop()
    assert backend.proc.returncode is not None and proxy is not None and proxy.proc.returncode is not None
    assert server_processes.count_lines(tmp_path / "reverse-proxy-access.log") >= 1
    with pytest.raises(ValueError, match=r"placeholders not filled: \['@UPSTREAM_PORT@'\]"):
        server_processes.start_nginx("bad", "reverse_proxy.conf", tmp_path, {cpu})


def test_proxy_inprocess_relays_exchanges_and_reports_a_time() -> None:
    """bench/proxy_inprocess.py drives the real proxy protocols with in-memory transports: it checks
    that each exchange was relayed (request upstream, response with its body to the client) before
    timing, so a broken hot path fails here rather than printing a number."""
    done = subprocess.run([sys.executable, str(BENCH / "proxy_inprocess.py"), "--requests", "300", "--rounds", "2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    value = float(done.stdout.split()[0])
    assert 0 < value < 10_000, done.stdout
