"""HTTP/2 connection rules through an in-process proxy, over real sockets with h2 as the client:
SETTINGS and PING, GOAWAY on drain and when a config swap removes the listener, RST_STREAM passed on
in both directions, trailers both ways."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes

from proxy.tests.h2_kit import SERVICE, EchoServer, H2Client, grpc_message, request_headers, scripted_h2_server

FORMAT = "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %GRPC_STATUS%\n"


@pytest.fixture
def backend() -> Iterator[EchoServer]:
    server = EchoServer("backend")
    yield server
    server.stop()


def _in_thread(fn: Any, *args: Any) -> Any:
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


def test_settings_and_ping(kit: Any, tmp_path: Path, backend: EchoServer) -> None:
    async def main() -> None:
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"grpc": [backend.port]}), tmp_path):
            client = await _in_thread(H2Client, port)
            client.conn.ping(b"meshbox!")
            client.flush()
            events = await _in_thread(client.read, lambda evs: any(isinstance(e, PingAckReceived) for e in evs))
            client.close()
        (settings,) = [e for e in events if isinstance(e, RemoteSettingsChanged)]
        changed = {code: s.new_value for code, s in settings.changed_settings.items()}
        assert changed[SettingCodes.MAX_CONCURRENT_STREAMS] == 100
        assert changed[SettingCodes.MAX_HEADER_LIST_SIZE] == 65536
        assert changed[SettingCodes.INITIAL_WINDOW_SIZE] == 256 * 1024
        (ack,) = [e for e in events if isinstance(e, PingAckReceived)]
        assert ack.ping_data == b"meshbox!"

    kit.run(main())


def test_goaway_on_drain_lets_the_stream_in_flight_finish(kit: Any, tmp_path: Path, backend: EchoServer) -> None:
    async def main() -> None:
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"grpc": [backend.port]}), tmp_path, fmt=FORMAT) as p:
            client = await _in_thread(H2Client, port)
            sid = client.request(request_headers(port, f"/{SERVICE}/Sum"), grpc_message(b"1"), end=False)
            await asyncio.sleep(0.2)
            p.server.drain()
            events = await _in_thread(client.read, lambda evs: any(isinstance(e, ConnectionTerminated) for e in evs))
            (goaway,) = [e for e in events if isinstance(e, ConnectionTerminated)]
            assert goaway.error_code == ErrorCodes.NO_ERROR and goaway.last_stream_id == sid
            # The call started before the GOAWAY still completes, then the proxy closes the connection.
            # (h2 as a client takes any GOAWAY as the end of the connection, unlike RFC 9113 6.8, which
            # lets streams up to last_stream_id go on: put its state machine back to carry on.)
            client.conn.state_machine.state = ConnectionState.CLIENT_OPEN
            client.conn.send_data(sid, grpc_message(b"41"), end_stream=True)
            client.flush()
            events = await _in_thread(client.read, lambda _: False, 3)
            lines = await p.wait_log(1)
            client.close()
        body = b"".join(e.data for e in events if isinstance(e, DataReceived))
        assert body == grpc_message(b"42")
        (trailers,) = [dict(e.headers) for e in events if isinstance(e, TrailersReceived)]
        assert trailers["grpc-status"] == "0"
        assert client.closed
        assert lines == [f"/{SERVICE}/Sum 200 - Ok"]

    kit.run(main())


def test_goaway_when_a_config_swap_removes_the_listener(kit: Any, tmp_path: Path, backend: EchoServer) -> None:
    async def main() -> None:
        port, other = kit.free_port(), kit.free_port()
        async with kit.proxy(kit.http_config(port, {"grpc": [backend.port]}), tmp_path) as p:
            client = await _in_thread(H2Client, port)
            await _in_thread(client.read, lambda evs: any(isinstance(e, RemoteSettingsChanged) for e in evs))
            await p.server.apply(kit.http_config(other, {"grpc": [backend.port]}))
            events = await _in_thread(client.read, lambda evs: any(isinstance(e, ConnectionTerminated) for e in evs))
            client.close()
        (goaway,) = [e for e in events if isinstance(e, ConnectionTerminated)]
        assert goaway.error_code == ErrorCodes.NO_ERROR

    kit.run(main())


def test_client_reset_reaches_the_upstream(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        upstream, up_port, seen = await scripted_h2_server("silent")
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"grpc": [up_port]}), tmp_path, fmt=FORMAT) as p:
            client = await _in_thread(H2Client, port)
            sid = client.request(request_headers(port, f"/{SERVICE}/Say"), grpc_message(b"x"))
            for _ in range(100):
                if any(isinstance(e, RequestReceived) for e in seen):
                    break
                await asyncio.sleep(0.02)
            client.conn.reset_stream(sid, ErrorCodes.CANCEL)
            client.flush()
            for _ in range(100):
                if any(isinstance(e, StreamReset) for e in seen):
                    break
                await asyncio.sleep(0.02)
            lines = await p.wait_log(1)
            client.close()
        upstream.close()
        (reset,) = [e for e in seen if isinstance(e, StreamReset)]
        assert reset.error_code == ErrorCodes.CANCEL
        assert lines == [f"/{SERVICE}/Say 0 DC -"]

    kit.run(main())


def test_upstream_reset_reaches_the_client(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        upstream, up_port, _ = await scripted_h2_server("reset-after-head")
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"grpc": [up_port]}), tmp_path, fmt=FORMAT) as p:
            client = await _in_thread(H2Client, port)
            sid = client.request(request_headers(port, f"/{SERVICE}/Say"), grpc_message(b"x"))
            events = await _in_thread(client.read, lambda _: client.finished(sid))
            lines = await p.wait_log(1)
            client.close()
        upstream.close()
        (reset,) = [e for e in events if isinstance(e, StreamReset)]
        assert reset.error_code == ErrorCodes.INTERNAL_ERROR
        assert not any(isinstance(e, StreamEnded) for e in events)
        assert lines == [f"/{SERVICE}/Say 200 UR -"]

    kit.run(main())


def _get(port: int, path: str, authority: str | None = None) -> tuple[dict[str, str], bytes]:
    client = H2Client(port)
    headers = [(":method", "GET"), (":scheme", "http"), (":authority", authority or f"127.0.0.1:{port}"),
               (":path", path), ("user-agent", "h2-test")]
    sid = client.request(headers)
    events = client.read(lambda _: client.finished(sid))
    client.close()
    (head,) = [dict(e.headers) for e in events if isinstance(e, ResponseReceived)]
    return head, b"".join(e.data for e in events if isinstance(e, DataReceived))


def test_plain_http2_requests_and_local_answers(kit: Any, tmp_path: Path) -> None:
    """Not only gRPC: a GET over HTTP/2 is routed by :authority and answered by an HTTP/2 upstream, and
    the proxy's own answers (no route, no endpoint) are plain HTTP/2 responses."""
    async def main() -> None:
        upstream, up_port, seen = await scripted_h2_server("hello")
        port = kit.free_port()
        config = kit.http_config(port, {"web": [up_port], "empty": []}, domains=["web.local"],
                                 routes=[{"match": {"prefix": "/empty"}, "clusters": [{"cluster": "empty"}]},
                                         {"clusters": [{"cluster": "web"}]}])
        fmt = "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %GRPC_STATUS%\n"
        async with kit.proxy(config, tmp_path, fmt=fmt) as p:
            ok = await _in_thread(_get, port, "/hello", "web.local")
            no_route = await _in_thread(_get, port, "/hello", "other.local")
            no_host = await _in_thread(_get, port, "/empty", "web.local")
            lines = await p.wait_log(3)
        upstream.close()
        head, body = ok
        assert head[":status"] == "200" and body == b"hello h2" and "x-envoy-upstream-service-time" in head
        (request,) = [dict(e.headers) for e in seen if isinstance(e, RequestReceived)]
        assert request[b":authority"] == b"web.local" and request[b":path"] == b"/hello"
        assert len(request[b"x-request-id"]) == 36 and request[b"user-agent"] == b"h2-test"
        assert no_route[0][":status"] == "404"
        assert no_host[0][":status"] == "503" and no_host[1] == b"no healthy upstream"
        assert lines == ["GET /hello HTTP/2 200 - -", "GET /hello HTTP/2 404 NR -", "GET /empty HTTP/2 503 UH -"]

    kit.run(main())
