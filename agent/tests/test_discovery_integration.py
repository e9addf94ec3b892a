"""The real thing end to end: ``meshbox-discovery`` + ``meshbox-agent`` + ``meshbox-proxy`` +
HTTP backends, in a network namespace made for the test.

The namespace stands in for a pod: the client's traffic to the Service's ClusterIP range is
redirected to the proxy's capture port by a real iptables rule (as the init container's would
be), discovery reads a registry directory of Kubernetes-shaped YAML (a Service, its pods
v1 and v2, the client pod, RouteRules), and the two backend "pods" listen on their own pod
IPs. Everything binds its well-known port inside the namespace, so nothing collides with
tests running at the same time. Needs root (network namespaces, iptables).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

VENV_BIN = Path(sys.executable).parent
CLIENT_IP, V1_IP, V2_IP = "10.99.0.1", "10.99.0.2", "10.99.0.3"
SERVICE_IP = "10.96.0.10"

REGISTRY = f"""\
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: default}}
spec:
  clusterIP: {SERVICE_IP}
  selector: {{app: backend}}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
---
apiVersion: v1
kind: Pod
metadata: {{name: backend-v1, namespace: default, labels: {{app: backend, version: v1}}}}
spec:
  containers:
  - name: app
    ports: [{{containerPort: 8080}}]
status: {{podIP: {V1_IP}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: backend-v2, namespace: default, labels: {{app: backend, version: v2}}}}
spec:
  containers:
  - name: app
    ports: [{{containerPort: 8080}}]
status: {{podIP: {V2_IP}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: default, labels: {{app: client}}}}
spec:
  containers: [{{name: app}}]
status: {{podIP: {CLIENT_IP}}}
"""


def route_rule(version: str, header_regex: str | None = None) -> str:
    """A RouteRule sending all of the backend's traffic to pods labelled ``version``."""
    match = f"  match:\n    headers:\n    - name: x-test\n      regex: '{header_regex}'\n" if header_regex else ""
    return f"""\
apiVersion: routing.meshbox.io/v1alpha1
kind: RouteRule
metadata: {{name: backend-version, namespace: default}}
spec:
  destination: backend
{match}  route:
  - labels: {{version: {version}}}
    weight: 100
"""


# socketserver rather than http.server.HTTPServer: the latter looks up the bind address's host
# name, and in a namespace whose default route leads nowhere that DNS query hangs for seconds.
BACKEND = """
import socketserver, sys
from http.server import BaseHTTPRequestHandler
ip, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", str(len(name)))
        self.end_headers()
        self.wfile.write(name)
    def log_message(self, *args):
        pass
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
server = socketserver.ThreadingTCPServer((ip, port), Handler)
server.serve_forever()
"""

# Bounded load inside the namespace: stops on SIGTERM, after max_requests or after max_seconds,
# then prints {"bodies": {...}, "failures": [...]} as JSON.
LOAD = """
import http.client, json, signal, sys, threading, time
host, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
max_requests, deadline = int(sys.argv[4]), time.monotonic() + float(sys.argv[5])
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
lock = threading.Lock()
state = {"sent": 0, "bodies": {}, "failures": []}
def work():
    conn = http.client.HTTPConnection(host, port, timeout=10)
    while not stop.is_set() and time.monotonic() < deadline:
        with lock:
            if state["sent"] >= max_requests:
                return
            state["sent"] += 1
        try:
            conn.request("GET", "/", headers={"Host": "backend"})
            reply = conn.getresponse()
            body = reply.read().decode()
            failure = None if reply.status == 200 else f"HTTP {reply.status}: {body}"
        except (OSError, http.client.HTTPException) as exc:
            failure = f"{type(exc).__name__}: {exc}"
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=10)
        with lock:
            if failure:
                state["failures"].append(failure)
            else:
                state["bodies"][body] = state["bodies"].get(body, 0) + 1
threads = [threading.Thread(target=work) for _ in range(workers)]
for t in threads:
    t.start()
while any(t.is_alive() for t in threads):
    stop.wait(0.1)
for t in threads:
    t.join()
print(json.dumps({"bodies": state["bodies"], "failures": state["failures"]}), flush=True)
"""


@dataclass
class LoadResult:
    bodies: dict[str, int]
    failures: list[str]


@dataclass
class Pod:
    """The test's pod namespace with discovery, the agent (and its proxy) and two backends."""

    ns: Any
    registry: Path
    logs: Path
    discovery: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None
    discovery_starts: int = 0

    def curl(self, url: str = f"http://{SERVICE_IP}/") -> tuple[int, str]:
        done = self.ns.run("curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", url, check=False)
        body, _, code = done.stdout.rpartition("\n")
        return int(code or 0), body

    def write(self, name: str, text: str) -> None:
        """Replace a registry file atomically (discovery never reads half a file)."""
        tmp = self.registry / f".{name}.tmp"
        tmp.write_text(text)
        tmp.rename(self.registry / name)

    def start_discovery(self) -> None:
        self.discovery_starts += 1
        with (self.logs / f"discovery{self.discovery_starts}.log").open("wb") as log:
            self.discovery = self.ns.popen(str(VENV_BIN / "meshbox-discovery"), "--plaintext",
                                           "--registry-dir", str(self.registry),
                                           "--poll-interval", "0.05",
                                           stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.curl("http://127.0.0.1:15014/ready")[0] == 200, 20, "discovery ready")

    def kill_discovery(self) -> None:
        assert self.discovery is not None
        # SIGKILL: no goodbye on the streams, as when the control plane's node dies.
        self.discovery.kill()
        self.discovery.wait(timeout=10)

    def start_agent(self) -> None:
        env = {**os.environ, "POD_NAME": "client", "POD_NAMESPACE": "default", "POD_IP": CLIENT_IP}
        with (self.logs / "agent.stdout").open("wb") as out, (self.logs / "agent.stderr").open("wb") as err:
            self.agent = self.ns.popen(str(VENV_BIN / "meshbox-agent"), "sidecar", "--plaintext", "--discovery-address",
                                       "127.0.0.1:15010", "--drain-seconds", "0.5", env=env, stdout=out, stderr=err)
        wait_until(lambda: self.curl("http://127.0.0.1:15020/healthz/ready")[0] == 200, 30,
                   f"agent ready; its log:\n{self.agent_log()}")

    def diagnostics(self) -> str:
        """The tails of the agent's and discovery's logs, for a failure message."""
        discovery = self.logs / f"discovery{self.discovery_starts}.log"
        tail = "\n".join(self.agent_log().splitlines()[-15:])
        return f"\n--- agent log (tail):\n{tail}\n--- discovery log (tail):\n" + "\n".join(
            discovery.read_text(errors="replace").splitlines()[-15:])

    def agent_log(self) -> str:
        return (self.logs / "agent.stderr").read_text(errors="replace")

    def count(self, text: str) -> int:
        return self.agent_log().count(text)

    def load(self, workers: int = 4, max_requests: int = 50_000, max_seconds: float = 100) -> Callable[[], LoadResult]:
        """Start bounded load on the Service; returns the function that stops it and gives the result."""
        proc = self.ns.popen(sys.executable, "-c", LOAD, SERVICE_IP, "80", str(workers), str(max_requests),
                             str(max_seconds), stdout=subprocess.PIPE)

        def stop() -> LoadResult:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            result = json.loads(out)
            return LoadResult(result["bodies"], result["failures"])

        return stop

    def proxy_pids(self) -> list[int]:
        assert self.agent is not None
        agent_pid = self.agent.pid
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == agent_pid and fields[0] != "Z":
                pids.append(int(stat.parent.name))
        return pids


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05,
               pod: Pod | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (pod.diagnostics() if pod else ""))
        time.sleep(interval)


@pytest.fixture
def pod(netns: Any, uid1337_python: str, tmp_path: Path) -> Iterator[Pod]:
    ns = netns("agentint")
    # The pod's eth0 (one end of a veth pair whose other end goes nowhere) carries the pod IP and
    # the default route, so connections to ClusterIPs get routed and then captured. The backend
    # "pods" are local addresses here.
    ns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
    for dev in ("eth0", "eth0peer"):
        ns.run("ip", "link", "set", dev, "up")
    ns.run("ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0")
    ns.run("ip", "route", "add", "default", "dev", "eth0")
    for ip in (V1_IP, V2_IP):
        ns.run("ip", "addr", "add", f"{ip}/32", "dev", "lo")
    # What the init container does for this test's purpose: the app's connections to Services
    # go to the proxy's capture port. The proxy's own connections go to pod IPs and stay as they are.
    ns.run("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "10.96.0.0/16",
           "-j", "REDIRECT", "--to-ports", "15001")
    registry, logs = tmp_path / "registry", tmp_path / "logs"
    registry.mkdir()
    logs.mkdir()
    (registry / "apps.yaml").write_text(REGISTRY)
    for ip, name in ((V1_IP, "v1"), (V2_IP, "v2")):
        ns.popen(sys.executable, "-c", BACKEND, ip, "8080", name)
    p = Pod(ns, registry, logs)
    p.start_discovery()
    p.start_agent()
    yield p


def test_a_route_change_takes_effect_and_a_bad_rule_is_nacked_while_the_old_config_serves(pod: Pod) -> None:
    assert {pod.curl()[1] for _ in range(6)} == {"v1", "v2"}
    pod.write("rule.yaml", route_rule("v2"))
    wait_until(lambda: all(pod.curl() == (200, "v2") for _ in range(4)), 20, "traffic to move to v2", pod=pod)

    pod.write("rule.yaml", route_rule("v1", header_regex="(unclosed"))
    wait_until(lambda: "NACK RouteConfiguration" in pod.agent_log(), 20, "a NACK of the routes", pod=pod)
    assert "unterminated subpattern" in pod.agent_log()  # the proxy's reason, passed on in the NACK
    metrics = pod.curl("http://127.0.0.1:15014/metrics")[1]
    assert 'meshbox_discovery_nacks_total{type="RouteConfiguration"} 1.0' in metrics
    assert all(pod.curl() == (200, "v2") for _ in range(6))

    pod.write("rule.yaml", route_rule("v1"))
    wait_until(lambda: all(pod.curl() == (200, "v1") for _ in range(4)), 20, "the fixed rule to apply", pod=pod)


def test_killing_and_restarting_discovery_10_times_under_load_fails_no_request(pod: Pod) -> None:
    stop = pod.load()
    for i in range(10):
        connects = pod.count("connected to discovery")
        pod.kill_discovery()
        time.sleep(0.2)  # let the load run a little with no control plane at all
        pod.start_discovery()
        wait_until(lambda c=connects: pod.count("connected to discovery") > c, 20, f"reconnect {i + 1}", pod=pod)
    result = stop()
    assert result.failures == []
    assert sum(result.bodies.values()) > 100
    assert set(result.bodies) == {"v1", "v2"}


def test_100_config_swaps_under_load_fail_no_request(pod: Pod) -> None:
    stop = pod.load()
    for i in range(100):
        applied = pod.count("applied config")
        pod.write("rule.yaml", route_rule("v2" if i % 2 == 0 else "v1"))
        wait_until(lambda a=applied: pod.count("applied config") > a, 20, f"swap {i + 1} to apply", pod=pod)
    result = stop()
    assert result.failures == []
    assert "NACK" not in pod.agent_log()
    assert set(result.bodies) == {"v1", "v2"}


def test_the_agent_restarts_a_killed_proxy(pod: Pod) -> None:
    (first,) = pod.proxy_pids()
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: pod.proxy_pids() not in ([], [first]), 15, "a new proxy")
    wait_until(lambda: pod.curl("http://127.0.0.1:15020/healthz/ready")[0] == 200, 20, "ready again")
    assert pod.curl()[0] == 200
