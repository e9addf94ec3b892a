"""The exact bytes of the response heads the proxy writes downstream.

The proxy serializes a response head inline (not through codec.writer) because it runs for every request;
these tests pin the result byte for byte: upstream headers in order minus hop-by-hop ones and the ones a
Connection header names, then x-envoy-upstream-service-time, then the framing and connection headers the
proxy adds. Real sockets: a raw client, the proxy and a backend on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

_UST = re.compile(rb"x-envoy-upstream-service-time: \d+\r\n")


def _heads(data: bytes) -> list[bytes]:
    """Response heads in ``data`` with the service time (a measured value) replaced by N."""
    heads = [part.split(b"\r\n\r\n")[0] + b"\r\n\r\n" for part in data.split(b"HTTP/1.")[1:]]
    return [_UST.sub(b"x-envoy-upstream-service-time: N\r\n", b"HTTP/1." + h) for h in heads]


async def _answer(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
    if req.target == b"/sized":
        writer.write(b"HTTP/1.1 200 OK\r\nserver: t\r\nconnection: keep-alive, x-private\r\nx-private: 1\r\n"
                     b"keep-alive: timeout=5\r\ncontent-length: 2\r\nx-after: z\r\n\r\nok")
        return True
    # No length: read until the upstream closes.
    writer.write(b"HTTP/1.1 404 Whatever\r\ncontent-type: text/plain\r\n\r\nnope")
    return False


@pytest.mark.parametrize("codec", ["httptools", "h11"])
def test_response_heads_byte_for_byte(kit: Any, tmp_path: Path, codec: str) -> None:
    async def main() -> None:
        backend = await kit.Backend("b", _answer).start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path, codec=codec):
            # HTTP/1.1: kept alive, then a length-less body re-chunked, then closed on request.
            data11, closed11 = await kit.raw_exchange(
                port, b"GET /sized HTTP/1.1\r\nhost: svc\r\n\r\n"
                      b"GET /unsized HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n")
            # HTTP/1.0 asking for keep-alive gets it said explicitly; a length-less body closes instead.
            data10, closed10 = await kit.raw_exchange(
                port, b"GET /sized HTTP/1.0\r\nhost: svc\r\nconnection: keep-alive\r\n\r\n"
                      b"GET /unsized HTTP/1.0\r\nhost: svc\r\nconnection: keep-alive\r\n\r\n")
        backend.close()
        assert closed11 and closed10
        assert _heads(data11) == [
            b"HTTP/1.1 200 OK\r\nserver: t\r\ncontent-length: 2\r\nx-after: z\r\n"
            b"x-envoy-upstream-service-time: N\r\n\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\nx-envoy-upstream-service-time: N\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        ]
        assert data11.endswith(b"\r\n\r\n4\r\nnope\r\n0\r\n\r\n")
        assert _heads(data10) == [
            b"HTTP/1.0 200 OK\r\nserver: t\r\ncontent-length: 2\r\nx-after: z\r\n"
            b"x-envoy-upstream-service-time: N\r\nconnection: keep-alive\r\n\r\n",
            b"HTTP/1.0 404 Not Found\r\ncontent-type: text/plain\r\nx-envoy-upstream-service-time: N\r\n"
            b"connection: close\r\n\r\n",
        ]
        assert data10.endswith(b"\r\n\r\nnope")

    kit.run(main())


def test_reason_phrases_are_those_of_http_status() -> None:
    """The proxy's own table (kept out of the proxy's memory: no enum) says what http.HTTPStatus says."""
    from http import HTTPStatus

    from meshbox.proxy.codec.reason_phrases import REASONS

    assert {s.value: s.phrase.encode() for s in HTTPStatus} == REASONS
