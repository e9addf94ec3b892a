"""HTTP/2 over mutual TLS with ALPN ``h2``, and the idle timeout of upstream HTTP/2 connections.

Real parts: two meshbox-proxy processes (the installed build) with workload certificates made by
`cryptography`, real grpcio clients and servers, the test's own TLS clients (Python's ssl, which tells
the ALPN protocol the server selected) and a real HTTP/2 server (the h2 package over a socket) that
records what the proxy's upstream connection does.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, RequestReceived, ResponseReceived, StreamEnded

from conftest import Pki  # type: ignore[import-not-found]
from proxy.tests.h2_kit import PREFACE, SERVICE, EchoServer
from proxy.tests.test_mutual_tls import CLIENT_ID, MODE, SERVER_ID, Pair, stop, write_identity

# The name grpcio checks the server certificate against (workload certificates carry only a URI SAN; the
# test's server certificate adds this DNS name so that grpcio, which always checks one, can connect).
SERVER_DNS = "httpbin.default.svc"


@pytest.fixture
def backend() -> Iterator[EchoServer]:
    server = EchoServer("grpc-backend")
    yield server
    server.stop()


def counters(metrics: str) -> dict[str, float]:
    """The proxy's own counters from a Prometheus scrape, by counter name."""
    out = {}
    for line in metrics.splitlines():
        if line.startswith("meshbox_proxy_") and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name.removeprefix("meshbox_proxy_").removesuffix("_total")] = float(value)
    return out


def _calls(port: int, credentials: grpc.ChannelCredentials | None = None) -> tuple[bytes, list[bytes]]:
    """A unary and a server-streaming call on one channel (one HTTP/2 connection)."""
    options = [("grpc.ssl_target_name_override", SERVER_DNS)]
    channel = (grpc.secure_channel(f"127.0.0.1:{port}", credentials, options=options) if credentials
               else grpc.insecure_channel(f"127.0.0.1:{port}"))
    with channel:
        first = channel.unary_unary(f"/{SERVICE}/Say")(b"hello", timeout=5)
        streamed = list(channel.unary_stream(f"/{SERVICE}/Count")(b"3", timeout=5))
    return first, streamed


def test_grpc_between_two_sidecars_negotiates_h2(kit: Any, proxy_cli: Any, tmp_path: Path,
                                                 backend: EchoServer) -> None:
    """grpcio (h2c) → outbound sidecar → mutual TLS with ALPN h2 → inbound sidecar → grpcio server."""
    pair = Pair(kit, proxy_cli, tmp_path, Pki())

    async def main() -> tuple[tuple[bytes, list[bytes]], dict[str, float], dict[str, float]]:
        await pair.start(backend.port, MODE.STRICT, [SERVER_ID])
        calls = await asyncio.to_thread(_calls, pair.out_port)
        return calls, counters(await pair.metrics(pair.client_admin)), counters(await pair.metrics(pair.server_admin))

    calls, client, server = kit.run(main())
    server_log, server_err = stop(pair.server)
    client_log, client_err = stop(pair.client)
    assert calls == (b"grpc-backend says hello", [b"0", b"1", b"2"]), (client_err, server_err)
    # Both calls on one upstream connection, which negotiated h2.
    assert client["upstream_cx_alpn_h2"] == 1 and "upstream_cx_alpn_http11" not in client, client
    assert server["downstream_cx_alpn_h2"] == 1 and "downstream_cx_alpn_http11" not in server, server
    # Its records went through the proxy's own TLS 1.3 record layer on both sides.
    assert client["upstream_cx_tls_own_records"] == 1 and server["downstream_cx_tls_own_records"] == 1
    assert server_log.count(f"200 - peer={CLIENT_ID} tls=TLSv1.3") == 2, server_log
    assert client_log.count(f"200 - peer=- tls=- up={SERVER_ID} fail=-") == 2, client_log


def _grpc_credentials(pki: Any, root: Any, root_key: Any) -> grpc.ChannelCredentials:
    cert, key = pki.leaf(root, root_key, uris=(CLIENT_ID,))
    return grpc.ssl_channel_credentials(root_certificates=pki.pem(root), private_key=pki.key_pem(key),
                                        certificate_chain=pki.pem(cert))


def test_grpc_client_over_tls_with_alpn_h2_to_the_inbound_sidecar(kit: Any, proxy_cli: Any, tmp_path: Path,
                                                                  backend: EchoServer) -> None:
    """A non-meshbox client (grpcio with a workload certificate: it offers ALPN h2 and fails a server that
    selects none) calls through the inbound sidecar's mutual TLS."""
    pki = Pki()
    pair = Pair(kit, proxy_cli, tmp_path, pki)
    pair.server_dir = write_identity(pki, tmp_path / "server-dns", pair.root, pair.root_key, SERVER_ID,
                                     dns=(SERVER_DNS,))
    credentials = _grpc_credentials(pki, pair.root, pair.root_key)

    async def main() -> tuple[tuple[bytes, list[bytes]], dict[str, float]]:
        await pair.start(backend.port, MODE.STRICT, [SERVER_ID])
        calls = await asyncio.to_thread(_calls, pair.in_port, credentials)
        return calls, counters(await pair.metrics(pair.server_admin))

    calls, server = kit.run(main())
    server_log, server_err = stop(pair.server)
    stop(pair.client)
    assert calls == (b"grpc-backend says hello", [b"0", b"1", b"2"]), server_err
    assert server["downstream_cx_alpn_h2"] == 1, server
    assert server_log.count(f"200 - peer={CLIENT_ID} tls=TLSv1.3") == 2, server_log


class TlsClient:
    """The test's own mutual TLS client, offering ``alpn``."""

    def __init__(self, pki: Any, tmp_path: Path, root: Any, root_key: Any) -> None:
        cert, key = pki.leaf(root, root_key, uris=(CLIENT_ID,))
        (tmp_path / "own.crt").write_bytes(pki.pem(cert))
        (tmp_path / "own.key").write_bytes(pki.key_pem(key))
        self.paths = (tmp_path / "own.crt", tmp_path / "own.key")
        self.root = pki.pem(root).decode()

    def connect(self, port: int, alpn: list[str]) -> ssl.SSLSocket:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=self.root)
        ctx.load_cert_chain(*self.paths)
        ctx.set_alpn_protocols(alpn)
        return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))


def _read_all(sock: ssl.SSLSocket, limit: float = 5) -> bytes:
    """What arrives until the server closes (or ``limit`` seconds pass)."""
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionError, TimeoutError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return data


def _h2_get(sock: ssl.SSLSocket) -> tuple[int, bytes]:
    """One HTTP/2 GET on ``sock``: the status and body."""
    conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "x"), (":path", "/over-h2")],
                      end_stream=True)
    sock.sendall(conn.data_to_send())
    status, body = 0, b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        data = sock.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, ResponseReceived):
                status = int(dict(event.headers)[":status"])
            elif isinstance(event, StreamEnded):
                return status, body
            elif hasattr(event, "data") and getattr(event, "stream_id", 0) == 1:
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, 1)
        sock.sendall(conn.data_to_send())
    return status, body


def test_the_inbound_side_picks_the_codec_by_alpn(kit: Any, proxy_cli: Any, tmp_path: Path) -> None:
    """ALPN h2: HTTP/2 at once, and a client that then sends HTTP/1.1 instead of the preface is refused;
    ALPN http/1.1: HTTP/1.1, the preface being just a malformed request; the server prefers h2 to
    http/1.1 and the TCP metadata exchange to both; the outbound sidecar's HTTP/1.1 connections offer
    http/1.1."""
    pki = Pki()
    pair = Pair(kit, proxy_cli, tmp_path, pki)
    client = TlsClient(pki, tmp_path, pair.root, pair.root_key)
    results: dict[str, Any] = {}

    def attempts(port: int) -> None:
        with client.connect(port, ["h2"]) as sock:
            results["h2"] = (sock.selected_alpn_protocol(), _h2_get(sock))
        with client.connect(port, ["h2"]) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            results["h2 without preface"] = _read_all(sock)
        with client.connect(port, ["http/1.1"]) as sock:
            sock.sendall(b"GET /over-http11 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            results["http/1.1"] = (sock.selected_alpn_protocol(), _read_all(sock))
        with client.connect(port, ["http/1.1"]) as sock:
            sock.sendall(PREFACE)
            results["http/1.1 with preface"] = _read_all(sock)
        with client.connect(port, ["http/1.1", "h2"]) as sock:
            results["both"] = (sock.selected_alpn_protocol(), _h2_get(sock)[0])
        with client.connect(port, ["h2", "meshbox-peer-exchange"]) as sock:
            results["exchange"] = sock.selected_alpn_protocol()

    async def main() -> dict[str, float]:
        backend = RecordingH2Server()
        await pair.start(await backend.start(), MODE.STRICT, [SERVER_ID])
        await asyncio.to_thread(attempts, pair.in_port)
        # The outbound sidecar's HTTP/1.1 upstream connection offers http/1.1.
        results["outbound"] = (await kit.get(pair.out_port, "/through")).status
        results["client"] = counters(await pair.metrics(pair.client_admin))
        backend.server.close()
        return counters(await pair.metrics(pair.server_admin))

    server = kit.run(main())
    _, server_err = stop(pair.server)
    stop(pair.client)
    alpn, (status, body) = results["h2"]
    assert alpn == "h2" and (status, body) == (200, b"ok /over-h2"), (results, server_err)
    refused = results["h2 without preface"]
    assert b"HTTP/1.1" not in refused, refused  # at most the server's SETTINGS, then closed
    assert server["downstream_cx_h2_protocol_error"] == 1, server
    alpn, answer = results["http/1.1"]
    assert alpn == "http/1.1" and answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok /over-http11"), answer
    assert results["http/1.1 with preface"].startswith(b"HTTP/1.1 4"), results
    assert results["both"] == ("h2", 200) and results["exchange"] == "meshbox-peer-exchange", results
    assert results["outbound"] == 200 and results["client"]["upstream_cx_alpn_http11"] == 1, results
    assert server["downstream_cx_alpn_h2"] == 3 and server["downstream_cx_alpn_http11"] == 3, server
    assert "Traceback" not in server_err


class RecordingH2Server:
    """An HTTP server answering every request 200 ``ok <path>`` (after ``delay`` seconds): HTTP/2 when a
    connection starts with the preface, else HTTP/1.1 (one request, then close). Records per HTTP/2
    connection the streams it answered, when it last answered, the GOAWAY it received and when the client
    closed it."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.connections: list[dict[str, Any]] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _answer(self, conn: H2Connection, writer: asyncio.StreamWriter, sid: int, path: bytes,
                      record: dict[str, Any]) -> None:
        await asyncio.sleep(self.delay)
        conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/plain")])
        conn.send_data(sid, b"ok " + path, end_stream=True)
        writer.write(conn.data_to_send())
        record["answered"] = time.monotonic()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(len(PREFACE))
        while len(data) < len(PREFACE) and PREFACE.startswith(data) and (more := await reader.read(64)):
            data += more
        if not data.startswith(PREFACE):
            await self._serve_http11(data, reader, writer)
            return
        record: dict[str, Any] = {"goaway": None, "closed": None, "streams": 0, "answered": None}
        self.connections.append(record)
        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        paths: dict[int, bytes] = {}
        tasks = set()
        while data:
            for event in conn.receive_data(data):
                if isinstance(event, RequestReceived):
                    paths[event.stream_id] = dict(event.headers)[b":path"]
                elif isinstance(event, StreamEnded):
                    record["streams"] += 1
                    task = asyncio.create_task(self._answer(conn, writer, event.stream_id,
                                                            paths.pop(event.stream_id), record))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif isinstance(event, ConnectionTerminated):
                    record["goaway"] = (time.monotonic(), event.error_code)
            writer.write(conn.data_to_send())
            data = await reader.read(65536)
        record["closed"] = time.monotonic()
        writer.close()

    async def _serve_http11(self, data: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while b"\r\n\r\n" not in data and (more := await reader.read(65536)):
            data += more
        await asyncio.sleep(self.delay)
        body = b"ok " + data.split(b" ", 2)[1]
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        writer.close()


def _h2c_call(port: int, path: str) -> tuple[int, bytes]:
    """One HTTP/2 (prior knowledge) request through the proxy."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":authority", "x"), (":path", path)],
                      end_stream=True)
    sock.sendall(conn.data_to_send())
    status, body = 0, b""
    try:
        while data := sock.recv(65536):
            for event in conn.receive_data(data):
                if isinstance(event, ResponseReceived):
                    status = int(dict(event.headers)[":status"])
                elif isinstance(event, StreamEnded):
                    return status, body
                elif hasattr(event, "data"):
                    body += event.data
            sock.sendall(conn.data_to_send())
    finally:
        sock.close()
    return status, body


def test_idle_upstream_h2_connection_sends_goaway_and_leaves_the_pool(kit: Any, proxy_cli: Any,
                                                                      tmp_path: Path) -> None:
    """--idle-timeout 0.6: a call that takes longer than that keeps its connection; once the connection
    has had no stream for the timeout the upstream sees GOAWAY NO_ERROR and the close, and the next call
    opens a new connection."""
    idle = 0.6

    async def main() -> tuple[RecordingH2Server, list[tuple[int, bytes]], dict[str, float]]:
        upstream = RecordingH2Server(delay=1.0)
        upstream_port = await upstream.start()
        port = kit.free_port()
        proc = await kit.standalone(proxy_cli, kit.http_config(port, {"h2": [upstream_port]}), tmp_path,
                                    "--idle-timeout", str(idle), port=port)
        answers = [await asyncio.to_thread(_h2c_call, port, "/slow")]
        deadline = time.monotonic() + 5
        while upstream.connections[0]["closed"] is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        upstream.delay = 0.0
        answers.append(await asyncio.to_thread(_h2c_call, port, "/again"))
        stats = counters((await kit.get(proc.admin_port, "/stats/prometheus")).body.decode())
        proc.terminate()
        assert "Traceback" not in proc.communicate(timeout=10)[1]
        upstream.server.close()
        return upstream, answers, stats

    upstream, answers, stats = kit.run(main())
    assert answers == [(200, b"ok /slow"), (200, b"ok /again")]
    first, second = upstream.connections[0], upstream.connections[1]
    assert first["streams"] == 1 and second["streams"] == 1
    goaway_at, code = first["goaway"]
    assert code == ErrorCodes.NO_ERROR
    # Not before the timeout after the stream ended (the proxy's clock is the same monotonic clock), and
    # not much after it (the deadline sweep may fire 0.1 s late; slack for a loaded machine).
    assert idle <= goaway_at - first["answered"] <= idle + 2.0, goaway_at - first["answered"]
    assert first["closed"] is not None and first["closed"] >= goaway_at
    assert stats["upstream_cx_idle_timeout"] == 1, stats
    assert len(upstream.connections) == 2
