"""Access log lines field by field, for both directions and for TCP, and every response flag."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from meshbox.api.loader import message_from_data
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.proxy.access_log import FormatError, compile_format
from meshbox.proxy.metrics_exposition import render

START_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def check_line(kit: Any, line: str, *, method: str, path: str, code: int, flags: str, received: int, sent: int,
               ua: str, request_id: str, authority: str, upstream: str, before: float) -> None:
    fields = kit.log_fields(line)
    assert len(fields) == 13, fields
    start, request, status, flag, rx, tx, duration, ust, xff, agent, rid, auth, host = (
        fields[0], fields[1], *fields[2:])
    assert START_TIME.match(start), start
    started = datetime.strptime(start, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    assert before - 0.01 <= started <= time.time()
    assert request == f"{method} {path} HTTP/1.1"
    assert (int(status), flag, int(rx), int(tx)) == (code, flags, received, sent)
    assert int(duration) >= 0
    if flags == "-":
        assert 0 <= int(ust) <= int(duration)
    assert (xff, agent, rid, auth, host) == ("-", ua, request_id, authority, upstream)


@pytest.mark.parametrize("direction", ["OUTBOUND", "INBOUND"])
def test_default_format_fields_exactly(kit: Any, tmp_path: Path, direction: str) -> None:
    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        before = time.time()
        config = kit.http_config(port, {"svc": [backend.port]}, direction=direction)
        async with kit.proxy(config, tmp_path) as p:
            resp = await kit.get(port, "/echo?x=1", host="service-two", headers=[("user-agent", "curl/7.47.0")],
                                 body=b"12345", )
            lines = await p.wait_log(1)
        rid = backend.requests[0].header(b"x-request-id").decode()
        check_line(kit, lines[0], method="GET", path="/echo?x=1", code=200, flags="-", received=5,
                   sent=len(resp.body), ua="curl/7.47.0", request_id=rid, authority="service-two",
                   upstream=f"127.0.0.1:{backend.port}", before=before)
        assert resp.header(b"x-envoy-upstream-service-time") == kit.log_fields(lines[0])[7].encode()

    kit.run(main())


def test_custom_format_and_unknown_operator(kit: Any, tmp_path: Path) -> None:
    fmt = "%REQ(:METHOD)% %PATH% code=%RESPONSE_CODE% up=%UPSTREAM_CLUSTER% ua=%REQ(USER-AGENT):4% %RESP(X-BACKEND)%"

    async def main() -> None:
        backend = await kit.Backend("bk").start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path, fmt=fmt) as p:
            await kit.get(port, "/a", headers=[("user-agent", "curl/8")])
            lines = await p.wait_log(1)
        assert lines == ["GET /a code=200 up=svc ua=curl bk"]

    kit.run(main())
    with pytest.raises(FormatError, match="%NOPE%"):
        compile_format("%NOPE%")
    with pytest.raises(FormatError, match="malformed"):
        compile_format("%START_TIME")


def test_tcp_connection_gets_a_line_and_bytes_metrics(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(1024):
                writer.write(data.upper())
            writer.close()

        server = await asyncio.start_server(upper, "127.0.0.1", 0)
        backend_port = server.sockets[0].getsockname()[1]
        port = kit.free_port()
        config = message_from_data({
            "listeners": [{"name": "tcp", "direction": "OUTBOUND", "address": "127.0.0.1", "port": port,
                           "protocol": "TCP", "cluster": "db", "bind": True}],
            "clusters": [{"name": "db", "service": "db.default.svc.cluster.local"}],
            "endpoints": [{"cluster_name": "db", "endpoints": [{"address": "127.0.0.1", "port": backend_port}]}],
        }, pc.ProxyConfig)
        async with kit.proxy(config, tmp_path) as p:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"HELLO"
            writer.write_eof()  # half-close: the reply still arrives, then both sides close
            assert await reader.read() == b""
            writer.close()
            lines = await p.wait_log(1)
            metrics = render([p.ctx.stats]).decode()
        fields = kit.log_fields(lines[0])
        assert fields[1:] == ["- - -", "0", "-", "5", "5", fields[6], "-", "-", "-", "-", "-",
                              f"127.0.0.1:{backend_port}"]
        assert re.search(r'istio_tcp_received_bytes_total\{[^}]*destination_service="db.default.svc.cluster.local"'
                         r'[^}]*\} 5\.0', metrics)
        assert re.search(r"istio_tcp_sent_bytes_total\{[^}]*\} 5\.0", metrics)
        server.close()

    kit.run(main())


def _flag_of(kit: Any, line: str) -> tuple[int, str]:
    fields = kit.log_fields(line)
    return int(fields[2]), fields[3]


def test_flag_nr_no_route(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        config = kit.http_config(port, {"svc": [backend.port]}, domains=["known"])
        async with kit.proxy(config, tmp_path) as p:
            resp = await kit.get(port, host="unknown")
            # A local reply to HEAD has no body, and the kept-alive connection carries on.
            client = await kit.Client.connect(port)
            head = await client.request("HEAD", host="unknown")
            after = await client.request("GET", host="known")
            client.close()
            lines = await p.wait_log(3)
        assert resp.status == 404
        assert (head.status, head.body, after.status) == (404, b"", 200)
        assert _flag_of(kit, lines[0]) == (404, "NR")
        assert len(backend.requests) == 1

    kit.run(main())


def test_flag_uh_no_healthy_upstream(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        port = kit.free_port()
        config = kit.http_config(port, {"svc": []})
        async with kit.proxy(config, tmp_path) as p:
            resp = await kit.get(port)
            lines = await p.wait_log(1)
        assert (resp.status, resp.body) == (503, b"no healthy upstream")
        assert _flag_of(kit, lines[0]) == (503, "UH")

    kit.run(main())


def test_flag_uf_connection_failure(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        port = kit.free_port()
        config = kit.http_config(port, {"svc": [kit.free_port()]})
        async with kit.proxy(config, tmp_path) as p:
            resp = await kit.get(port)
            lines = await p.wait_log(1)
        assert resp.status == 503 and b"connection failure" in resp.body
        assert _flag_of(kit, lines[0]) == (503, "UF")

    kit.run(main())


def test_flag_ut_upstream_timeout(kit: Any, tmp_path: Path) -> None:
    async def slow(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(2)
        return False

    async def main() -> None:
        backend = await kit.Backend("slow", slow).start()
        port = kit.free_port()
        config = kit.http_config(port, {"svc": [backend.port]}, timeout="0.2s")
        async with kit.proxy(config, tmp_path) as p:
            t0 = time.monotonic()
            resp = await kit.get(port)
            elapsed = time.monotonic() - t0
            lines = await p.wait_log(1)
        assert (resp.status, resp.body) == (504, b"upstream request timeout")
        assert elapsed < 1.5
        assert _flag_of(kit, lines[0]) == (504, "UT")

    kit.run(main())


def test_flag_uc_upstream_closed_before_answering(kit: Any, tmp_path: Path) -> None:
    async def hang_up(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        return False  # close without a response

    async def main() -> None:
        backend = await kit.Backend("rude", hang_up).start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path) as p:
            resp = await kit.get(port)
            lines = await p.wait_log(1)
        assert resp.status == 503 and b"connection termination" in resp.body
        assert _flag_of(kit, lines[0]) == (503, "UC")

    kit.run(main())


def test_flag_uc_upstream_closed_mid_body(kit: Any, tmp_path: Path) -> None:
    async def short(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
        return False

    async def main() -> None:
        backend = await kit.Backend("short", short).start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path) as p:
            data, closed = await kit.raw_exchange(port, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            lines = await p.wait_log(1)
        assert closed and data.endswith(b"partial")
        assert _flag_of(kit, lines[0]) == (200, "UC")

    kit.run(main())


def test_flag_dc_downstream_went_away(kit: Any, tmp_path: Path) -> None:
    async def slow(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(1)
        return False

    async def main() -> None:
        backend = await kit.Backend("slow", slow).start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path) as p:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
            await asyncio.sleep(0.2)
            # Gone for good (a reset): a FIN alone is a half-close, which is still owed its answer.
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            lines = await p.wait_log(1)
        assert _flag_of(kit, lines[0]) == (0, "DC")

    kit.run(main())


def test_flag_fi_fault_abort_and_metrics_labels(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        routes = [{"clusters": [{"cluster": "svc", "weight": 100}],
                   "fault": {"abort": {"percent": 100, "http_status": 418}}}]
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}, routes=routes), tmp_path) as p:
            resp = await kit.get(port)
            lines = await p.wait_log(1)
            metrics = render([p.ctx.stats]).decode()
        assert resp.status == 418 and not backend.requests
        assert _flag_of(kit, lines[0]) == (418, "FI")
        line = next(m for m in metrics.splitlines() if m.startswith("istio_requests_total{"))
        for label in ('reporter="source"', 'source_workload="sleep"', 'source_workload_namespace="default"',
                      'destination_service="svc.default.svc.cluster.local"', 'destination_service_name="svc"',
                      'destination_service_namespace="default"', 'request_protocol="http"', 'response_code="418"',
                      'response_flags="FI"'):
            assert label in line
        assert "istio_request_duration_milliseconds_bucket{" in metrics

    kit.run(main())


def test_flag_upe_garbage_from_upstream(kit: Any, tmp_path: Path) -> None:
    async def garbage(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nxx")
        return False

    async def main() -> None:
        backend = await kit.Backend("bad", garbage).start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path) as p:
            resp = await kit.get(port)
            lines = await p.wait_log(1)
        assert resp.status == 502
        assert _flag_of(kit, lines[0]) == (502, "UPE")

    kit.run(main())


def test_flag_uf_connect_timeout(kit: Any, tmp_path: Path) -> None:
    """An upstream whose accept queue is full never completes the handshake: connect_timeout ends it."""

    async def main() -> None:
        full = socket.socket()
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fillers = []
        for _ in range(3):  # more than the backlog holds; the kernel then drops SYNs
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):  # (the handshake is left pending on purpose)
                s.connect(full.getsockname())
            fillers.append(s)
        await asyncio.sleep(0.1)
        port = kit.free_port()
        config = kit.http_config(port, {"svc": [full.getsockname()[1]]}, connect_timeout="0.3s")
        async with kit.proxy(config, tmp_path) as p:
            t0 = time.monotonic()
            resp = await kit.get(port)
            elapsed = time.monotonic() - t0
            lines = await p.wait_log(1)
        for s in [*fillers, full]:
            s.close()
        assert resp.status == 503 and b"connection failure" in resp.body
        assert 0.25 <= elapsed < 2
        assert _flag_of(kit, lines[0]) == (503, "UF")

    kit.run(main())


def test_a_stuck_stdout_never_stalls_requests_and_drops_are_counted(kit: Any, tmp_path: Path) -> None:
    """The access log goes to a pipe nobody reads: every request is still answered (the writer never
    waits on the event loop), what does not fit is dropped and counted in metrics, and once the pipe is
    read again the lines that were kept come out."""
    import subprocess
    import sys

    config_file = tmp_path / "proxy.json"

    async def blast(port: int, connections: int, batches: int, per_batch: int) -> int:
        async def one() -> int:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answered = 0
            for _ in range(batches):
                writer.write(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n" * per_batch)
                data = b""
                while data.count(b"HTTP/1.1 200 ") < per_batch:
                    chunk = await reader.read(1 << 16)
                    if not chunk:
                        break
                    data += chunk
                answered += data.count(b"HTTP/1.1 200 ")
            writer.close()
            return answered

        return sum(await asyncio.gather(*(one() for _ in range(connections))))

    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        from google.protobuf import json_format

        config_file.write_text(json_format.MessageToJson(kit.http_config(port, {"svc": [backend.port]}),
                                                         preserving_proto_field_name=True))
        proc = subprocess.Popen([sys.executable, "-m", "meshbox.proxy", "--config", str(config_file),
                                 "--admin-port", "0", "--outbound-port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=False)
        try:
            assert proc.stderr is not None and proc.stdout is not None
            admin = 0
            while not admin:
                line = (await asyncio.to_thread(proc.stderr.readline)).decode()
                assert line, "proxy exited before announcing its admin port"
                if "admin listening on" in line:
                    admin = int(line.rsplit(":", 1)[1])
            # 12,800 lines of ~130 bytes: more than the pipe (64 KiB) and the writer's 1 MiB together.
            answered = await asyncio.wait_for(blast(port, 8, 16, 100), 60)
            assert answered == 12_800
            metrics = (await kit.get(admin, "/stats/prometheus", host="localhost")).body.decode()
            dropped = re.search(r"^meshbox_proxy_access_log_dropped_lines_total (\S+)$", metrics, re.M)
            assert dropped and 0 < float(dropped.group(1)) < 12_800, metrics[-1000:]
            kept = await asyncio.to_thread(proc.stdout.read, 1 << 16)
            assert kept.count(b'"GET / HTTP/1.1" 200 ') > 0
        finally:
            proc.terminate()
            proc.communicate(timeout=10)

    kit.run(main(), timeout=90)
