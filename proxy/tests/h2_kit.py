"""HTTP/2 and gRPC test parts: a grpcio server with every RPC shape, a blocking HTTP/2 client (the h2
package as a client library over a real socket), hand-built frames for what h2 itself would refuse to
send (the attack shapes), and an HTTP/2 server that never answers."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, StreamEnded, StreamReset

SERVICE = "meshbox.test.Echo"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Frame types and flags (RFC 9113 6).
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM, END_HEADERS = 0x1, 0x4


class EchoServer:
    """A grpcio server on 127.0.0.1 with every RPC shape on raw bytes, and methods that fail on purpose."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.calls = 0
        self.blobs_sent = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = {
            "Say": grpc.unary_unary_rpc_method_handler(self._say),
            "Count": grpc.unary_stream_rpc_method_handler(self._count),
            "Sum": grpc.stream_unary_rpc_method_handler(self._sum),
            "Echo": grpc.stream_stream_rpc_method_handler(self._echo),
            "Blob": grpc.unary_stream_rpc_method_handler(self._blob),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _say(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        return self.name + b" says " + request

    def _count(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(request)):
            yield b"%d" % i

    def _sum(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return b"%d" % sum(int(r) for r in requests)

    def _echo(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for r in requests:
            yield r.upper()

    def _blob(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        """``request`` messages of 64 KiB each (a big response for flow-control tests)."""
        for _ in range(int(request)):
            self.blobs_sent += 1
            yield b"b" * 65536

    def stop(self) -> None:
        self.server.stop(None)


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", sid) + payload


def request_headers(port: int, path: str, extra: list[tuple[str, str]] | None = None,
                    grpc: bool = True) -> list[tuple[str, str]]:
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"), (":path", path)]
    if grpc:
        headers += [("content-type", "application/grpc"), ("te", "trailers")]
    return headers + (extra or [])


def grpc_message(payload: bytes) -> bytes:
    """One length-prefixed gRPC message (uncompressed)."""
    return b"\0" + struct.pack(">I", len(payload)) + payload


class H2Client:
    """One HTTP/2 connection with prior knowledge; events are collected per stream."""

    def __init__(self, port: int, timeout: float = 5) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.events: list[Any] = []
        self.closed = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, headers: list[tuple[str, str]], body: bytes = b"", end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, headers, end_stream=end and not body)
        if body:
            self.conn.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    def read(self, until: Any, timeout: float = 5) -> list[Any]:
        """Read events until ``until(events)`` is true, the peer closes, or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        while not until(self.events) and not self.closed:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
                break
            self.events += self.conn.receive_data(data)
            self.flush()
        return self.events

    def finished(self, sid: int) -> bool:
        return any(isinstance(e, (StreamEnded, StreamReset)) and e.stream_id == sid for e in self.events)

    def goaway(self) -> ConnectionTerminated | None:
        return next((e for e in self.events if isinstance(e, ConnectionTerminated)), None)

    def close(self) -> None:
        self.sock.close()


async def scripted_h2_server(answer: str = "silent") -> tuple[Any, int, list[Any]]:
    """An HTTP/2 server in the caller's loop whose answer to every stream is scripted: ``silent`` (never
    answers), ``reset-after-head`` (a 200 head, then RST_STREAM INTERNAL_ERROR), ``hello`` (once the
    request ended: 200, the body ``hello h2``, END_STREAM). Returns the server, its port and the h2
    events it received (to see what reached the upstream: heads, resets)."""
    import asyncio

    from h2.errors import ErrorCodes
    from h2.events import RequestReceived, StreamEnded

    seen: list[Any] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                seen.append(event)
                if isinstance(event, RequestReceived) and answer == "reset-after-head":
                    conn.send_headers(event.stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc")])
                    writer.write(conn.data_to_send())
                    await asyncio.sleep(0.05)
                    conn.reset_stream(event.stream_id, ErrorCodes.INTERNAL_ERROR)
                if isinstance(event, StreamEnded) and answer == "hello":
                    conn.send_headers(event.stream_id, [(b":status", b"200"), (b"content-type", b"text/plain")])
                    conn.send_data(event.stream_id, b"hello h2", end_stream=True)
            writer.write(conn.data_to_send())
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


async def silent_h2_server() -> tuple[Any, int]:
    """An HTTP/2 server that takes every stream and never answers: what answers a call to it can only be
    the proxy. Returns the server and its port."""
    server, port, _ = await scripted_h2_server("silent")
    return server, port
