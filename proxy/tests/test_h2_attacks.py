"""Known HTTP/2 attacks as raw frames over real sockets against an in-process proxy: each one ends (or
bounds) only the attacking connection, while a gRPC channel connected before it keeps working on its
own connection. Also the flow-control promise: a client that never opens its window makes the proxy
buffer no more than the windows it granted upstream, then it is dropped after the stall timeout."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import hpack
import pytest
from h2.events import ConnectionTerminated, RemoteSettingsChanged, ResponseReceived

from meshbox.proxy.h2_link import CONNECTION_WINDOW, STREAM_WINDOW
from proxy.tests.h2_kit import (
    CONTINUATION,
    END_HEADERS,
    HEADERS,
    PING,
    PREFACE,
    SERVICE,
    SETTINGS,
    EchoServer,
    H2Client,
    frame,
    grpc_message,
    request_headers,
)

ENHANCE_YOUR_CALM = 11


@pytest.fixture
def backend() -> Iterator[EchoServer]:
    server = EchoServer("backend")
    yield server
    server.stop()


def _read_goaway(sock: socket.socket, timeout: float = 5) -> tuple[int | None, bool]:
    """Read until the proxy closes: (the error code of its GOAWAY if one came, closed)."""
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            closed = True
            break
        data += chunk
    else:
        closed = False
    if time.monotonic() >= deadline:
        closed = False
    code = None
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        if data[pos + 3] == 7 and pos + 9 + length <= len(data):
            code = int.from_bytes(data[pos + 13:pos + 17], "big")
        pos += 9 + length
    return code, closed


def _attack_beside_a_bystander(kit: Any, tmp_path: Path, backend: EchoServer,
                               attack: Callable[[int], Any]) -> tuple[Any, dict[str, int]]:
    """Run ``attack(port)`` (blocking, in a thread) while a gRPC channel connected before it stays up;
    returns what the attack returned and the proxy's counters."""
    result: list[Any] = []
    counters: dict[str, int] = {}

    async def main() -> None:
        port = kit.free_port()
        config = kit.http_config(port, {"grpc": [backend.port]})
        async with kit.proxy(config, tmp_path) as p:
            p.ctx.body_idle_timeout = 1.0
            loop = asyncio.get_running_loop()
            channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            say = channel.unary_unary(f"/{SERVICE}/Say")
            try:
                assert await loop.run_in_executor(None, lambda: say(b"before", timeout=5)) == b"backend says before"
                result.append(await loop.run_in_executor(None, attack, port))
                assert await loop.run_in_executor(None, lambda: say(b"after", timeout=5)) == b"backend says after"
            finally:
                channel.close()
            counters.update(p.ctx.stats.counters)

    kit.run(main())
    # The bystander kept its one connection through the attack.
    assert counters["downstream_cx_http2"] == 2, counters
    return result[0], counters


def test_rapid_reset_is_cut_off(kit: Any, tmp_path: Path, backend: EchoServer) -> None:
    def attack(port: int) -> tuple[int | None, bool, int]:
        client = H2Client(port)
        sent = 0
        try:
            for _ in range(1000):
                sid = client.request(request_headers(port, f"/{SERVICE}/Say"), grpc_message(b"x"))
                client.conn.reset_stream(sid)
                client.flush()
                sent += 1
        except OSError:
            pass
        code, closed = _read_goaway(client.sock)
        client.close()
        return code, closed, sent

    (code, closed, sent), counters = _attack_beside_a_bystander(kit, tmp_path, backend, attack)
    assert code == ENHANCE_YOUR_CALM and closed
    assert counters["downstream_cx_h2_rapid_reset"] == 1
    # Cut off after about RESET_FLOOR streams, not the thousand the client meant to open.
    assert backend.calls < 300, (backend.calls, sent)


def test_continuation_flood_is_refused(kit: Any, tmp_path: Path, backend: EchoServer) -> None:
    def attack(port: int) -> tuple[int | None, bool]:
        sock = socket.create_connection(("127.0.0.1", port))
        block = hpack.Encoder().encode(request_headers(port, f"/{SERVICE}/Say"))
        frames = [PREFACE, frame(SETTINGS, 0, 0), frame(HEADERS, 0, 1, block)]
        frames += [frame(CONTINUATION, 0, 1, b"\x40\x01a\x01b" * 64)] * 10000
        with contextlib.suppress(OSError):
            sock.sendall(b"".join(frames))
        result = _read_goaway(sock)
        sock.close()
        return result

    (code, closed), counters = _attack_beside_a_bystander(kit, tmp_path, backend, attack)
    assert code is not None and code != 0 and closed
    assert counters["downstream_cx_h2_protocol_error"] == 1
    assert backend.calls == 2  # only the bystander's


def test_hpack_bomb_is_refused(kit: Any, tmp_path: Path, backend: EchoServer) -> None:
    """A header block of about 5 KiB that decodes to 4 MB: one 4 KB header indexed, then named 1,000 times."""
    def attack(port: int) -> tuple[int | None, bool, int]:
        sock = socket.create_connection(("127.0.0.1", port))
        headers = request_headers(port, f"/{SERVICE}/Say") + [("x-bomb", "a" * 4000)] * 1000
        block = hpack.Encoder().encode(headers)
        with contextlib.suppress(OSError):
            sock.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS | 1, 1, block))
        code, closed = _read_goaway(sock)
        sock.close()
        return code, closed, len(block)

    (code, closed, size), _ = _attack_beside_a_bystander(kit, tmp_path, backend, attack)
    assert size < 8000
    assert code is not None and code != 0 and closed
    assert backend.calls == 2


@pytest.mark.parametrize("kind", [SETTINGS, PING])
def test_settings_and_ping_floods_are_cut_off(kit: Any, tmp_path: Path, backend: EchoServer, kind: int) -> None:
    def attack(port: int) -> tuple[int | None, bool]:
        sock = socket.create_connection(("127.0.0.1", port))
        flood = frame(kind, 0, 0, b"" if kind == SETTINGS else b"12345678") * 20000
        with contextlib.suppress(OSError):
            sock.sendall(PREFACE + frame(SETTINGS, 0, 0) + flood)
        result = _read_goaway(sock)
        sock.close()
        return result

    (code, closed), counters = _attack_beside_a_bystander(kit, tmp_path, backend, attack)
    assert code == ENHANCE_YOUR_CALM and closed
    assert counters["downstream_cx_h2_control_flood"] == 1


def test_zero_window_reader_is_bounded_then_dropped(kit: Any, tmp_path: Path, backend: EchoServer) -> None:
    """A client that asks for 16 MiB and never opens its window: the proxy holds at most the windows it
    granted upstream (the server's stream blocks), and drops the connection after the stall timeout."""
    probes: dict[str, Any] = {}

    async def main() -> None:
        port = kit.free_port()
        config = kit.http_config(port, {"grpc": [backend.port]})
        async with kit.proxy(config, tmp_path) as p:
            p.ctx.body_idle_timeout = 1.0
            loop = asyncio.get_running_loop()
            client = await loop.run_in_executor(None, H2Client, port)
            client.conn.update_settings({4: 0})  # SETTINGS_INITIAL_WINDOW_SIZE = 0
            client.request(request_headers(port, f"/{SERVICE}/Blob"), grpc_message(b"256"))
            await loop.run_in_executor(None, lambda: client.read(
                lambda evs: any(isinstance(e, ResponseReceived) for e in evs), 3))
            await asyncio.sleep(0.5)
            (down,) = [c for c in p.ctx.connections if hasattr(c, "streams")]
            probes["queued"] = sum(len(d) for out in down.out.values() for d, _ in out.data)
            probes["blobs"] = backend.blobs_sent
            events = await loop.run_in_executor(None, lambda: client.read(lambda _: False, 3))
            probes["goaway"] = next((e for e in events if isinstance(e, ConnectionTerminated)), None)
            probes["closed"] = client.closed
            probes["settings"] = any(isinstance(e, RemoteSettingsChanged) for e in events)
            client.close()
            probes["counters"] = dict(p.ctx.stats.counters)

    kit.run(main())
    assert probes["queued"] <= STREAM_WINDOW
    # The server could not run far ahead either: what it produced fits in the windows on the way
    # (the proxy's upstream stream window plus grpcio's own buffering), far from 256 messages.
    assert probes["blobs"] * 65536 < STREAM_WINDOW + CONNECTION_WINDOW + 4 * 65536, probes["blobs"]
    assert probes["goaway"] is not None and probes["goaway"].error_code == ENHANCE_YOUR_CALM
    assert probes["closed"]
    assert probes["counters"]["downstream_cx_h2_flow_control_stall"] == 1
