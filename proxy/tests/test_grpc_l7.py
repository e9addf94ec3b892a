"""Real gRPC (grpcio server and client, HTTP/2 with prior knowledge) through HTTP listeners at L7: one
exchange per call, routed, balanced, retried, timed out and logged per call."""

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
    """A grpcio server on 127.0.0.1 with every RPC shape on raw bytes, and methods that fail on purpose."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.calls = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        handlers = {
            "Say": grpc.unary_unary_rpc_method_handler(self._say),
            "Count": grpc.unary_stream_rpc_method_handler(self._count),
            "Sum": grpc.stream_unary_rpc_method_handler(self._sum),
            "Echo": grpc.stream_stream_rpc_method_handler(self._echo),
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

    def stop(self) -> None:
        self.server.stop(None)


def _all_shapes(port: int) -> tuple[bytes, list[bytes], bytes, list[bytes]]:
    """Unary, server-, client- and bidi-streaming calls on one channel (one HTTP/2 connection)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        say = channel.unary_unary(f"/{SERVICE}/Say")
        count = channel.unary_stream(f"/{SERVICE}/Count")
        total = channel.stream_unary(f"/{SERVICE}/Sum")
        echo = channel.stream_stream(f"/{SERVICE}/Echo")
        first = say(b"hello", timeout=5)
        streamed = list(count(b"5", timeout=5))
        summed = total(iter([b"1", b"2", b"39"]), timeout=5)
        echoed = list(echo(iter([b"a", b"bc", b"d"]), timeout=5))
    return first, streamed, summed, echoed


@pytest.fixture
def backend() -> Iterator[EchoServer]:
    server = EchoServer("grpc-backend")
    yield server
    server.stop()


def test_every_rpc_shape_is_an_exchange_per_call(kit: Any, tmp_path: Path, backend: EchoServer) -> None:
    async def main() -> None:
        port = kit.free_port()
        config = kit.http_config(port, {"grpc": [backend.port]}, direction="INBOUND")
        async with kit.proxy(config, tmp_path) as p:
            loop = asyncio.get_running_loop()
            first, streamed, summed, echoed = await loop.run_in_executor(None, _all_shapes, port)
            lines = await p.wait_log(4)
            counters = dict(p.ctx.stats.counters)
        assert first == b"grpc-backend says hello"
        assert streamed == [b"0", b"1", b"2", b"3", b"4"]
        assert summed == b"42"
        assert echoed == [b"A", b"BC", b"D"]
        assert counters["downstream_cx_http2"] == 1
        assert len(lines) == 4, lines
        paths = [kit.log_fields(line)[1] for line in lines]
        assert paths == [f"POST /{SERVICE}/{m} HTTP/2" for m in ("Say", "Count", "Sum", "Echo")]

    kit.run(main())
