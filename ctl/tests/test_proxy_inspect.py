"""`meshctl proxy-status` and `meshctl proxy-config` against real parts: a real meshbox-discovery process with
a real gRPC client in the test playing a proxy that ACKs when told, and a real meshbox-proxy's admin API.

The --kubernetes path needs a Kubernetes API server, which does not run here: its test stops at that
boundary and checks the error says so.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from ruamel.yaml import YAML

from conftest import free_port  # type: ignore[import-not-found]
from meshbox.api.v1 import discovery_pb2, discovery_pb2_grpc

VENV_BIN = Path(sys.executable).parent
TYPES = [f"type.googleapis.com/meshbox.api.v1.{t}"
         for t in ("Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration")]


def _objects() -> list[dict[str, Any]]:
    def service(name: str, ip: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip, "selector": {"app": name},
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}

    def pod(name: str, app: str, ip: str, version: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "labels": {"app": app, "version": version}},
                "spec": {"containers": [{"name": "app", "image": "e", "ports": [{"containerPort": 8080}]}]},
                "status": {"podIP": ip, "phase": "Running"}}

    return [service("service-one", "10.96.0.11"), service("service-two", "10.96.0.12"),
            pod("service-one-a", "service-one", "10.1.0.11", "v1"),
            pod("service-two-v1", "service-two", "10.1.0.21", "v1"),
            pod("service-two-v2", "service-two", "10.1.0.22", "v2")]


def _write(path: Path, docs: list[dict[str, Any]]) -> None:
    yaml = YAML()
    with path.open("w") as out:
        yaml.dump_all(docs, out)


def _wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {timeout}s")


@pytest.fixture
def discovery(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """A meshbox-discovery process on free ports; yields (gRPC target, HTTP URL, registry dir)."""
    registry = tmp_path / "registry"
    registry.mkdir()
    _write(registry / "mesh.yaml", _objects())
    grpc_port, http_port = free_port(), free_port()
    # Plaintext: the test's fake agents speak gRPC without certificates (docs/security.md).
    proc = subprocess.Popen([str(VENV_BIN / "meshbox-discovery"), "--plaintext", "--registry-dir", str(registry),
                             "--listen-address", "127.0.0.1", "--grpc-port", str(grpc_port),
                             "--http-port", str(http_port), "--poll-interval", "0.05", "--debounce", "0.02"],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "discovery.log").open("wb"))
    try:
        _wait_http(f"http://127.0.0.1:{http_port}/ready")
        yield f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", registry
    finally:
        proc.terminate()
        proc.wait(timeout=15)


class Proxy:
    """A discovery client on a real gRPC stream that ACKs only when the test says so."""

    def __init__(self, target: str) -> None:
        self.node = discovery_pb2.Node(id="service-one-a.default", pod_name="service-one-a",
                                       pod_namespace="default", pod_ip="10.1.0.11")
        self.requests: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()
        self.channel = grpc.insecure_channel(target)
        stub = discovery_pb2_grpc.DiscoveryServiceStub(self.channel)
        self.responses = stub.StreamResources(iter(self.requests.get, None))

    def send(self, type_url: str, version: str = "", nonce: str = "") -> None:
        self.requests.put(discovery_pb2.DiscoveryRequest(node=self.node, type_url=type_url, version_info=version,
                                                         response_nonce=nonce))

    def receive(self, count: int) -> list[discovery_pb2.DiscoveryResponse]:
        return [next(self.responses) for _ in range(count)]

    def ack(self, responses: list[discovery_pb2.DiscoveryResponse]) -> None:
        for r in responses:
            self.send(r.type_url, r.version_info, r.nonce)

    def close(self) -> None:
        self.requests.put(None)
        self.channel.close()


def meshctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "meshctl"), *args], capture_output=True, text=True, timeout=60)


def _row(output: str) -> list[str]:
    (line,) = [ln for ln in output.splitlines() if ln.startswith("service-one-a.default")]
    cells = line.split()
    assert cells[-1] == "-"  # identity: a plaintext stream has none
    return cells[2:-1]


def _until(args: list[str], expected: list[str], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    row: list[str] = []
    while time.monotonic() < deadline:
        result = meshctl(*args)
        assert result.returncode == 0, result.stderr
        row = _row(result.stdout)
        if row == expected:
            return
        time.sleep(0.05)
    raise AssertionError(f"proxy-status row {row}, expected {expected}")


def test_proxy_status_shows_stale_then_synced_after_a_config_change(discovery: tuple[str, str, Path]) -> None:
    target, url, registry = discovery
    args = ["proxy-status", "--discovery", url]
    assert meshctl(*args).stdout == "no proxy is connected to discovery\n"
    proxy = Proxy(target)
    try:
        for type_url in TYPES[:3]:  # routes not subscribed yet
            proxy.send(type_url)
        first = proxy.receive(3)
        header = meshctl(*args).stdout.splitlines()[0].split()
        assert header == ["NAME", "POD", "IP", "CLUSTERS", "ENDPOINTS", "LISTENERS", "ROUTES", "IDENTITY"]
        _until(args, ["STALE", "STALE", "STALE", "NOT", "SENT"])
        proxy.ack(first)
        proxy.send(TYPES[3])
        proxy.ack(proxy.receive(1))
        _until(args, ["SYNCED"] * 4)

        # A config change: discovery pushes new clusters, endpoints and routes; until the proxy ACKs, STALE.
        rule = {"apiVersion": "routing.meshbox.io/v1alpha1", "kind": "RouteRule",
                "metadata": {"name": "canary", "namespace": "default"},
                "spec": {"destination": "service-two", "route": [{"labels": {"version": "v2"}, "weight": 100}]}}
        _write(registry / "rules.yaml", [rule])
        pushed = proxy.receive(3)
        _until(args, ["STALE", "STALE", "SYNCED", "STALE"])
        detail = meshctl("proxy-status", "service-one-a", "--discovery", url).stdout
        assert detail.splitlines()[0].split() == ["TYPE", "STATUS", "SERVED", "SENT", "ACKED"]
        routes = next(ln.split() for ln in detail.splitlines() if ln.startswith("ROUTES"))
        assert routes[1] == "STALE" and routes[2] == routes[3] == pushed[2].version_info != routes[4]
        proxy.ack(pushed)
        _until(args, ["SYNCED"] * 4)
        (entry,) = json.loads(meshctl(*args, "-o", "json").stdout)
        assert entry["types"]["RouteConfiguration"]["acked"] == pushed[2].version_info
        missing = meshctl("proxy-status", "nobody", "--discovery", url)
        assert missing.returncode == 1 and "no proxy nobody.default is connected" in missing.stderr
    finally:
        proxy.close()


def _proxy_config(listen: int) -> str:
    cluster = "outbound|80||service-two.default.svc.cluster.local"
    return f"""
listeners:
- {{name: out, direction: OUTBOUND, address: 127.0.0.1, port: {listen}, protocol: HTTP, route_config: "80", bind: true}}
route_configs:
- name: "80"
  virtual_hosts:
  - name: two
    domains: [service-two, service-two.default, service-two.default.svc, 10.96.0.12]
    routes: [{{match: {{prefix: /api}}, clusters: [{{cluster: "{cluster}", weight: 100}}]}}]
clusters:
- {{name: "{cluster}", service: service-two.default.svc.cluster.local}}
endpoints:
- cluster_name: "{cluster}"
  endpoints:
  - {{address: 10.1.0.21, port: 8080, workload: {{name: service-two, namespace: default, app: service-two}}}}
"""


def test_proxy_config_tables_and_json_from_a_live_proxy(tmp_path: Path) -> None:
    config = tmp_path / "proxy.yaml"
    config.write_text(_proxy_config(free_port()))
    admin = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "meshbox.proxy", "--config", str(config), "--admin-port",
                             str(admin), "--outbound-port", "0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "POD_NAME": "service-one-a"})
    try:
        _wait_http(f"http://127.0.0.1:{admin}/ready")
        url = f"http://127.0.0.1:{admin}"
        listeners = meshctl("proxy-config", "listeners", "service-one-a", "--admin", url)
        assert listeners.returncode == 0, listeners.stderr
        assert listeners.stdout.splitlines()[0].split() == ["NAME", "DIRECTION", "ADDRESS", "PORT", "PROTOCOL",
                                                            "DESTINATION"]
        assert listeners.stdout.splitlines()[1].split()[:5] == ["out", "OUTBOUND", "127.0.0.1",
                                                                 config.read_text().split("port: ")[1].split(",")[0],
                                                                 "HTTP"]
        routes = meshctl("proxy-config", "routes", "service-one-a", "--admin", url).stdout
        assert "service-two,service-two.default,service-two.default.svc +1 more" in routes and "/api" in routes
        clusters = meshctl("proxy-config", "clusters", "service-one-a", "--admin", url).stdout
        assert "outbound|80||service-two.default.svc.cluster.local" in clusters and "ROUND_ROBIN" in clusters
        endpoints = meshctl("proxy-config", "endpoints", "service-one-a", "--admin", url).stdout
        assert endpoints.splitlines()[1].split() == ["10.1.0.21:8080",
                                                     "outbound|80||service-two.default.svc.cluster.local",
                                                     "default/service-two", "1"]
        as_json = json.loads(meshctl("proxy-config", "endpoints", "service-one-a", "--admin", url, "-o", "json").stdout)
        assert as_json[0]["endpoints"][0]["workload"]["name"] == "service-two"
        as_yaml = meshctl("proxy-config", "clusters", "service-one-a", "--admin", url, "-o", "yaml").stdout
        assert "service: service-two.default.svc.cluster.local" in as_yaml
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_unreachable_addresses_and_kubernetes_without_an_api_server_are_clear_errors(tmp_path: Path) -> None:
    port = free_port()
    down = meshctl("proxy-status", "--discovery", f"http://127.0.0.1:{port}")
    assert down.returncode == 1 and f"GET http://127.0.0.1:{port}/debug/syncz" in down.stderr
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "none")}
    result = subprocess.run([str(VENV_BIN / "meshctl"), "proxy-status", "--kubernetes"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert result.returncode == 1 and "API server" in result.stderr
    result = subprocess.run([str(VENV_BIN / "meshctl"), "proxy-config", "clusters", "p", "--kubernetes"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1 and "API server" in result.stderr
