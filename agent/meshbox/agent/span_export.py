"""The proxy's spans to an OTLP/gRPC collector: received on a Unix datagram socket (the proxy loads no
protobuf, so it sends ``meshbox.api.span_wire`` lines), batched, and exported with the
``opentelemetry-proto`` messages over grpcio.

Bounded everywhere: at most ``QUEUE_LIMIT`` spans wait; a batch the collector refuses or does not answer
within ``EXPORT_TIMEOUT`` is dropped and counted, never retried (a collector that is down costs the
counter ``meshbox_agent_tracing_spans_dropped_total``, not memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from meshbox.api import span_wire

log = logging.getLogger("meshbox.agent")

QUEUE_LIMIT = 8192
BATCH = 512
INTERVAL = 1.0
EXPORT_TIMEOUT = 5.0
_KINDS = {"client": trace_pb2.Span.SPAN_KIND_CLIENT, "server": trace_pb2.Span.SPAN_KIND_SERVER}
_INT_ATTRIBUTES = frozenset(("http.status_code", "request_size", "response_size"))
SCOPE = common_pb2.InstrumentationScope(name="meshbox-proxy")


def otlp_span(span: span_wire.WireSpan) -> trace_pb2.Span:
    """The OTLP message of one span from the proxy."""
    attributes = []
    error = False
    for key, value in span.attributes:
        if key == "http.status_code":
            # No response (0) or a 5xx: the span failed (Envoy tags it error=true).
            error = value == "0" or value.startswith("5")
        if key in _INT_ATTRIBUTES and value.isdigit():
            attributes.append(common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(int_value=int(value))))
        else:
            attributes.append(common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value)))
    if error:
        attributes.append(common_pb2.KeyValue(key="error", value=common_pb2.AnyValue(string_value="true")))
    status = trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR if error else trace_pb2.Status.STATUS_CODE_UNSET)
    return trace_pb2.Span(trace_id=span.trace_id, span_id=span.span_id, parent_span_id=span.parent_id,
                          name=span.name, kind=_KINDS[span.kind], start_time_unix_nano=span.start_ns,
                          end_time_unix_nano=span.end_ns, attributes=attributes, status=status)


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.exporter.received(data)


class SpanExporter:
    """Receives the proxy's span datagrams on ``socket_path`` and exports them to ``collector_address``."""

    def __init__(self, socket_path: str, collector_address: str, service_name: str, namespace: str) -> None:
        self.socket_path = socket_path
        self.collector_address = collector_address
        self.resource = resource_pb2.Resource(attributes=[
            common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value=service_name)),
            common_pb2.KeyValue(key="k8s.namespace.name", value=common_pb2.AnyValue(string_value=namespace)),
        ])
        self.pending: list[trace_pb2.Span] = []
        self.received_count = 0
        self.exported = 0
        self.dropped = 0
        self.malformed = 0
        self._wake = asyncio.Event()
        self._transport: asyncio.BaseTransport | None = None

    async def start(self) -> None:
        """Bind the datagram socket (a stale one from an earlier run is replaced)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self.socket_path)
        # Room for bursts between exports: the proxy drops (and counts) what does not fit.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _Receiver(self), sock=sock)

    def received(self, datagram: bytes) -> None:
        """Queue the spans of one datagram (a malformed one is counted and logged, never raised)."""
        try:
            spans = [otlp_span(s) for s in span_wire.decode(datagram)]
        except span_wire.SpanWireError as exc:
            self.malformed += 1
            log.warning("span datagram from the proxy dropped: %s", exc)
            return
        self.received_count += len(spans)
        room = QUEUE_LIMIT - len(self.pending)
        if len(spans) > room:
            self.dropped += len(spans) - room
            spans = spans[:room]
        self.pending += spans
        if len(self.pending) >= BATCH:
            self._wake.set()

    async def run(self) -> None:
        """Export batches until cancelled (every INTERVAL, or as soon as a batch is full)."""
        async with grpc.aio.insecure_channel(self.collector_address) as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(INTERVAL):
                        await self._wake.wait()
                self._wake.clear()
                while self.pending:
                    batch, self.pending = self.pending[:BATCH], self.pending[BATCH:]
                    await self._export(stub, batch)

    async def _export(self, stub: trace_service_pb2_grpc.TraceServiceStub, batch: list[trace_pb2.Span]) -> None:
        request = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
            resource=self.resource, scope_spans=[trace_pb2.ScopeSpans(scope=SCOPE, spans=batch)])])
        try:
            await stub.Export(request, timeout=EXPORT_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            self.dropped += len(batch)
            log.warning("%d spans dropped: the collector at %s answered %s", len(batch), self.collector_address,
                        exc.code().name)
            return
        self.exported += len(batch)

    def close(self) -> None:
        """Stop receiving and remove the socket."""
        if self._transport is not None:
            self._transport.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def render(self) -> str:
        """The exporter's counters, Prometheus text format."""
        rows = (("meshbox_agent_tracing_spans_received_total", "Spans received from the proxy.", self.received_count),
                ("meshbox_agent_tracing_spans_exported_total", "Spans the collector accepted.", self.exported),
                ("meshbox_agent_tracing_spans_dropped_total",
                 "Spans dropped: the queue was full or the collector refused or did not answer.", self.dropped),
                ("meshbox_agent_tracing_datagrams_malformed_total", "Span datagrams not in the wire format.",
                 self.malformed))
        lines = []
        for name, help_text, value in rows:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter", f"{name} {value}"]
        return "\n".join(lines) + "\n"
