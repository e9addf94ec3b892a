"""L7 behaviour against real backends on 127.0.0.1: routing, balancing, keep-alive, bodies, headers."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

CODECS = ["httptools", "h11"]


@pytest.mark.parametrize("codec", CODECS)
def test_routes_by_host_path_and_header(kit: Any, tmp_path: Path, codec: str) -> None:
    async def main() -> None:
        a, b, c = kit.Backend("a"), kit.Backend("b"), kit.Backend("c")
        for backend in (a, b, c):
            await backend.start()
        port = kit.free_port()
        routes = [
            {"match": {"prefix": "/api", "headers": [{"name": "x-canary", "exact": "1"}]},
             "clusters": [{"cluster": "c", "weight": 100}]},
            {"match": {"prefix": "/api"}, "clusters": [{"cluster": "b", "weight": 100}]},
            {"clusters": [{"cluster": "a", "weight": 100}]},
        ]
        config = kit.http_config(port, {"a": [a.port], "b": [b.port], "c": [c.port]}, routes=routes,
                             domains=["service-two", "service-two.default"])
        async with kit.proxy(config, tmp_path, codec=codec):
            assert (await kit.get(port, "/", host="service-two")).header(b"x-backend") == b"a"
            assert (await kit.get(port, "/api/x", host="service-two:80")).header(b"x-backend") == b"b"
            canary = await kit.get(port, "/api/x", host="service-two.default", headers=[("x-canary", "1")])
            assert canary.header(b"x-backend") == b"c"
            unknown = await kit.get(port, "/", host="elsewhere")
            assert unknown.status == 404
        assert [len(x.requests) for x in (a, b, c)] == [1, 1, 1]

    kit.run(main())


def test_round_robin_and_weighted_split(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backends = [await kit.Backend(f"b{i}").start() for i in range(3)]
        port = kit.free_port()
        config = kit.http_config(port, {"svc": [b.port for b in backends]})
        async with kit.proxy(config, tmp_path):
            client = await kit.Client.connect(port)
            seen = [(await client.request()).header(b"x-backend") for _ in range(9)]
            client.close()
        assert Counter(seen) == {b"b0": 3, b"b1": 3, b"b2": 3}
        assert seen[:3] != seen[3:3] and len(set(seen[:3])) == 3  # each cycle visits every host

    kit.run(main())


def test_least_request_prefers_idle_host(kit: Any, tmp_path: Path) -> None:
    release = asyncio.Event()

    async def slow(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nx-backend: slow\r\n\r\nslow")
        return True

    async def main() -> None:
        busy = await kit.Backend("slow", slow).start()
        idle = await kit.Backend("fast").start()
        port = kit.free_port()
        config = kit.http_config(port, {"svc": [busy.port, idle.port]}, lb="LEAST_REQUEST")
        async with kit.proxy(config, tmp_path):
            # Occupy the slow host with one request (whichever host it lands on first, retry until slow).
            stuck: list[asyncio.Task[object]] = []
            while not busy.requests:
                stuck.append(asyncio.create_task(kit.get(port)))
                await asyncio.sleep(0.05)
            results = [(await kit.get(port)).header(b"x-backend") for _ in range(10)]
            release.set()
            await asyncio.gather(*stuck)
        assert results == [b"fast"] * 10

    kit.run(main())


def test_upstream_keepalive_connections_are_reused(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path):
            for _ in range(5):
                assert (await kit.get(port)).status == 200  # a new downstream connection each time
        assert len(backend.requests) == 5
        assert backend.connections == 1

    kit.run(main())


def test_request_id_added_when_absent_and_kept_when_present(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path):
            await kit.get(port)
            await kit.get(port, headers=[("x-request-id", "keep-me")])
        added = backend.requests[0].header(b"x-request-id")
        assert added is not None and len(added) == 36 and added[14:15] == b"4"
        assert backend.requests[1].header(b"x-request-id") == b"keep-me"

    kit.run(main())


def test_hop_by_hop_headers_are_dropped_both_ways(kit: Any, tmp_path: Path) -> None:
    async def reply(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: x-private\r\nx-private: 1\r\n"
                     b"keep-alive: timeout=5\r\nx-kept: yes\r\n\r\nok")
        return True

    async def main() -> None:
        backend = await kit.Backend("b", reply).start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path):
            resp = await kit.get(port, headers=[("connection", "x-secret"), ("x-secret", "1"), ("keep-alive", "300"),
                                            ("te", "trailers"), ("proxy-connection", "keep-alive"), ("x-ok", "1")])
        sent = {n for n, _ in backend.requests[0].headers}
        assert not sent & {b"connection", b"x-secret", b"keep-alive", b"te", b"proxy-connection"}
        assert b"x-ok" in sent
        got = {n for n, _ in resp.headers}
        assert not got & {b"x-private", b"keep-alive"}
        assert resp.header(b"x-kept") == b"yes"
        assert resp.header(b"x-envoy-upstream-service-time") is not None

    kit.run(main())


@pytest.mark.parametrize("codec", CODECS)
def test_chunked_bodies_are_streamed_not_buffered(kit: Any, tmp_path: Path, codec: str) -> None:
    """The first chunk of the response reaches the client while the backend still holds the rest."""
    more = asyncio.Event()

    async def streamer(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await more.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        return True

    async def main() -> None:
        backend = await kit.Backend("s", streamer).start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path, codec=codec):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # A chunked request body sent in two pieces arrives de-chunked and re-chunked, intact.
            writer.write(b"POST / HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
            await asyncio.sleep(0.05)
            writer.write(b"2\r\nde\r\n0\r\n\r\n")
            head = b""
            while b"first" not in head:
                head += await reader.read(65536)
            assert b"transfer-encoding: chunked" in head.lower()
            more.set()
            rest = b""
            while not rest.endswith(b"0\r\n\r\n"):
                rest += await reader.read(65536)
            writer.close()
        assert b"second" in rest
        assert backend.requests[0].body == b"abcde"

    kit.run(main())


@pytest.mark.parametrize("codec", CODECS)
def test_head_request_gets_no_body(kit: Any, tmp_path: Path, codec: str) -> None:
    async def reply(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n")
        if req.method != b"HEAD":
            writer.write(b"hello world")
        return True

    async def main() -> None:
        backend = await kit.Backend("h", reply).start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path, codec=codec):
            client = await kit.Client.connect(port)
            head = await client.request("HEAD")
            after = await client.request("GET")  # the same connection still frames correctly
            client.close()
        assert head.status == 200 and head.body == b"" and head.header(b"content-length") == b"11"
        assert after.body == b"hello world"

    kit.run(main())


def test_expect_100_continue_is_relayed(kit: Any, tmp_path: Path) -> None:
    async def cont(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(req.body), req.body))
        return True

    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"expect: 100-continue" in head.lower()
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await reader.readexactly(5)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n" + body)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = kit.free_port()
        config = kit.http_config(port, {"svc": [server.sockets[0].getsockname()[1]]})
        async with kit.proxy(config, tmp_path):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST / HTTP/1.1\r\nhost: svc\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100 Continue")
            writer.write(b"hello")
            final = await reader.readuntil(b"hello")
            writer.close()
        assert final.startswith(b"HTTP/1.1 200")
        server.close()

    kit.run(main())


@pytest.mark.parametrize("codec", CODECS)
def test_websocket_upgrade_is_tunnelled(kit: Any, tmp_path: Path, codec: str) -> None:
    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"upgrade: websocket" in head.lower() and b"connection: upgrade" in head.lower()
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
            while data := await reader.read(1024):
                writer.write(data.upper())
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = kit.free_port()
        config = kit.http_config(port, {"svc": [server.sockets[0].getsockname()[1]]})
        async with kit.proxy(config, tmp_path, codec=codec) as p:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /ws HTTP/1.1\r\nhost: svc\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\nearly")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            assert await reader.readexactly(5) == b"EARLY"
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"PING"
            writer.close()
            lines = await p.wait_log(1)
        assert '"GET /ws HTTP/1.1" 101' in lines[0]
        server.close()

    kit.run(main())


def test_pipelined_requests_are_answered_in_order(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path):
            data, _ = await kit.raw_exchange(port, b"GET /1 HTTP/1.1\r\nhost: a\r\n\r\n"
                                                   b"GET /2 HTTP/1.1\r\nhost: a\r\n\r\n"
                                                   b"GET /3 HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        bodies = []
        for part in data.split(b"HTTP/1.1 200 OK")[1:]:
            body = part.split(b"\r\n\r\n", 1)[1]
            bodies.append(json.loads(body[: body.rfind(b"}") + 1]))
        assert [b["target"] for b in bodies] == ["/1", "/2", "/3"]

    kit.run(main())


def test_http10_client_gets_http10_framing(kit: Any, tmp_path: Path) -> None:
    async def chunky(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        return True

    async def main() -> None:
        backend = await kit.Backend("c", chunky).start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path):
            data, closed = await kit.raw_exchange(port, b"GET / HTTP/1.0\r\n\r\n")
        assert closed
        head, body = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower() and body == b"ok"
        assert backend.requests[0].header(b"host") == b"svc.default.svc.cluster.local"

    kit.run(main())


def test_retries_on_connect_failure(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backend = await kit.Backend().start()
        dead = kit.free_port()  # nothing listens here
        port = kit.free_port()
        config = kit.http_config(port, {"svc": [dead, backend.port]}, retries=2)
        async with kit.proxy(config, tmp_path) as p:
            statuses = [(await kit.get(port)).status for _ in range(4)]
            lines = await p.wait_log(4)
        assert statuses == [200] * 4
        assert all(" 200 - " in line for line in lines)
        assert p.ctx.stats.counters.get("upstream_rq_retry", 0) >= 2

    kit.run(main())


def test_drain_lets_the_request_in_flight_finish_and_closes(kit: Any, tmp_path: Path) -> None:
    async def slow(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.3)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")
        return True

    async def main() -> None:
        backend = await kit.Backend("slow", slow).start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path) as p:
            client = await kit.Client.connect(port)
            idle = await kit.Client.connect(port)
            in_flight = asyncio.create_task(client.request())
            await asyncio.sleep(0.1)
            p.server.drain()
            resp = await in_flight
            assert (resp.status, resp.body, resp.header(b"connection")) == (200, b"slow", b"close")
            assert await idle.reader.read() == b""  # the idle kept-alive connection was closed
            assert not p.server.ready
            try:
                await kit.get(port)
                raise AssertionError("a drained proxy still accepts")
            except ConnectionError:
                pass

    kit.run(main())
