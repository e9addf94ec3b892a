"""Tracing end to end with real parts: two real meshbox-proxy processes (client side and server side, as
in two pods), each sending its spans over its Unix datagram socket to the agent's SpanExporter, which
exports them over real OTLP/gRPC to a receiver built here from opentelemetry-proto and grpcio.

Also: a collector that is down (requests unaffected, dropped spans counted by the exporter), a proxy
whose agent is not there (requests unaffected, dropped spans counted on the proxy's scrape), and the
wire format's refusal of a malformed datagram.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from meshbox.agent.span_export import SpanExporter
from meshbox.api.loader import message_from_data
from meshbox.api.v1 import proxy_config_pb2 as pc

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACED_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    '%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% '
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" '
    '"%TRACE_ID%"\n'
)


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps what it receives."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, str], trace_pb2.Span]] = []

    async def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
                     context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            resource = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                self.spans += [(resource, span) for span in scope_spans.spans]
        return trace_service_pb2.ExportTraceServiceResponse()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def backend_server(seen: list[dict[bytes, bytes]]) -> asyncio.Server:
    """An HTTP/1.1 backend that records each request's headers and answers 200 with a 5-byte body."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")[1:-2]
                seen.append({n.strip().lower(): v.strip() for n, v in (line.split(b":", 1) for line in lines)})
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def proxy_config(port: int, direction: str, cluster: str, service: str, upstream_port: int) -> Path:
    data = {
        "listeners": [{"name": "http", "direction": direction, "address": "127.0.0.1", "port": port,
                       "protocol": "HTTP", "route_config": "rc", "bind": True}],
        "route_configs": [{"name": "rc", "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [
            {"clusters": [{"cluster": cluster, "weight": 100}]}]}]}],
        "clusters": [{"name": cluster, "service": service}],
        "endpoints": [{"cluster_name": cluster, "endpoints": [{"address": "127.0.0.1", "port": upstream_port}]}],
    }
    config = message_from_data(data, pc.ProxyConfig)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"span-test-{os.getpid()}-{port}.json"
    path.write_text(json_format.MessageToJson(config, preserving_proto_field_name=True))
    return path


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def start_proxy(procs: list[subprocess.Popen[str]], config: Path, port: int, pod: str, trace_socket: str,
                      tmp_path: Path, *args: str) -> int:
    """A meshbox-proxy process tracing every new trace; returns its admin port once ``port`` accepts."""
    out = (tmp_path / f"{pod}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshbox.proxy", "--config", str(config), "--admin-port", "0", "--outbound-port", "0",
         "--trace-socket", trace_socket, "--trace-sampling", "100", *args],
        stdout=out, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "POD_NAME": pod, "POD_NAMESPACE": "default", "APP": pod})
    procs.append(proc)
    assert proc.stderr is not None
    admin = 0
    while not admin:
        line = await asyncio.to_thread(proc.stderr.readline)
        assert line, f"proxy {pod} exited ({proc.poll()}) before listening"
        if "admin listening on" in line:
            admin = int(line.rsplit(":", 1)[1])
    deadline = time.monotonic() + 10
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return admin
        except OSError:
            assert time.monotonic() < deadline, f"proxy {pod} never listened on {port}"
            await asyncio.sleep(0.02)


async def request(port: int, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"GET /call?x=1 HTTP/1.1\r\nhost: service-two\r\n{extra}connection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def scrape(admin: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", admin)
    writer.write(b"GET /stats/prometheus HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    return data.partition(b"\r\n\r\n")[2].decode()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


@asynccontextmanager
async def exporter(tmp_path: Path, name: str, collector: str) -> AsyncIterator[SpanExporter]:
    exp = SpanExporter(str(tmp_path / f"{name}.sock"), collector, f"{name}.default", "default")
    await exp.start()
    task = asyncio.create_task(exp.run())
    try:
        yield exp
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        exp.close()


@asynccontextmanager
async def otlp_receiver() -> AsyncIterator[tuple[Receiver, str]]:
    receiver = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield receiver, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def attributes(span: trace_pb2.Span) -> dict[str, str | int]:
    return {kv.key: kv.value.string_value if kv.value.HasField("string_value") else kv.value.int_value
            for kv in span.attributes}


async def wait_for(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_client_and_server_spans_of_one_request_reach_the_collector(
        processes: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    async def scenario() -> None:
        seen: list[dict[bytes, bytes]] = []
        backend = await backend_server(seen)
        backend_port = backend.sockets[0].getsockname()[1]
        client_port, server_port = free_port(), free_port()
        async with otlp_receiver() as (receiver, collector), \
                exporter(tmp_path, "sleep", collector) as client_exp, \
                exporter(tmp_path, "service-two", collector) as server_exp:
            await start_proxy(processes, proxy_config(server_port, "INBOUND", "inbound|8080||", "", backend_port),
                              server_port, "service-two", server_exp.socket_path, tmp_path)
            await start_proxy(processes, proxy_config(
                client_port, "OUTBOUND", "outbound|80||service-two.default.svc.cluster.local",
                "service-two.default.svc.cluster.local", server_port), client_port, "sleep",
                client_exp.socket_path, tmp_path, "--access-log-format", TRACED_LOG_FORMAT)

            # A request with no trace context: the client proxy starts a trace (100 % sampling).
            assert await request(client_port) == (200, b"hello")
            await wait_for(lambda: len(receiver.spans) >= 2)
            spans = {span.kind: (resource, span) for resource, span in receiver.spans}
            (client_res, client), (server_res, server) = (spans[trace_pb2.Span.SPAN_KIND_CLIENT],
                                                          spans[trace_pb2.Span.SPAN_KIND_SERVER])
            assert client.trace_id == server.trace_id and len(client.trace_id) == 16
            assert client.parent_span_id == b""
            assert server.parent_span_id == client.span_id
            assert client_res["service.name"] == "sleep.default" and server_res["service.name"] == "service-two.default"
            # The app behind the server proxy sees the server span as its parent, in W3C and B3 form.
            app = seen[0]
            assert app[b"traceparent"] == b"00-%s-%s-01" % (client.trace_id.hex().encode(),
                                                             server.span_id.hex().encode())
            assert app[b"x-b3-spanid"] == server.span_id.hex().encode()
            assert app[b"x-b3-parentspanid"] == client.span_id.hex().encode()
            ca, sa = attributes(client), attributes(server)
            assert ca["http.method"] == "GET" and ca["http.status_code"] == 200
            assert ca["http.url"] == "http://service-two/call?x=1"
            assert ca["upstream_cluster"] == "outbound|80||service-two.default.svc.cluster.local"
            assert sa["upstream_cluster"] == "inbound|8080||"
            assert ca["component"] == sa["component"] == "proxy"
            assert ca["node_id"] == "sleep.default" and sa["node_id"] == "service-two.default"
            assert sa["istio.canonical_service"] == "service-two"
            assert ca["guid:x-request-id"] == sa["guid:x-request-id"] == app[b"x-request-id"].decode()
            assert ca["response_size"] == 5
            assert client.end_time_unix_nano >= client.start_time_unix_nano > 0
            assert server.start_time_unix_nano >= client.start_time_unix_nano - 50_000_000
            # %TRACE_ID% appended to the default format: the client proxy's line names the trace.
            line = (tmp_path / "sleep.log").read_text().splitlines()[0]
            assert line.endswith(f'"{ca["guid:x-request-id"]}" "service-two" "127.0.0.1:{server_port}" '
                                 f'"{client.trace_id.hex()}"')

            # An incoming sampled traceparent: the client span is its child, in the same trace.
            receiver.spans.clear()
            await request(client_port, {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "vendor=1"})
            await wait_for(lambda: len(receiver.spans) >= 2)
            spans = {span.kind: (resource, span) for resource, span in receiver.spans}
            client, server = spans[trace_pb2.Span.SPAN_KIND_CLIENT][1], spans[trace_pb2.Span.SPAN_KIND_SERVER][1]
            assert client.trace_id.hex() == server.trace_id.hex() == TRACE
            assert client.parent_span_id.hex() == PARENT and server.parent_span_id == client.span_id
            assert seen[-1][b"tracestate"] == b"vendor=1"

            # An unsampled one: propagated, nothing recorded.
            receiver.spans.clear()
            await request(client_port, {"traceparent": f"00-{TRACE}-{PARENT}-00"})
            assert seen[-1][b"traceparent"].startswith(f"00-{TRACE}-".encode())
            assert seen[-1][b"traceparent"].endswith(b"-00")
            await asyncio.sleep(1.5)
            assert receiver.spans == []
            assert client_exp.dropped == server_exp.dropped == 0 and client_exp.exported == 2
        backend.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_collector_down_or_agent_absent_costs_only_dropped_spans(
        processes: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    async def scenario() -> None:
        seen: list[dict[bytes, bytes]] = []
        backend = await backend_server(seen)
        backend_port = backend.sockets[0].getsockname()[1]
        down = f"127.0.0.1:{free_port()}"  # nothing listens there
        port, lonely_port = free_port(), free_port()
        async with exporter(tmp_path, "sleep", down) as exp:
            admin = await start_proxy(processes, proxy_config(port, "OUTBOUND", "c", "svc", backend_port), port,
                                      "sleep", exp.socket_path, tmp_path)
            lonely_admin = await start_proxy(processes, proxy_config(lonely_port, "OUTBOUND", "c", "svc",
                                                                     backend_port),
                                             lonely_port, "lonely", str(tmp_path / "nobody.sock"), tmp_path)
            for _ in range(20):
                assert await request(port) == (200, b"hello")
                assert await request(lonely_port) == (200, b"hello")
            await wait_for(lambda: exp.dropped >= 20)
            assert exp.exported == 0 and exp.received_count == 20
            text = await scrape(admin)
            assert metric(text, "meshbox_proxy_tracing_spans_sent_total") == 20
            assert metric(text, "meshbox_proxy_tracing_spans_dropped_total") == 0
            assert f"meshbox_agent_tracing_spans_dropped_total {exp.dropped}" in exp.render()
            deadline = time.monotonic() + 5
            while metric(lonely := await scrape(lonely_admin), "meshbox_proxy_tracing_spans_dropped_total") < 20:
                assert time.monotonic() < deadline, lonely
                await asyncio.sleep(0.1)
            assert metric(lonely, "meshbox_proxy_tracing_spans_dropped_total") == 20
            assert metric(lonely, "meshbox_proxy_tracing_spans_sent_total") == 0
        backend.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_malformed_datagram_is_counted_not_raised(tmp_path: Path) -> None:
    async def scenario() -> None:
        exp = SpanExporter(str(tmp_path / "s.sock"), "127.0.0.1:1", "x.default", "default")
        await exp.start()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(b"1\tclient\tnot-hex\n", exp.socket_path)
                sock.sendto(b"garbage", exp.socket_path)
            await wait_for(lambda: exp.malformed == 2)
            assert exp.pending == []
        finally:
            exp.close()
        assert not os.path.exists(exp.socket_path)

    asyncio.run(asyncio.wait_for(scenario(), 10))
