"""Route lookup at scale (issue 15): proxy throughput with 1,000 routes against 1 route, in the same run.

Setup (127.0.0.1, free ports): the nginx backend of bench_proxy pinned to the first CPU with wrk; two
meshbox-proxy processes (``--concurrency 1``, compiled standalone proxy) pinned to the second CPU:
``1-route`` (one virtual host ``*`` with one route) and ``1000-routes`` (1,000 virtual hosts
``svc-<i>.bench.svc.cluster.local``, each with one route of the same shape). Every route matches a path
prefix and a header (``x-tenant`` starting with ``t``), as a VirtualService with a header match does.
wrk (``-t1 -c50``) runs a Lua script that sends each request to the next of the 1,000 hosts, with the
header, against both proxies, so the two differ only in the size of the route table. Interleaved
rounds; the row is the median throughput of 1000-routes over that of 1-route, target >= 0.9x; a second
row gives the proxy's CPU time per request (from /proc) of each, without a target.

Before measuring, the 1000-routes proxy is checked to route by host and header: the last host answers
the backend's body, a request without the header gets 404 (no route), so a table that matched nothing
cannot pass. wrk's non-2xx count must be 0. Environment: MESHBOX_BENCH_SECONDS (default 10),
MESHBOX_BENCH_ROUNDS (default 3), MESHBOX_BENCH_ROUTES (default 1000).
"""

from __future__ import annotations

import contextlib
import http.client
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench_proxy import BODY, LOAD_CONNECTIONS, BenchError, _env_int, ensure_tools, pick_cpus, proxy_executable
from proc_sampler import tree_cpu_seconds
from server_processes import ServerProcess, free_port, spawn, start_nginx, wait_until_serving
from wrk_output import WrkResult, parse_wrk_output

RATIO_MIN = 0.9
NAN = float("nan")
HEADER = "x-tenant"


def host(i: int) -> str:
    return f"svc-{i}.bench.svc.cluster.local"


def proxy_config(listen_port: int, backend_port: int, routes: int) -> str:
    """ProxyConfig YAML: ``routes`` virtual hosts of one route each (``routes == 1``: the host ``*``)."""
    route = (f"        routes:\n          - match: {{prefix: /, headers: [{{name: {HEADER}, prefix: t}}]}}\n"
             "            clusters: [{cluster: backend, weight: 1}]\n")
    if routes == 1:
        vhosts = f'      - name: any\n        domains: ["*"]\n{route}'
    else:
        vhosts = "".join(f'      - name: vh{i}\n        domains: ["{host(i)}"]\n{route}' for i in range(routes))
    return (f"listeners:\n  - {{name: bench, direction: OUTBOUND, address: 127.0.0.1, port: {listen_port}, "
            "protocol: HTTP, route_config: bench, bind: true}\n"
            f"route_configs:\n  - name: bench\n    virtual_hosts:\n{vhosts}"
            "clusters:\n  - {name: backend, lb_policy: ROUND_ROBIN, service: backend.bench.svc.cluster.local}\n"
            "endpoints:\n  - cluster_name: backend\n"
            f"    endpoints: [{{address: 127.0.0.1, port: {backend_port}}}]\n")


def wrk_script(routes: int) -> str:
    """Lua for wrk: each request to the next host, with the matching header."""
    return (f"local n = {routes}\nlocal i = 0\n"
            "request = function()\n"
            "  i = (i + 1) % n\n"
            f"  return wrk.format('GET', '/api/items', {{['Host'] = 'svc-' .. i .. '.bench.svc.cluster.local', "
            f"['{HEADER}'] = 't' .. i}})\n"
            "end\n")


def _get(port: int, host_header: str, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/api/items", headers={"Host": host_header, **headers})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _start_proxy(name: str, tmp: Path, cpu: int, backend_port: int, routes: int) -> ServerProcess:
    port, admin = free_port(), free_port()
    config = tmp / f"{name}.yaml"
    config.write_text(proxy_config(port, backend_port, routes))
    argv = [proxy_executable(), "--config", str(config), "--concurrency", "1", "--admin-port", str(admin),
            "--outbound-port", "0"]
    return spawn(name, argv, {cpu}, tmp, port)


def _wrk(port: int, script: Path, seconds: int, cpu: int) -> WrkResult:
    argv = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{LOAD_CONNECTIONS}", f"-d{seconds}s", "--latency",
            "-s", str(script), f"http://127.0.0.1:{port}/"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[:500]}")
    result = parse_wrk_output(done.stdout)
    if result.non_2xx or result.socket_errors:
        raise BenchError(f"wrk against port {port}: {result.non_2xx} non-2xx answers, "
                         f"{result.socket_errors} socket errors")
    return result


def _row(metric: str, value: float, unit: str, *, baseline: str = "-", baseline_value: float = NAN,
         target: str = "-", ok: bool = True) -> dict[str, object]:
    ratio = value / baseline_value if baseline_value > 0 else NAN
    return {"bench": "routes", "metric": metric, "value": value, "unit": unit, "baseline": baseline,
            "baseline_value": baseline_value, "ratio": ratio, "target": target, "ok": ok}


def rows() -> list[dict[str, object]]:
    """Throughput with 1,000 routes over throughput with 1 route."""
    ensure_tools()
    seconds = _env_int("MESHBOX_BENCH_SECONDS", 10, 1)
    rounds = _env_int("MESHBOX_BENCH_ROUNDS", 3, 1)
    many = _env_int("MESHBOX_BENCH_ROUTES", 1000, 2)
    client_cpu, proxy_cpu = pick_cpus()
    rps: dict[str, list[float]] = {"1-route": [], "many": []}
    cpu_us: dict[str, list[float]] = {"1-route": [], "many": []}
    with tempfile.TemporaryDirectory(prefix="meshbox-bench-routes-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        backend = start_nginx("backend", "backend.conf", tmp, {client_cpu}, BODY=BODY.replace("\n", "\\n"))
        stack.callback(backend.stop)
        wait_until_serving(backend)
        script = tmp / "hosts.lua"
        script.write_text(wrk_script(many))
        ports: dict[str, int] = {}
        pids: dict[str, int] = {}
        for key, count in (("1-route", 1), ("many", many)):
            server = _start_proxy(f"meshbox-routes-{key}", tmp, proxy_cpu, backend.port, count)
            stack.callback(server.stop)
            _wait_routed(server)
            ports[key] = server.port
            pids[key] = server.pid
        last = host(many - 1)
        if _get(ports["many"], last, {HEADER: "t1"}) != (200, BODY.encode()):
            raise BenchError(f"{many} routes: {last} with the header did not reach the backend")
        if _get(ports["many"], last, {})[0] != 404:
            raise BenchError(f"{many} routes: a request without {HEADER} was routed (the header match is not in force)")
        for key in ports:
            _wrk(ports[key], script, 1, client_cpu)  # warm-up: the host cache fills
        for r in range(rounds):
            for key in (("1-route", "many") if r % 2 == 0 else ("many", "1-route")):
                before = tree_cpu_seconds(pids[key])
                result = _wrk(ports[key], script, seconds, client_cpu)
                rps[key].append(result.rps)
                cpu_us[key].append((tree_cpu_seconds(pids[key]) - before) * 1e6 / max(result.requests, 1))
    one, more = statistics.median(rps["1-route"]), statistics.median(rps["many"])
    ratio = more / one if one > 0 else NAN
    return [_row(f"meshbox: proxy throughput, {many:,} routes (hosts + header/prefix match)", more, "req/s",
                 baseline="1 route, same run", baseline_value=one, target=f">= {RATIO_MIN:.1f}x",
                 ok=ratio >= RATIO_MIN),
            # The proxy's own CPU per request: less sensitive to other load on the machine than throughput.
            _row(f"meshbox: proxy CPU per request, {many:,} routes", statistics.median(cpu_us["many"]), "us",
                 baseline="1 route, same run", baseline_value=statistics.median(cpu_us["1-route"]))]


def _wait_routed(server: ServerProcess, timeout: float = 60.0) -> None:
    """Until the proxy routes a request to the first host (compiling a large config takes a moment)."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(f"{server.name} exited with code {server.proc.returncode}:\n{server.log_tail()}")
        try:
            status, body = _get(server.port, host(0), {HEADER: "t0"})
        except OSError as exc:
            last = repr(exc)
        else:
            if status == 200:
                return
            last = f"HTTP {status}: {body[:200]!r}"
        time.sleep(0.1)
    raise BenchError(f"{server.name} not routing after {timeout:g}s ({last}):\n{server.log_tail()}")
