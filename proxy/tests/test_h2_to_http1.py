"""HTTP/2 clients in front of an HTTP/1.1-only upstream (a cluster with upstream protocol HTTP1: a Service
port named ``http``): each stream goes upstream as one HTTP/1.1 request on pooled connections. Real sockets
throughout: the h2 package as the client, the suite's h11 backend as the upstream, an in-process proxy."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from h2.errors import ErrorCodes
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset, WindowUpdated

from conftest import need  # type: ignore[import-not-found]
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.proxy.http2_downstream import Http2Downstream
from meshbox.proxy.http2_to_http1 import RESPONSE_HIGH
from proxy.tests.h2_kit import H2Client

FORMAT = "%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_SENT%\n"


def _config(kit: Any, port: int, backend_port: int, protocol: int = pc.HTTP1) -> pc.ProxyConfig:
    config = kit.http_config(port, {"app": [backend_port]})
    config.clusters[0].upstream_protocol = protocol
    return config


def _in_thread(fn: Any, *args: Any) -> Any:
    return asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _get(port: int, path: str, extra: list[tuple[str, str]] | None = None,
         method: str = "GET") -> list[tuple[str, str]]:
    return [(":method", method), (":scheme", "http"), (":authority", f"app.example:{port}"), (":path", path),
            *(extra or [])]


def _answer(client: H2Client, sid: int) -> tuple[dict[str, str], bytes, StreamReset | None]:
    """The response head, body and reset (if any) of stream ``sid`` among the client's events."""
    head: dict[str, str] = {}
    body = b""
    reset = None
    for e in client.events:
        if getattr(e, "stream_id", None) != sid:
            continue
        if isinstance(e, ResponseReceived):
            head = {str(n): str(v) for n, v in e.headers}
        elif isinstance(e, DataReceived):
            body += e.data
        elif isinstance(e, StreamReset):
            reset = e
    return head, body, reset


def test_get_and_post_become_http11_requests(kit: Any, tmp_path: Path) -> None:
    seen_heads: list[list[tuple[bytes, bytes]]] = []

    async def hop_by_hop(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        seen_heads.append(req.headers)
        if req.target != b"/hop":
            return await kit.echo(backend, req, writer)
        writer.write(b"HTTP/1.1 200 OK\r\nconnection: keep-alive, x-private\r\nkeep-alive: timeout=5\r\n"
                     b"x-private: secret\r\nx-kept: yes\r\ncontent-length: 2\r\n\r\nok")
        return True

    async def main() -> None:
        backend = await kit.Backend("app", hop_by_hop).start()
        port = kit.free_port()
        async with kit.proxy(_config(kit, port, backend.port), tmp_path, fmt=FORMAT) as p:
            client = await _in_thread(H2Client, port)
            get = client.request(_get(port, "/get?x=1", [("te", "trailers"), ("cookie", "a=1"), ("cookie", "b=2")]))
            post = client.request(_get(port, "/post", [("content-type", "text/plain")], "POST"), b"hello body")
            sized = client.request(_get(port, "/sized", [("content-length", "5")], "POST"), b"12345")
            hop = client.request(_get(port, "/hop"))
            await _in_thread(client.read, lambda _: all(client.finished(s) for s in (get, post, sized, hop)))
            lines = await p.wait_log(4)
            client.close()
        backend.close()
        head, body, reset = _answer(client, get)
        assert reset is None and head[":status"] == "200" and head["x-backend"] == "app"
        seen = json.loads(body)
        assert seen["method"] == "GET" and seen["target"] == "/get?x=1"
        names = [n for n, _ in seen["headers"]]
        assert ["app.example:" + str(port)] == [v for n, v in seen["headers"] if n == "host"]
        assert not [n for n in names if n.startswith(":")] and "te" not in names
        assert [v for n, v in seen["headers"] if n == "cookie"] == ["a=1; b=2"]
        head, body, _ = _answer(client, post)
        seen = json.loads(body)
        assert seen["method"] == "POST" and seen["body"] == "hello body"
        assert ("transfer-encoding", "chunked") in [tuple(h) for h in seen["headers"]]
        seen = json.loads(_answer(client, sized)[1])
        assert seen["body"] == "12345" and "transfer-encoding" not in [n for n, _ in seen["headers"]]
        head, body, _ = _answer(client, hop)
        assert body == b"ok" and head["x-kept"] == "yes"
        assert not {"connection", "keep-alive", "x-private"} & set(head)
        # One HTTP/1.1 request per stream, each logged as the HTTP/2 request it was.
        assert len(backend.requests) == 4
        assert sorted(lines) == sorted(["GET /get?x=1 HTTP/2 200 - " + str(len(_answer(client, get)[1])),
                                        "POST /post HTTP/2 200 - " + str(len(_answer(client, post)[1])),
                                        "POST /sized HTTP/2 200 - " + str(len(_answer(client, sized)[1])),
                                        "GET /hop HTTP/2 200 - 2"])

    kit.run(main())


def test_concurrent_streams_each_get_their_own_answer(kit: Any, tmp_path: Path) -> None:
    async def slow_echo(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        # Answers out of order, so a mixed-up pairing of streams and connections would show.
        await asyncio.sleep(0.001 * (int(req.target[3:]) % 7))
        return await kit.echo(backend, req, writer)

    async def main() -> None:
        backend = await kit.Backend("app", slow_echo).start()
        port = kit.free_port()
        async with kit.proxy(_config(kit, port, backend.port), tmp_path) as p:
            client = await _in_thread(H2Client, port)
            sids = {client.request(_get(port, f"/n/{i}", method="POST"), b"body %d" % i): i for i in range(40)}
            await _in_thread(client.read, lambda _: all(client.finished(s) for s in sids))
            client.close()
            pooled = len(p.server.ctx.snapshot.clusters["app"].hosts[0].idle)
        backend.close()
        for sid, i in sids.items():
            head, body, reset = _answer(client, sid)
            assert reset is None and head[":status"] == "200"
            seen = json.loads(body)
            assert seen["target"] == f"/n/{i}" and seen["body"] == f"body {i}"
        assert len(backend.requests) == 40
        # Pooled HTTP/1.1 connections, one request at a time each: never more than the streams in flight.
        assert 1 <= backend.connections <= 40 and pooled == backend.connections

    kit.run(main())


def test_streams_wait_for_the_clusters_connection_limit(kit: Any, tmp_path: Path) -> None:
    """max_connections 1, max_pending_requests 1: of three streams at once one is served, one waits for the
    connection to be released to it (connection_slots hand-over), one is refused 503 UO."""

    async def slow_echo(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.1)
        return await kit.echo(backend, req, writer)

    async def main() -> None:
        backend = await kit.Backend("app", slow_echo).start()
        port = kit.free_port()
        config = _config(kit, port, backend.port)
        config.clusters[0].circuit_breakers.max_connections = 1
        config.clusters[0].circuit_breakers.max_pending_requests = 1
        async with kit.proxy(config, tmp_path, fmt=FORMAT) as p:
            client = await _in_thread(H2Client, port)
            sids = [client.request(_get(port, f"/limit/{i}")) for i in range(3)]
            await _in_thread(client.read, lambda _: all(client.finished(s) for s in sids))
            lines = await p.wait_log(3)
            client.close()
        backend.close()
        statuses = sorted(_answer(client, s)[0][":status"] for s in sids)
        assert statuses == ["200", "200", "503"]
        assert backend.connections == 1 and len(backend.requests) == 2
        assert sum(" 503 UO " in line for line in lines) == 1

    kit.run(main())


def test_big_response_is_held_back_by_the_client_window(kit: Any, tmp_path: Path) -> None:
    """A client that reads but opens no window: the proxy stops reading the upstream (its writes stall far
    short of the body), then delivers the whole body once the client reads and acknowledges."""
    total = 16 * 1024 * 1024
    piece = b"z" * 65536
    written = [0]

    async def big(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % total)
        while written[0] < total:
            writer.write(piece)
            await writer.drain()
            written[0] += len(piece)
        return True

    async def main() -> None:
        backend = await kit.Backend("app", big).start()
        port = kit.free_port()
        async with kit.proxy(_config(kit, port, backend.port), tmp_path, fmt=FORMAT) as p:
            client = await _in_thread(H2Client, port)
            sid = client.request(_get(port, "/big"))
            await _in_thread(client.read, lambda _: False, 1.0)
            stalled = written[0]
            received = len(_answer(client, sid)[1])
            assert received <= 65535  # h2's default stream window, never re-opened so far
            # The proxy stopped reading the upstream with at most one read past its limit waiting; the
            # upstream's writes stalled in the sockets' buffers, far short of the body.
            (down,) = [c for c in p.ctx.connections if isinstance(c, Http2Downstream)]
            bridge = down.streams[sid].http1
            assert bridge is not None and bridge.up_paused is not None
            assert bridge.queued <= RESPONSE_HIGH + 256 * 1024
            assert stalled < total // 2, f"the upstream wrote {stalled} of {total} bytes to a stalled client"

            acked = [0]

            def drain(events: list[Any]) -> bool:
                for e in events[acked[0]:]:
                    if isinstance(e, DataReceived) and e.flow_controlled_length:
                        client.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                acked[0] = len(events)
                client.flush()
                return client.finished(sid)

            # A wide window from now on (h2's default 64 KiB would make this a few hundred round trips).
            client.conn.increment_flow_control_window(8 << 20, sid)
            client.conn.increment_flow_control_window(8 << 20)
            client.flush()
            await _in_thread(client.read, drain, 20)
            assert "downstream_cx_h2_unread_overflow" not in p.ctx.stats.counters
            lines = await p.wait_log(1)
            client.close()
        backend.close()
        _, body, reset = _answer(client, sid)
        assert reset is None and len(body) == total and body.count(b"z") == total
        assert lines == [f"GET /big HTTP/2 200 - {total}"]

    kit.run(main())


def test_big_request_body_flows_under_the_proxy_window(kit: Any, tmp_path: Path) -> None:
    """1 MiB of request body through the proxy's 256 KiB stream window: it re-opens the window as the bytes
    go out upstream, and the backend gets all of them."""
    total = 1024 * 1024

    async def count(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%d" % (len(b"%d" % len(req.body)), len(req.body)))
        return True

    async def main() -> None:
        backend = await kit.Backend("app", count).start()
        port = kit.free_port()
        async with kit.proxy(_config(kit, port, backend.port), tmp_path):
            client = await _in_thread(H2Client, port)
            sid = client.request(_get(port, "/upload", method="POST"), end=False)

            def send_all() -> None:
                sent = 0
                deadline = time.monotonic() + 15
                while sent < total and time.monotonic() < deadline and not client.finished(sid):
                    window = min(client.conn.local_flow_control_window(sid), client.conn.max_outbound_frame_size)
                    if window <= 0:
                        seen = len(client.events)
                        client.read(lambda evs, seen=seen: any(isinstance(e, WindowUpdated) for e in evs[seen:]), 5)
                        continue
                    size = min(window, total - sent)
                    client.conn.send_data(sid, b"u" * size)
                    client.flush()
                    sent += size
                client.conn.end_stream(sid)
                client.flush()
                client.read(lambda _: client.finished(sid), 10)

            await _in_thread(send_all)
            client.close()
        backend.close()
        head, body, reset = _answer(client, sid)
        assert reset is None and head[":status"] == "200" and body == b"%d" % total
        assert len(backend.requests[0].body) == total

    kit.run(main())


def test_upstream_closing_mid_response_resets_the_stream(kit: Any, tmp_path: Path) -> None:
    async def broken(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        if req.target == b"/none":
            return False  # closes without an answer
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\nonly ten b")
        await writer.drain()
        return False

    async def main() -> None:
        backend = await kit.Backend("app", broken).start()
        port = kit.free_port()
        async with kit.proxy(_config(kit, port, backend.port), tmp_path, fmt=FORMAT) as p:
            client = await _in_thread(H2Client, port)
            half = client.request(_get(port, "/half"))
            none = client.request(_get(port, "/none"))
            ok_after = None
            await _in_thread(client.read, lambda _: client.finished(half) and client.finished(none))
            # The connection itself is fine: a further stream on it is served.
            ok_after = client.request(_get(port, "/none"))
            await _in_thread(client.read, lambda _: client.finished(ok_after))
            lines = await p.wait_log(3)
            client.close()
        backend.close()
        head, body, reset = _answer(client, half)
        assert head[":status"] == "200" and body == b"only ten b"
        assert reset is not None and reset.error_code != ErrorCodes.NO_ERROR
        assert not any(isinstance(e, StreamEnded) and e.stream_id == half for e in client.events)
        head, body, reset = _answer(client, none)
        assert head[":status"] == "503" and reset is None
        assert "GET /half HTTP/2 200 UC 10" in lines
        assert sum(line.startswith("GET /none HTTP/2 503 UC") for line in lines) == 2

    kit.run(main())


def test_body_longer_than_its_content_length_never_reaches_the_upstream(kit: Any, tmp_path: Path) -> None:
    """A request whose DATA runs past its content-length (an HTTP/1.1 request smuggled behind it, were the
    bytes forwarded) is reset; the upstream connection never carries the extra bytes."""

    async def main() -> None:
        backend = await kit.Backend("app").start()
        port = kit.free_port()
        async with kit.proxy(_config(kit, port, backend.port), tmp_path):
            client = await _in_thread(H2Client, port)
            smuggled = b"12345GET /smuggled HTTP/1.1\r\nhost: app\r\n\r\n"
            sid = client.request(_get(port, "/outer", [("content-length", "5")], "POST"), smuggled)
            await _in_thread(client.read, lambda _: client.finished(sid))
            ok = client.request(_get(port, "/after"))
            await _in_thread(client.read, lambda _: client.finished(ok))
            client.close()
        backend.close()
        assert _answer(client, sid)[2] is not None
        assert [r.target for r in backend.requests] == [b"/after"]
        assert not any(b"/smuggled" in raw for raw in backend.raw)

    kit.run(main())


def test_unspecified_and_http2_clusters_keep_http2_upstream(kit: Any, tmp_path: Path) -> None:
    """UNSPECIFIED (the client's protocol) and HTTP2 send an HTTP/2 client's streams upstream over HTTP/2:
    an HTTP/1.1-only backend then sees the HTTP/2 preface, not a request (what issue 14 was about)."""

    async def main() -> None:
        backend = await kit.Backend("app").start()
        for protocol in (pc.UPSTREAM_PROTOCOL_UNSPECIFIED, pc.HTTP2):
            port = kit.free_port()
            async with kit.proxy(_config(kit, port, backend.port, protocol), tmp_path):
                client = await _in_thread(H2Client, port)
                sid = client.request(_get(port, "/x"))
                await _in_thread(client.read, lambda _, c=client, s=sid: c.finished(s))
                client.close()
            head, _, _ = _answer(client, sid)
            assert head.get(":status") != "200"
        backend.close()
        # (h11 reads the HTTP/2 preface as a request line with method PRI.)
        assert [r.method for r in backend.requests] == [b"PRI", b"PRI"]
        assert all(raw.startswith(b"PRI * HTTP/2.0\r\n\r\nSM") for raw in backend.raw)

    kit.run(main())


def test_standalone_process_sends_http2_streams_as_http11(kit: Any, proxy_cli: Any, tmp_path: Path) -> None:
    """The real process (compiled build, config compiled in its child and handed over): the cluster's
    upstream protocol survives the hand-over."""

    async def main() -> None:
        backend = await kit.Backend("app").start()
        port = kit.free_port()
        proc = await kit.standalone(proxy_cli, _config(kit, port, backend.port), tmp_path, port=port)
        client = await _in_thread(H2Client, port)
        sid = client.request(_get(port, "/standalone"))
        await _in_thread(client.read, lambda _: client.finished(sid))
        client.close()
        backend.close()
        head, body, reset = _answer(client, sid)
        assert reset is None and head[":status"] == "200" and json.loads(body)["target"] == "/standalone"
        proc.terminate()
        assert "Traceback" not in proc.communicate(timeout=5)[1]

    kit.run(main())


def test_curl_with_prior_knowledge_reaches_an_http11_app(kit: Any, proxy_cli: Any, tmp_path: Path) -> None:
    """Issue 14's report: `curl --http2-prior-knowledge` through the proxy to an HTTP/1.1-only app on a port
    named `http` (the tutorial's echoserver), here the suite's h11 backend behind a standalone proxy."""
    curl = shutil.which("curl")
    need(curl is not None, "needs curl with HTTP/2 (make bootstrap installs it)")
    assert curl is not None

    async def main() -> None:
        backend = await kit.Backend("app").start()
        port = kit.free_port()
        proc = await kit.standalone(proxy_cli, _config(kit, port, backend.port), tmp_path, port=port)
        result = await asyncio.to_thread(
            subprocess.run, [curl, "-sS", "--http2-prior-knowledge", "-D", "-", "--max-time", "5",
                             "--data-binary", "from curl", f"http://127.0.0.1:{port}/echo"],
            capture_output=True, text=True, timeout=10)
        backend.close()
        proc.terminate()
        assert "Traceback" not in proc.communicate(timeout=5)[1]
        assert result.returncode == 0, result.stderr
        head, _, body = result.stdout.partition("\n\n")  # (text mode: CRLF read as LF)
        assert head.startswith("HTTP/2 200")
        seen = json.loads(body)
        assert (seen["method"], seen["target"], seen["body"]) == ("POST", "/echo", "from curl")

    kit.run(main())
