"""Regression tests for what the bounded fuzz found (issue #18, fuzz/): a standalone ``meshbox-proxy``
process (the build as installed, compiled by default), raw client sockets and a backend that records
what it receives.

- N1: bytes after an Upgrade request are held until its answer (a refused upgrade must not smuggle
  them upstream); an Upgrade request with a body is refused.
- N2: a request is sent again at most once after a pooled connection closed without answering, on a
  new connection, and only when it is idempotent and has no body.
- N3: a request the codec rejects mid-pipeline still lets the valid request before it be answered,
  however the bytes after it arrive.
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path
from typing import Any

import pytest

CODECS = ["httptools", "h11"]
_STATUS_LINE = re.compile(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3}) ")


def _statuses(data: bytes) -> list[int]:
    return [int(s) for s in _STATUS_LINE.findall(data)]


def _stderr(proc: Any) -> str:
    """Stop the proxy and return everything it wrote on stderr."""
    proc.terminate()
    proc.wait(timeout=5)
    return str(proc.stderr.read())


async def _start(kit: Any, proxy_cli: Any, tmp_path: Path, backend: Any, *args: str) -> tuple[int, Any]:
    port = kit.free_port()
    proc = await kit.standalone(proxy_cli, kit.http_config(port, {"svc": [backend.port]}), tmp_path, *args, port=port)
    return port, proc


@pytest.mark.parametrize("codec", CODECS)
def test_n1_refused_upgrade_never_forwards_the_bytes_after_it(kit: Any, proxy_cli: Any, tmp_path: Path,
                                                              codec: str) -> None:
    """N1: a request pipelined behind an Upgrade request that the backend refuses (200, not 101) never
    reaches the backend: the proxy answers the 200 with `connection: close` and closes."""
    attack = (b"GET /v/a HTTP/1.1\r\nhost: svc\r\nx-request-id: up1\r\nconnection: upgrade\r\nupgrade: fz-proto\r\n"
              b"\r\nGET /v/b HTTP/1.1\r\nhost: other.example\r\nx-request-id: up2\r\n\r\n")

    async def main() -> None:
        backend = await kit.Backend().start()
        port, proc = await _start(kit, proxy_cli, tmp_path, backend, "--codec", codec)
        received, closed = await kit.raw_exchange(port, attack, timeout=3)
        await asyncio.sleep(0.2)  # a smuggled request would reach the backend by now
        assert _statuses(received) == [200] and closed, received[:300]
        assert b"\r\nconnection: close\r\n" in received.lower()
        assert [r.target for r in backend.requests] == [b"/v/a"]
        assert b"/v/b" not in b"".join(backend.raw)
        assert "Traceback" not in _stderr(proc)

    kit.run(main())


async def _upgrading_backend(seen: bytearray) -> asyncio.Server:
    """A raw server that switches protocols on the first request and then echoes every byte back."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.extend(head)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: fz-proto\r\n\r\n")
        while data := await reader.read(65536):
            seen.extend(data)
            writer.write(data)
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def test_n1_accepted_upgrade_gets_the_held_bytes_then_the_rest(kit: Any, proxy_cli: Any, tmp_path: Path) -> None:
    """N1, the other side: after a 101 the bytes held since the Upgrade request go into the tunnel first,
    and reading resumes, so later bytes follow in order."""

    async def main() -> None:
        seen = bytearray()
        server = await _upgrading_backend(seen)
        port = kit.free_port()
        await kit.standalone(proxy_cli, kit.http_config(port, {"svc": [server.sockets[0].getsockname()[1]]}),
                             tmp_path, port=port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ws HTTP/1.1\r\nhost: svc\r\nconnection: upgrade\r\nupgrade: fz-proto\r\n\r\nearly-bytes;")
        got = b""
        async with asyncio.timeout(3):
            while b"early-bytes;" not in got:
                got += await reader.read(65536)
            writer.write(b"later-bytes")
            while not got.endswith(b"later-bytes"):
                got += await reader.read(65536)
        writer.close()
        server.close()
        assert got.startswith(b"HTTP/1.1 101 ") and got.endswith(b"\r\n\r\nearly-bytes;later-bytes"), got
        assert bytes(seen).endswith(b"\r\n\r\nearly-bytes;later-bytes")

    kit.run(main())


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("framing", [
    b"content-length: 38\r\n\r\nGET /v/b HTTP/1.1\r\nhost: svc\r\n\r\n\r\n\r\n",
    b"transfer-encoding: chunked\r\n\r\n3\r\nabc0\r\n\r\n",
    b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
])
def test_n1_upgrade_request_with_a_body_is_refused(kit: Any, proxy_cli: Any, tmp_path: Path, codec: str,
                                                   framing: bytes) -> None:
    """N1: an Upgrade request with a body gets a 400 and a close, and nothing of it goes upstream (llhttp
    would hand the body to the new protocol, other parsers read it first: an ambiguity)."""
    request = b"POST /v/c HTTP/1.1\r\nhost: svc\r\nx-request-id: up3\r\nconnection: upgrade\r\nupgrade: fz-proto\r\n"

    async def main() -> None:
        backend = await kit.Backend().start()
        port, proc = await _start(kit, proxy_cli, tmp_path, backend, "--codec", codec)
        received, closed = await kit.raw_exchange(port, request + framing, timeout=3)
        await asyncio.sleep(0.1)
        assert _statuses(received) == [400] and closed, received[:300]
        assert b"an upgrade request cannot have a body" in received
        assert backend.connections == 0 and not backend.requests
        # Content-Length 0 is no body: that upgrade request is forwarded (and refused by this backend).
        received, closed = await kit.raw_exchange(port, request + b"content-length: 0\r\n\r\n", timeout=3)
        assert _statuses(received) == [200] and closed, received[:300]
        assert [r.target for r in backend.requests] == [b"/v/c"]
        assert "Traceback" not in _stderr(proc)

    kit.run(main())


def test_n2_request_resent_once_on_a_new_connection_only_if_idempotent(kit: Any, proxy_cli: Any,
                                                                        tmp_path: Path) -> None:
    """N2: with five pooled connections, a GET whose connection the backend closes without answering is
    not sent again without a retry policy; with one (two retries) it is sent again once, on a new
    connection (not on the next pooled one), then answered 503 UC. A POST is never sent again."""

    async def handler(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        if req.target.startswith(b"/h/no_answer/"):
            return False  # close without a byte
        await asyncio.sleep(0.2)  # the warm-up requests overlap: one upstream connection each
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        return True

    def tries(backend: Any, target: bytes) -> list[Any]:
        return [r.peer for r in backend.requests if r.target == target]

    async def main() -> None:
        backend = await kit.Backend(handler=handler).start()
        plain, retrying = kit.free_port(), kit.free_port()
        await kit.standalone(proxy_cli, kit.http_config(plain, {"svc": [backend.port]}), tmp_path, port=plain)
        await kit.standalone(proxy_cli, kit.http_config(retrying, {"svc": [backend.port]}, retries=2), tmp_path,
                             port=retrying)
        for port in (plain, retrying):
            warm = await asyncio.gather(*(kit.get(port, f"/warm/{i}") for i in range(5)))
            assert [r.status for r in warm] == [200] * 5
        # (Several pooled connections per proxy: the next pooled one is there to be wrongly chosen.)
        assert len({r.peer for r in backend.requests}) >= 8
        pooled = {r.peer for r in backend.requests}
        opened = backend.connections

        assert (await kit.get(plain, "/h/no_answer/plain")).status == 503
        assert len(tries(backend, b"/h/no_answer/plain")) == 1

        assert (await kit.get(retrying, "/h/no_answer/get")).status == 503
        resent = tries(backend, b"/h/no_answer/get")
        assert len(resent) == 2 and resent[0] in pooled and resent[1] not in pooled, resent
        assert backend.connections == opened + 1

        assert (await kit.get(retrying, "/h/no_answer/post", method="POST", body=b"x")).status == 503
        assert (await kit.get(retrying, "/h/no_answer/patch", method="PATCH")).status == 503
        for target in (b"/h/no_answer/post", b"/h/no_answer/patch"):
            assert len(tries(backend, target)) == 1 and tries(backend, target)[0] in pooled

    kit.run(main())


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("bad", [
    b'POST /v/bad HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: "chunked"\r\n\r\n0\r\n\r\n',
    b"POST /v/bad HTTP/1.0\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
])
def test_n3_rejected_request_mid_pipeline_then_more_bytes(kit: Any, proxy_cli: Any, tmp_path: Path, codec: str,
                                                          bad: bytes) -> None:
    """N3: a valid request, then one the codec rejects, then more bytes in a later read while the first
    answer is still on its way: the first gets its 200, then the 400 and a close, and nothing escapes
    as a traceback."""

    async def slow(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.3)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        return True

    async def main() -> None:
        backend = await kit.Backend(handler=slow).start()
        port, proc = await _start(kit, proxy_cli, tmp_path, backend, "--codec", codec)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /v/ok HTTP/1.1\r\nhost: svc\r\n\r\n" + bad)
        await asyncio.sleep(0.1)
        writer.write(b"GET /v/more HTTP/1.1\r\nhost: svc\r\n\r\n")
        received = b""
        reset = False
        try:
            async with asyncio.timeout(3):
                while chunk := await reader.read(65536):
                    received += chunk
        except ConnectionResetError:
            # The proxy closed with the later bytes unread: the kernel resets, which may drop the 400.
            reset = True
        writer.close()
        stderr = _stderr(proc)
        assert "Traceback" not in stderr and "Fatal error" not in stderr, stderr[-2000:]
        assert _statuses(received)[:1] == [200] and _statuses(received) in ([200], [200, 400]), received[:400]
        assert reset or _statuses(received) == [200, 400]
        assert [r.target for r in backend.requests] == [b"/v/ok"]

    kit.run(main())


async def _slow_reading_backend(requests: list[int]) -> asyncio.Server:
    """A raw server with a small receive window that reads request bodies slowly (so the proxy's writes
    to it back up, pausing the client side, again and again), then answers 200; ``requests`` gets each
    body's size."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                match = re.search(rb"content-length: *(\d+)", head.lower())
                size = left = int(match.group(1)) if match else 0
                await asyncio.sleep(0.3)
                while left:
                    left -= len(await reader.readexactly(min(16 << 10, left)))
                    await asyncio.sleep(0.001)
                requests.append(size)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
    sock.bind(("127.0.0.1", 0))
    return await asyncio.start_server(serve, sock=sock, limit=16 << 10)


@pytest.mark.parametrize("codec", CODECS)
def test_n3_upstream_flow_control_never_feeds_a_rejected_pipeline(kit: Any, proxy_cli: Any, tmp_path: Path,
                                                                  codec: str) -> None:
    """N3, the timing the fuzz hit: an upload whose upstream writes back up (the proxy stops reading the
    client, and starts again when they drain), a request the codec rejects right behind it, and more
    bytes after that. The upload gets its 200, then the 400, and nothing escapes as a traceback."""
    body = b"u" * (16 << 20)
    tail = 200 << 10

    async def main() -> None:
        sizes: list[int] = []
        server = await _slow_reading_backend(sizes)
        port = kit.free_port()
        proc = await kit.standalone(proxy_cli, kit.http_config(port, {"svc": [server.sockets[0].getsockname()[1]]}),
                                    tmp_path, "--codec", codec, port=port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /up HTTP/1.1\r\nhost: svc\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body[:-tail]))
        await asyncio.sleep(0.2)  # the proxy's writes upstream are backed up now
        writer.write(body[-tail:] + b'POST /bad HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: "chunked"\r\n\r\n'
                     + b"x" * (512 << 10))
        received = b""
        try:
            async with asyncio.timeout(10):
                while chunk := await reader.read(65536):
                    received += chunk
        except ConnectionResetError:
            pass  # closed with bytes of ours unread: the reset may drop the 400, not the 200 before it
        writer.close()
        server.close()
        stderr = _stderr(proc)
        assert "Traceback" not in stderr and "Fatal error" not in stderr, stderr[-2000:]
        assert _statuses(received)[:1] == [200] and sizes == [len(body)], received[:400]

    kit.run(main())
