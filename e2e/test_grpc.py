"""gRPC between two injected pods of the local mesh, on a Service port named ``grpc`` (L7 by the seed's
port-name rule): a real grpcio server in one pod, a real grpcio client in another, each call one
exchange in both sidecars, with the same x-request-id in the client's outbound and the server's inbound
log line. Needs root.

The local cluster runs only the echoserver image, so the gRPC programs run inside the pods' containers
with ``meshctl local exec`` (their network, hosts file and user), started by this test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from meshbox.ctl.trace import parse_line

SERVICE = "meshbox.test.Echo"
MANIFEST = """apiVersion: v1
kind: Service
metadata:
  name: grpc-echo
  labels: {app: grpc-echo}
spec:
  ports:
  - {port: 50051, targetPort: 50051, name: grpc}
  selector: {app: grpc-echo}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: grpc-echo
spec:
  replicas: 1
  selector: {matchLabels: {app: grpc-echo}}
  template:
    metadata:
      labels: {app: grpc-echo}
    spec:
      containers:
      - name: app
        image: gcr.io/google_containers/echoserver:1.4
        ports:
        - containerPort: 8080
"""
SERVER = f"""
import sys
from concurrent import futures
import grpc

def count(request, context):
    for i in range(int(request)):
        yield b"%d" % i

handlers = {{
    "Say": grpc.unary_unary_rpc_method_handler(lambda request, context: b"echo says " + request),
    "Count": grpc.unary_stream_rpc_method_handler(count),
    "Sum": grpc.stream_unary_rpc_method_handler(lambda requests, context: b"%d" % sum(map(int, requests))),
    "Echo": grpc.stream_stream_rpc_method_handler(lambda requests, context: (r.upper() for r in requests)),
}}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("{SERVICE}", handlers),))
server.add_insecure_port("127.0.0.1:" + sys.argv[1])
server.start()
print("listening", flush=True)
server.wait_for_termination()
"""
CLIENT = f"""
import json, sys
import grpc

with grpc.insecure_channel(sys.argv[1]) as channel:
    say = channel.unary_unary("/{SERVICE}/Say")
    results = {{
        "say": say(b"hello", timeout=10).decode(),
        "count": [m.decode() for m in channel.unary_stream("/{SERVICE}/Count")(b"3", timeout=10)],
        "sum": channel.stream_unary("/{SERVICE}/Sum")(iter([b"40", b"2"]), timeout=10).decode(),
        "echo": [m.decode() for m in channel.stream_stream("/{SERVICE}/Echo")(iter([b"a", b"b"]), timeout=10)],
    }}
print(json.dumps(results))
"""
POD = "meshctl local get pod -l app={app} -o jsonpath='{{.items[0].metadata.name}}'"


@pytest.fixture(scope="module")
def grpc_mesh(mesh: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """apps.yaml (the client, service-one) and the grpc-echo Service injected and ready, with the gRPC
    server running in grpc-echo's app container."""
    manifest = tmp_path_factory.mktemp("grpc") / "grpc.yaml"
    manifest.write_text(MANIFEST)
    mesh.sh("meshctl local apply -f <(meshctl kube-inject -f apps.yaml)",
            f"meshctl local apply -f <(meshctl kube-inject -f {manifest})")
    mesh.sh("meshctl local wait --timeout 60")
    pod = mesh.sh(POD.format(app="grpc-echo")).strip()
    server = subprocess.Popen(["meshctl", "local", "exec", pod, "-c", "app", "--", sys.executable, "-c", SERVER,
                               "50051"], env=mesh.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening", server.stderr
        yield mesh
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)
        mesh.sh(f"meshctl local delete -f {manifest}", "meshctl local delete -f apps.yaml", check=False)


def test_grpc_calls_between_pods_are_one_exchange_each_on_both_sides(grpc_mesh: Any) -> None:
    mesh = grpc_mesh
    ip = mesh.sh("meshctl local get svc grpc-echo -o jsonpath='{.spec.clusterIP}'").strip()
    client = mesh.sh(POD.format(app="service-one")).strip()
    server = mesh.sh(POD.format(app="grpc-echo")).strip()
    out = subprocess.run(["meshctl", "local", "exec", client, "-c", "app", "--", sys.executable, "-c", CLIENT,
                          f"{ip}:50051"], env=mesh.env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"say": "echo says hello", "count": ["0", "1", "2"], "sum": "42",
                                      "echo": ["A", "B"]}
    outbound = [p for p in (parse_line(line, "client") for line in
                            mesh.sh(f"meshctl local logs {client} proxy").splitlines()) if p]
    inbound = [p for p in (parse_line(line, "server") for line in
                           mesh.sh(f"meshctl local logs {server} proxy").splitlines()) if p]
    calls = {m: [rid for rid, hop in outbound if hop.path == f"/{SERVICE}/{m}"]
             for m in ("Say", "Count", "Sum", "Echo")}
    assert all(len(ids) == 1 for ids in calls.values()), outbound
    for method, (rid,) in calls.items():
        (out_hop,) = [hop for r, hop in outbound if r == rid]
        (in_hop,) = [hop for r, hop in inbound if r == rid]
        assert (out_hop.method, out_hop.code, out_hop.flags) == ("POST", "200", "-"), method
        assert (in_hop.path, in_hop.code, in_hop.flags) == (f"/{SERVICE}/{method}", "200", "-")
        assert out_hop.upstream_host.endswith(":50051") and in_hop.upstream_host == "127.0.0.1:50051"
