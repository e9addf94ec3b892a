"""Real gRPC (grpcio server and client, HTTP/2 with prior knowledge) through HTTP listeners at L7: one
exchange per call, routed, balanced, retried, timed out and logged per call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from h2.events import ResponseReceived

from meshbox.proxy.metrics_exposition import render
from proxy.tests.h2_kit import SERVICE, EchoServer, H2Client, grpc_message, request_headers, silent_h2_server


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


class FlakyServer(EchoServer):
    """Answers its first ``failures`` calls with UNAVAILABLE (a trailers-only response), then succeeds."""

    def __init__(self, name: str, failures: int) -> None:
        self.failures = failures
        super().__init__(name)
        handlers = {"Flaky": grpc.unary_unary_rpc_method_handler(self._flaky)}
        self.server.stop(None)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _flaky(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        if self.calls <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")
        return b"ok after %d" % self.calls



def _unary(port: int, method: str, payload: bytes = b"x", timeout: float = 5) -> tuple[grpc.StatusCode, bytes | str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            return grpc.StatusCode.OK, call(payload, timeout=timeout)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()


GRPC_FORMAT = "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %GRPC_STATUS% %GRPC_STATUS_NUMBER% %UPSTREAM_HOST%\n"


def test_retry_on_unavailable(kit: Any, tmp_path: Path) -> None:
    flaky = FlakyServer("flaky", failures=1)
    try:
        async def main() -> None:
            port = kit.free_port()
            routes = [{"clusters": [{"cluster": "grpc", "weight": 1}],
                       "retries": {"attempts": 2, "retry_on": ["unavailable"]}}]
            config = kit.http_config(port, {"grpc": [flaky.port]}, routes=routes)
            async with kit.proxy(config, tmp_path, fmt=GRPC_FORMAT) as p:
                loop = asyncio.get_running_loop()
                code, answer = await loop.run_in_executor(None, _unary, port, "Flaky")
                lines = await p.wait_log(1)
                counters = dict(p.ctx.stats.counters)
            assert (code, answer) == (grpc.StatusCode.OK, b"ok after 2")
            assert flaky.calls == 2
            assert counters["upstream_rq_retry"] == 1
            assert lines == [f"/{SERVICE}/Flaky 200 - Ok 0 127.0.0.1:{flaky.port}"]

        kit.run(main())
        # Without a gRPC retryOn the UNAVAILABLE answer reaches the client as it is.
        flaky.calls = 0

        async def no_retry() -> None:
            port = kit.free_port()
            config = kit.http_config(port, {"grpc": [flaky.port]}, retries=2)
            async with kit.proxy(config, tmp_path, fmt=GRPC_FORMAT) as p:
                loop = asyncio.get_running_loop()
                code, answer = await loop.run_in_executor(None, _unary, port, "Flaky")
                lines = await p.wait_log(1)
            assert (code, answer) == (grpc.StatusCode.UNAVAILABLE, "not yet")
            assert lines == [f"/{SERVICE}/Flaky 200 - Unavailable 14 127.0.0.1:{flaky.port}"]

        kit.run(no_retry())
    finally:
        flaky.stop()


def test_fault_abort_with_a_grpc_status(kit: Any, tmp_path: Path, backend: EchoServer) -> None:
    async def main() -> None:
        port = kit.free_port()
        routes = [{"clusters": [{"cluster": "grpc", "weight": 1}],
                   "fault": {"abort": {"percent": 100, "grpc_status": 8}}}]
        config = kit.http_config(port, {"grpc": [backend.port]}, routes=routes)
        async with kit.proxy(config, tmp_path, fmt=GRPC_FORMAT) as p:
            loop = asyncio.get_running_loop()
            code, answer = await loop.run_in_executor(None, _unary, port, "Say")
            lines = await p.wait_log(1)
        assert (code, answer) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "fault filter abort")
        assert backend.calls == 0
        assert lines == [f"/{SERVICE}/Say 200 FI ResourceExhausted 8 -"]

    kit.run(main())


def _raw_call_with_timeout(port: int, grpc_timeout: str) -> tuple[dict[str, str], float]:
    """A call carrying ``grpc-timeout`` from a client that does not enforce it itself (a raw HTTP/2
    client): what answers it can only be the proxy. Returns the response head and the seconds taken."""
    client = H2Client(port)
    start = time.monotonic()
    sid = client.request(request_headers(port, f"/{SERVICE}/Slow", [("grpc-timeout", grpc_timeout)]),
                         grpc_message(b"x"))
    events = client.read(lambda _: client.finished(sid), timeout=5)
    took = time.monotonic() - start
    client.close()
    heads = [dict(e.headers) for e in events if isinstance(e, ResponseReceived) and e.stream_id == sid]
    assert len(heads) == 1, events
    return heads[0], took


def test_grpc_timeout_becomes_deadline_exceeded(kit: Any, tmp_path: Path) -> None:
    """The upstream never answers (nor enforces the deadline): the proxy does, at the call's deadline."""
    async def main() -> None:
        silent, silent_port = await silent_h2_server()
        port = kit.free_port()
        config = kit.http_config(port, {"grpc": [silent_port]})
        async with kit.proxy(config, tmp_path, fmt=GRPC_FORMAT) as p:
            loop = asyncio.get_running_loop()
            head, took = await loop.run_in_executor(None, _raw_call_with_timeout, port, "300m")
            lines = await p.wait_log(1)
            code, _ = await loop.run_in_executor(None, _unary, port, "Slow", b"x", 0.3)
        silent.close()
        # A trailers-only answer made by the proxy at the call's deadline, far before the 15 s route timeout.
        assert head[":status"] == "200" and head["grpc-status"] == "4" and head["content-type"] == "application/grpc"
        assert 0.25 < took < 1.5
        assert lines[0] == f"/{SERVICE}/Slow 200 UT DeadlineExceeded 4 127.0.0.1:{silent_port}", lines
        # A real client sees DEADLINE_EXCEEDED too (whichever of it and the proxy gives up first).
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED

    kit.run(main())


async def _log_lines(proc: Any, count: int, timeout: float = 5) -> list[str]:
    """A standalone proxy's access log once it has ``count`` lines."""
    deadline = time.monotonic() + timeout
    while True:
        lines = Path(proc.log_path).read_text().splitlines()
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.02)


def test_two_sidecars_log_each_call_with_one_request_id(kit: Any, proxy_cli: Any, tmp_path: Path,
                                                       backend: EchoServer) -> None:
    """Client → outbound sidecar → inbound sidecar → server, both sidecars real processes (compiled build):
    every call of every shape is one line on each side, with the same x-request-id."""
    async def main() -> None:
        inbound_port, outbound_port = kit.free_port(), kit.free_port()
        inbound = await kit.standalone(
            proxy_cli, kit.http_config(inbound_port, {"grpc": [backend.port]}, direction="INBOUND"), tmp_path,
            "--access-log-format", "%REQ(X-REQUEST-ID)% " + GRPC_FORMAT, port=inbound_port)
        outbound = await kit.standalone(
            proxy_cli, kit.http_config(outbound_port, {"grpc": [inbound_port]}), tmp_path,
            "--access-log-format", "%REQ(X-REQUEST-ID)% %PROTOCOL% " + GRPC_FORMAT, port=outbound_port)
        loop = asyncio.get_running_loop()
        first, streamed, summed, echoed = await loop.run_in_executor(None, _all_shapes, outbound_port)
        out_lines = await _log_lines(outbound, 4)
        in_lines = await _log_lines(inbound, 4)
        assert (first, streamed, summed, echoed) == (b"grpc-backend says hello", [b"%d" % i for i in range(5)],
                                                     b"42", [b"A", b"BC", b"D"])
        assert len(out_lines) == len(in_lines) == 4, (out_lines, in_lines)
        out_ids = [line.split()[0] for line in out_lines]
        assert [line.split()[0] for line in in_lines] == out_ids
        assert len(set(out_ids)) == 4 and all(len(i) == 36 for i in out_ids)
        for method, out_line, in_line in zip(("Say", "Count", "Sum", "Echo"), out_lines, in_lines, strict=True):
            assert out_line.split()[1:] == ["HTTP/2", f"/{SERVICE}/{method}", "200", "-", "Ok", "0",
                                            f"127.0.0.1:{inbound_port}"]
            assert in_line.split()[1:] == [f"/{SERVICE}/{method}", "200", "-", "Ok", "0",
                                           f"127.0.0.1:{backend.port}"]
        for proc in (inbound, outbound):
            proc.terminate()
            assert "Traceback" not in proc.communicate(timeout=5)[1]

    kit.run(main())


def _many_calls(port: int, n: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        say = channel.unary_unary(f"/{SERVICE}/Say")
        for _ in range(n):
            say(b"x", timeout=5)


def test_weighted_split_is_per_call_on_one_connection(kit: Any, tmp_path: Path) -> None:
    light, heavy = EchoServer("light"), EchoServer("heavy")
    try:
        async def main() -> None:
            port = kit.free_port()
            routes = [{"clusters": [{"cluster": "light", "weight": 20}, {"cluster": "heavy", "weight": 80}]}]
            config = kit.http_config(port, {"light": [light.port], "heavy": [heavy.port]}, routes=routes)
            async with kit.proxy(config, tmp_path) as p:
                await asyncio.get_running_loop().run_in_executor(None, _many_calls, port, 200)
                await p.wait_log(200)
                counters = dict(p.ctx.stats.counters)
                text = render([p.ctx.stats]).decode()
            # One client connection carried every call; each call picked its cluster (binomial, p=0.2:
            # 40 expected, 5 standard deviations each way).
            assert counters["downstream_cx_http2"] == 1
            assert light.calls + heavy.calls == 200
            assert 12 <= light.calls <= 68, (light.calls, heavy.calls)
            assert 'request_protocol="grpc"' in text and 'grpc_response_status="0"' in text

        kit.run(main())
    finally:
        light.stop()
        heavy.stop()


def _routed_calls(port: int) -> list[bytes]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        say = channel.unary_unary(f"/{SERVICE}/Say")
        count = channel.unary_stream(f"/{SERVICE}/Count")
        return [say(b"plain", timeout=5), say(b"canary", timeout=5, metadata=(("x-canary", "yes"),)),
                b",".join(count(b"2", timeout=5))]


def test_calls_are_routed_by_method_path_and_metadata(kit: Any, tmp_path: Path) -> None:
    """Routes match a call's method path (prefix) and its metadata (headers), call by call on one channel."""
    main_server, canary, counter = EchoServer("main"), EchoServer("canary"), EchoServer("counter")
    try:
        async def main() -> None:
            port = kit.free_port()
            routes = [
                {"match": {"prefix": f"/{SERVICE}/Count"}, "clusters": [{"cluster": "counter"}]},
                {"match": {"headers": [{"name": "x-canary", "exact": "yes"}]}, "clusters": [{"cluster": "canary"}]},
                {"clusters": [{"cluster": "main"}]},
            ]
            config = kit.http_config(port, {"main": [main_server.port], "canary": [canary.port],
                                            "counter": [counter.port]}, routes=routes)
            async with kit.proxy(config, tmp_path, fmt="%REQ(:PATH)% %UPSTREAM_CLUSTER%\n") as p:
                answers = await asyncio.get_running_loop().run_in_executor(None, _routed_calls, port)
                lines = await p.wait_log(3)
            assert answers == [b"main says plain", b"canary says canary", b"0,1"]
            assert lines == [f"/{SERVICE}/Say main", f"/{SERVICE}/Say canary", f"/{SERVICE}/Count counter"]

        kit.run(main())
    finally:
        for server in (main_server, canary, counter):
            server.stop()
