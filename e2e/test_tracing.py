"""Distributed tracing on the local mesh: the tutorial's apps injected with a mesh config naming an OTLP
collector, the tutorial's request, and both spans (service-one's client span, service-two's server span)
received by an OTLP/gRPC receiver built from opentelemetry-proto + grpcio, running in the cluster's
node namespace (the one every pod reaches, on the node address 10.244.0.1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PODS = ("CLIENT=$(meshctl local get pod -l app=service-one -o jsonpath='{.items[0].metadata.name}')",)
COLLECTOR_PORT = 4317
RECEIVER = '''
import json, sys
from concurrent import futures
import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        with open(sys.argv[2], "a") as out:
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        attributes = {kv.key: kv.value.string_value or kv.value.int_value for kv in s.attributes}
                        out.write(json.dumps({"trace": s.trace_id.hex(), "span": s.span_id.hex(),
                                              "parent": s.parent_span_id.hex(), "kind": s.kind,
                                              "attributes": attributes}) + "\\n")
        return trace_service_pb2.ExportTraceServiceResponse()

server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
server.add_insecure_port(sys.argv[1])
server.start()
print("listening", flush=True)
server.wait_for_termination()
'''


@pytest.fixture(scope="module")
def collector(mesh: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The receiver in the node namespace; yields the file its spans are written to (JSON lines)."""
    tmp = tmp_path_factory.mktemp("collector")
    script, spans = tmp / "receiver.py", tmp / "spans.jsonl"
    script.write_text(RECEIVER)
    proc = subprocess.Popen(["ip", "netns", "exec", f"{mesh.prefix}-node", sys.executable, str(script),
                             f"10.244.0.1:{COLLECTOR_PORT}", str(spans)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening", proc.stderr
        yield spans
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)


def test_the_tutorial_request_makes_a_client_and_a_server_span_of_one_trace(mesh: Any, collector: Path,
                                                                            tmp_path: Path) -> None:
    config = tmp_path / "mesh.yaml"
    config.write_text(f"tracing:\n  collector_address: 10.244.0.1:{COLLECTOR_PORT}\n  sampling_percentage: 100\n")
    mesh.sh(f"meshctl local apply -f <(meshctl kube-inject --meshConfigFile {config} -f apps.yaml)")
    try:
        mesh.sh("meshctl local wait --timeout 60")
        out = mesh.sh(*PODS, "meshctl local exec ${CLIENT} -c app -- curl -s service-two:80")
        request_id = next(line.split("=", 1)[1].strip() for line in out.splitlines()
                          if line.startswith("x-request-id="))
        deadline = time.monotonic() + 20
        spans: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            lines = collector.read_text().splitlines() if collector.exists() else []
            spans = [s for s in map(json.loads, lines) if s["attributes"].get("guid:x-request-id") == request_id]
            if len(spans) >= 2:
                break
            time.sleep(0.2)
        kinds = {s["kind"]: s for s in spans}
        assert set(kinds) == {2, 3}, spans  # SPAN_KIND_SERVER, SPAN_KIND_CLIENT
        client, server = kinds[3], kinds[2]
        assert client["trace"] == server["trace"] and server["parent"] == client["span"]
        assert client["attributes"]["node_id"].startswith("service-one")
        assert server["attributes"]["node_id"].startswith("service-two")
        # The echoserver shows the headers it got: the server span is its parent.
        assert f"traceparent=00-{client['trace']}-{server['span']}-01" in out
    finally:
        mesh.sh("meshctl local delete -f apps.yaml", check=False)
