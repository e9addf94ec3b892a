"""Real gRPC (HTTP/2 with prior knowledge) through an HTTP listener: tunnelled at L4 to the route's cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

SERVICE = "meshbox.test.Echo"


class EchoServer:
    """A grpcio server on 127.0.0.1 with a unary and a server-streaming method on raw bytes."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handlers = {
            "Say": grpc.unary_unary_rpc_method_handler(self._say),
            "Count": grpc.unary_stream_rpc_method_handler(self._count),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _say(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self.name + b" says " + request

    def _count(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(request)):
            yield b"%d" % i

    def stop(self) -> None:
        self.server.stop(None)


def _calls(port: int) -> tuple[bytes, list[bytes], bytes]:
    """A unary call, a streaming call and a second unary call on one channel (one HTTP/2 connection)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        say = channel.unary_unary(f"/{SERVICE}/Say")
        count = channel.unary_stream(f"/{SERVICE}/Count")
        first = say(b"hello", timeout=5)
        streamed = list(count(b"5", timeout=5))
        again = say(b"again", timeout=5)
    return first, streamed, again


def test_grpc_unary_and_streaming_through_the_proxy(kit: Any, tmp_path: Path) -> None:
    server = EchoServer("grpc-backend")
    try:
        async def main() -> None:
            port = kit.free_port()
            config = kit.http_config(port, {"grpc": [server.port]}, direction="INBOUND")
            async with kit.proxy(config, tmp_path) as p:
                loop = asyncio.get_running_loop()
                first, streamed, again = await loop.run_in_executor(None, _calls, port)
                lines = await p.wait_log(1)
                counters = dict(p.ctx.stats.counters)
                tcp = dict(p.ctx.stats.tcp)
            assert first == b"grpc-backend says hello" and again == b"grpc-backend says again"
            assert streamed == [b"0", b"1", b"2", b"3", b"4"]
            assert counters["downstream_cx_http2_tunnelled"] == 1
            assert len(lines) == 1, lines
            fields = kit.log_fields(lines[0])
            # Logged like a TCP connection: no method/path/protocol, the endpoint as upstream host.
            assert fields[1] == "- - -" and fields[2:4] == ["0", "-"]
            assert int(fields[4]) > 24 and int(fields[5]) > 0  # at least the preface in, frames out
            assert fields[-1] == f"127.0.0.1:{server.port}"
            (labels, flags), = tcp
            assert labels[0] == "destination" and labels[7] == "grpc.default.svc.cluster.local" and flags == "-"

        kit.run(main())
    finally:
        server.stop()


@pytest.mark.parametrize("split", [3, 23])
def test_preface_split_across_reads_is_still_recognised(kit: Any, tmp_path: Path, split: int) -> None:
    """The 24-byte preface may arrive in pieces; HTTP/1.1 starting with "P" (POST) must still be HTTP/1.1."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    async def main() -> None:
        echo_server = await asyncio.start_server(_echo_raw, "127.0.0.1", 0)
        raw_port = echo_server.sockets[0].getsockname()[1]
        backend = await kit.Backend().start()
        port = kit.free_port()
        # HTTP/1.1 requests with x-h1 go to an HTTP backend; the tunnel takes the route a bare "/" takes.
        routes = [{"match": {"prefix": "/", "headers": [{"name": "x-h1", "exact": "yes"}]},
                   "clusters": [{"cluster": "http", "weight": 1}]},
                  {"match": {"prefix": "/"}, "clusters": [{"cluster": "raw", "weight": 1}]}]
        config = kit.http_config(port, {"raw": [raw_port], "http": [backend.port]}, routes=routes)
        async with kit.proxy(config, tmp_path):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(preface[:split])
            await asyncio.sleep(0.05)
            writer.write(preface[split:] + b"frames")
            echoed = await asyncio.wait_for(reader.readexactly(len(preface) + 6), 3)
            writer.close()
            client = await kit.Client.connect(port)
            posted = await client.request("POST", body=b"x", headers=[("x-h1", "yes")])
            client.close()
        echo_server.close()
        assert echoed == preface + b"frames"
        assert posted.status == 200 and posted.json()["body"] == "x"

    kit.run(main())


async def _echo_raw(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
    writer.close()
