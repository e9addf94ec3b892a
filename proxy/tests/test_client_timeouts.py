"""Downstream timeouts with real slow sockets (head, body progress, keep-alive idle) and per-try timeouts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import h11
import pytest

from meshbox.proxy.attempt_outcomes import RETRY_BODY_LIMIT


def _flag_of(kit: Any, line: str) -> tuple[int, str]:
    fields = kit.log_fields(line)
    return int(fields[2]), fields[3]


async def _read_until_closed(reader: asyncio.StreamReader, timeout: float) -> tuple[bytes, float]:
    """Everything the proxy sends until it closes, and when it closed (monotonic)."""
    data = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            data += chunk
    return data, time.monotonic()


@pytest.mark.parametrize("codec", ["httptools", "h11"])
def test_head_timeout_answers_408_and_closes(kit: Any, tmp_path: Path, codec: str) -> None:
    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path, codec=codec) as p:
            p.ctx.head_timeout = 0.3
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            t0 = time.monotonic()
            writer.write(b"GET / HTTP/1.1\r\nhost: a\r\n")  # no blank line: the head never completes
            data, closed_at = await _read_until_closed(reader, 3)
            lines = await p.wait_log(1)
            writer.close()
        assert data.startswith(b"HTTP/1.1 408 ") and data.endswith(b"request header timeout")
        assert b"connection: close" in data
        assert 0.25 <= closed_at - t0 < 1.5
        assert len(lines) == 1 and _flag_of(kit, lines[0]) == (408, "SI")
        assert backend.requests == []
        assert p.ctx.stats.counters["downstream_rq_header_timeout"] == 1

    kit.run(main())


def test_head_timeout_is_not_extended_by_a_dribble(kit: Any, tmp_path: Path) -> None:
    """Slowloris: one byte every 50 ms keeps the socket busy but the head must still be complete in time."""
    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path) as p:
            p.ctx.head_timeout = 0.4
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            t0 = time.monotonic()
            head = b"GET / HTTP/1.1\r\nhost: a\r\nx-filler: " + b"a" * 200

            async def dribble() -> None:
                for byte in head:
                    if writer.is_closing():
                        return
                    writer.write(bytes([byte]))
                    await asyncio.sleep(0.05)

            task = asyncio.ensure_future(dribble())
            data, closed_at = await _read_until_closed(reader, 5)
            task.cancel()
            writer.close()
            lines = await p.wait_log(1)
        assert data.startswith(b"HTTP/1.1 408 ")
        assert 0.35 <= closed_at - t0 < 1.5
        assert _flag_of(kit, lines[0]) == (408, "SI")

    kit.run(main())


def test_stalled_request_body_gets_408_and_progress_keeps_it_alive(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path) as p:
            p.ctx.body_idle_timeout = 0.3
            # Progress every 0.1 s for ~0.8 s in total: longer than the timeout, never idle that long.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /slow HTTP/1.1\r\nhost: a\r\ncontent-length: 8\r\n\r\n")
            for byte in b"12345678":
                await asyncio.sleep(0.1)
                writer.write(bytes([byte]))
            client = kit.Client(reader, writer)
            # The bytes went out by hand; bring the client's h11 state up to date so it reads the response.
            client.conn.send(h11.Request(method="POST", target="/slow", headers=[("host", "a"),
                                                                                 ("content-length", "8")]))
            client.conn.send(h11.Data(data=b"12345678"))
            client.conn.send(h11.EndOfMessage())
            ok = await client.read_response()
            client.close()
            # Now a body that stops after 3 of 10 bytes.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            t0 = time.monotonic()
            writer.write(b"POST /stall HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\nabc")
            data, closed_at = await _read_until_closed(reader, 3)
            writer.close()
            lines = await p.wait_log(2)
        assert ok.status == 200 and ok.json()["body"] == "12345678"
        assert data.startswith(b"HTTP/1.1 408 ") and data.endswith(b"stream timeout")
        assert 0.25 <= closed_at - t0 < 1.5
        assert len(lines) == 2 and _flag_of(kit, lines[1]) == (408, "SI")
        assert kit.log_fields(lines[1])[1] == "POST /stall HTTP/1.1"
        assert [r.target for r in backend.requests] == [b"/slow"]  # the stalled one never completed upstream

    kit.run(main())


def test_idle_keep_alive_connection_is_closed_quietly(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path) as p:
            p.ctx.idle_timeout = 0.3
            client = await kit.Client.connect(port)
            first = await client.request()
            await asyncio.sleep(0.15)
            second = await client.request()  # within the idle timeout: the same connection serves it
            t0 = time.monotonic()
            data, closed_at = await _read_until_closed(client.reader, 3)
            # A connection that never sends a byte is closed the same way.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            silent, _ = await _read_until_closed(reader, 3)
            writer.close()
            client.close()
            lines = p.log_lines()
        assert (first.status, second.status) == (200, 200)
        assert backend.connections == 1
        assert data == b"" and silent == b""
        assert 0.25 <= closed_at - t0 < 1.5
        assert len(lines) == 2  # idle closes log nothing: no request was in progress
        assert p.ctx.stats.counters["downstream_cx_idle_timeout"] == 2

    kit.run(main())


def _per_try_config(kit: Any, port: int, backend_port: int, attempts: int) -> Any:
    route = {"clusters": [{"cluster": "svc", "weight": 100}], "timeout": "5s",
             "retries": {"attempts": attempts, "per_try_timeout": "0.2s"}}
    return kit.http_config(port, {"svc": [backend_port]}, routes=[route])


def _first_request_hangs() -> Any:
    calls = {"n": 0}

    async def handler(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        calls["n"] += 1
        if calls["n"] == 1:
            await asyncio.sleep(2)
            return False
        body = b"second try"
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        return True

    return handler


def test_per_try_timeout_retries_on_a_new_connection(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backend = await kit.Backend("b", _first_request_hangs()).start()
        port = kit.free_port()
        async with kit.proxy(_per_try_config(kit, port, backend.port, attempts=1), tmp_path) as p:
            t0 = time.monotonic()
            resp = await kit.get(port)
            elapsed = time.monotonic() - t0
            lines = await p.wait_log(1)
            counters = dict(p.ctx.stats.counters)
        assert (resp.status, resp.body) == (200, b"second try")
        assert 0.15 <= elapsed < 1.5
        assert len(backend.requests) == 2 and backend.connections == 2
        assert len(lines) == 1 and _flag_of(kit, lines[0]) == (200, "-")
        assert counters["upstream_rq_per_try_timeout"] == 1 and counters["upstream_rq_retry"] == 1

    kit.run(main())


def test_per_try_timeout_without_retries_left_is_ut_and_only_kept_bodies_are_replayed(kit: Any,
                                                                                      tmp_path: Path) -> None:
    """A request body is sent again on a retry when it was kept (at most RETRY_BODY_LIMIT bytes);
    a longer one is not replayed: the expired try ends like the route timeout."""
    async def main() -> None:
        port = kit.free_port()
        backend = await kit.Backend("b", _first_request_hangs()).start()
        async with kit.proxy(_per_try_config(kit, port, backend.port, attempts=0), tmp_path) as p:
            t0 = time.monotonic()
            no_retry = await kit.get(port)
            elapsed = time.monotonic() - t0
            lines = await p.wait_log(1)
        small = await kit.Backend("c", _first_request_hangs()).start()
        large = await kit.Backend("d", _first_request_hangs()).start()
        async with kit.proxy(_per_try_config(kit, port, small.port, attempts=3), tmp_path) as p2:
            client = await kit.Client.connect(port)
            replayed = await client.request("POST", body=b"kept for a retry")
            client.close()
            lines2 = await p2.wait_log(1)
        async with kit.proxy(_per_try_config(kit, port, large.port, attempts=3), tmp_path) as p3:
            client = await kit.Client.connect(port)
            too_long = await client.request("POST", body=b"x" * (RETRY_BODY_LIMIT + 1))
            client.close()
            lines3 = await p3.wait_log(1)
        assert (no_retry.status, no_retry.body) == (504, b"upstream request timeout")
        assert 0.15 <= elapsed < 1.5
        assert len(lines) == 1 and _flag_of(kit, lines[0]) == (504, "UT")
        assert (replayed.status, replayed.body) == (200, b"second try")
        assert [r.body for r in small.requests] == [b"kept for a retry"] * 2
        assert len(lines2) == 1 and _flag_of(kit, lines2[0]) == (200, "-")
        assert too_long.status == 504 and len(large.requests) == 1
        assert len(lines3) == 1 and _flag_of(kit, lines3[0]) == (504, "UT")

    kit.run(main())


def test_client_timeouts_never_cut_a_slow_response(kit: Any, tmp_path: Path) -> None:
    """The head, body and idle timers watch the client only: a response slower than all three still arrives."""
    async def slow(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.6)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")
        return True

    async def main() -> None:
        backend = await kit.Backend("slow", slow).start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path) as p:
            p.ctx.head_timeout = p.ctx.body_idle_timeout = p.ctx.idle_timeout = 0.2
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            client = kit.Client(reader, writer)
            first = await client.request()  # idle timer armed at connect, request in progress when it fires
            # A head in two pieces (head timer armed), then a body in two pieces (body timer armed).
            client.conn.start_next_cycle()
            head = client.conn.send(h11.Request(method="POST", target="/", headers=[("host", "a"),
                                                                                   ("content-length", "2")]))
            writer.write(head[:10])
            await asyncio.sleep(0.05)
            writer.write(head[10:] + b"x")
            await asyncio.sleep(0.05)
            writer.write(b"y")
            client.conn.send(h11.Data(data=b"xy"))
            client.conn.send(h11.EndOfMessage())
            second = await client.read_response()
            client.close()
            lines = await p.wait_log(2)
        assert (first.status, first.body, second.status, second.body) == (200, b"slow", 200, b"slow")
        assert [_flag_of(kit, line) for line in lines] == [(200, "-"), (200, "-")]

    kit.run(main())
