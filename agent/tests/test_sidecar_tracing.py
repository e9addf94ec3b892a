"""``meshbox-agent sidecar`` with a mesh config naming a collector: the agent binds its span socket,
starts the proxy with ``--trace-socket`` / ``--trace-sampling``, and exports the proxy's spans over real
OTLP/gRPC to a receiver built here; its counters are on the status port's merged scrape."""

from __future__ import annotations

import http.client
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client.parser import text_string_to_metric_families


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[trace_pb2.Span] = []
        self.lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        with self.lock:
            self.spans += [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


def test_the_agent_exports_the_proxys_spans_to_the_mesh_configs_collector(
    canned_discovery: Any, start_agent: Any, backends: Any, kit: Any, tmp_path: Path
) -> None:
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    collector_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        mesh = tmp_path / "mesh.yaml"
        mesh.write_text(f"tracing:\n  collector_address: 127.0.0.1:{collector_port}\n  sampling_percentage: 100\n")
        port = kit.free_port()
        canned_discovery.set_world("v1", kit.http_world(port, {"backend": backends("v1")}))
        agent = start_agent(f"127.0.0.1:{canned_discovery.port}", agent_args=["--mesh-config", str(mesh)])
        agent.wait_ready()
        assert kit.get(port) == (200, "v1")
        kit.wait_until(lambda: len(receiver.spans) == 1, 10, f"one span exported; agent log:\n{agent.log()}")
        span = receiver.spans[0]
        attributes = {kv.key: kv.value for kv in span.attributes}
        assert attributes["node_id"].string_value == "app-1.default"
        assert attributes["http.status_code"].int_value == 200
        assert span.parent_span_id == b"" and len(span.trace_id) == 16

        conn = http.client.HTTPConnection("127.0.0.1", agent.status_port, timeout=5)
        conn.request("GET", "/stats/prometheus")
        text = conn.getresponse().read().decode()
        samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples["meshbox_agent_tracing_spans_exported_total"] == 1
        assert samples["meshbox_agent_tracing_spans_dropped_total"] == 0
        assert samples["meshbox_proxy_tracing_spans_sent_total"] == 1
    finally:
        server.stop(None)
