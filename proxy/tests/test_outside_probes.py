"""Regression tests for what probing the proxy from outside found (issue #18): a standalone
``meshbox-proxy`` process (the build as installed, compiled by default), raw client sockets and a
backend that records the raw bytes it receives and can answer with any bytes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

CODECS = ["httptools", "h11"]


async def _read_until(reader: asyncio.StreamReader, count: int, timeout: float) -> bytes:
    """Read until ``count`` response status lines arrived (or the peer closed / time ran out)."""
    data = b""
    try:
        async with asyncio.timeout(timeout):
            while data.count(b"HTTP/1.1 ") < count:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        pass
    return data


def _stderr(proc: Any) -> str:
    """Stop the proxy and return everything it wrote on stderr."""
    proc.terminate()
    proc.wait(timeout=5)
    return str(proc.stderr.read())


def _log_lines(proc: Any) -> list[str]:
    return [line for line in Path(proc.log_path).read_text().splitlines() if line]


@pytest.mark.parametrize("codec", CODECS)
def test_d1_connection_cannot_remove_content_length(kit: Any, proxy_cli: Any, tmp_path: Path, codec: str) -> None:
    """D1: `Connection: content-length` must not strip the framing: the backend gets one POST whose body
    is the would-be smuggled request, never a second request of its own."""
    smuggled = b"GET /SMUGGLED HTTP/1.1\r\nHost: svc\r\n\r\n"
    attack = (b"POST /attacker HTTP/1.1\r\nHost: svc\r\nConnection: content-length\r\nContent-Length: %d\r\n\r\n%s"
              % (len(smuggled), smuggled))

    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        proc = await kit.standalone(proxy_cli, kit.http_config(port, {"svc": [backend.port]}), tmp_path,
                                    "--codec", codec, port=port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(attack)
        received = await _read_until(reader, 1, 3)
        await asyncio.sleep(0.2)  # a smuggled second request would reach the backend by now
        writer.close()
        assert received.startswith(b"HTTP/1.1 200 "), received[:200]
        assert [(r.method, r.target, r.body) for r in backend.requests] == [(b"POST", b"/attacker", smuggled)]
        assert backend.requests[0].header(b"content-length") == b"%d" % len(smuggled)
        assert b"/SMUGGLED" not in b"".join(line.encode() for line in _log_lines(proc))

    kit.run(main())


@pytest.mark.parametrize("codec", CODECS)
def test_d2_response_connection_cannot_remove_content_length(kit: Any, proxy_cli: Any, tmp_path: Path,
                                                             codec: str) -> None:
    """D2: the same rule on responses: a body that looks like a second response stays the body of the first."""
    fake = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-fake: yes\r\n\r\nbad"

    async def split(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        if req.target == b"/split":
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(fake), fake))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nreal")
        return True

    async def main() -> None:
        backend = await kit.Backend(handler=split).start()
        port = kit.free_port()
        await kit.standalone(proxy_cli, kit.http_config(port, {"svc": [backend.port]}), tmp_path,
                             "--codec", codec, port=port)
        client = await kit.Client.connect(port)
        try:
            first = await asyncio.wait_for(client.request(target="/split"), 3)
            second = await asyncio.wait_for(client.request(target="/next"), 3)
        finally:
            client.close()
        assert first.header(b"content-length") == b"%d" % len(fake) and first.body == fake
        assert second.status == 200 and second.body == b"real" and second.header(b"x-fake") is None

    kit.run(main())


@pytest.mark.parametrize("codec", CODECS)
def test_d3_connection_cannot_strip_host_request_id_or_tracing(kit: Any, proxy_cli: Any, tmp_path: Path,
                                                               codec: str) -> None:
    """D3: Host, x-request-id and the tracing headers are end-to-end whatever Connection names; a header
    that is really hop-by-hop (named in Connection) is still dropped."""
    tracing = [(b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
               (b"tracestate", b"congo=t61rcWkgMzE"), (b"b3", b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"),
               (b"x-b3-traceid", b"80f198ee56343ba864fe8b2a57d3eff7"), (b"x-b3-spanid", b"e457b5a2e4d86bd1"),
               (b"x-b3-sampled", b"1")]
    names = b", ".join([b"host", b"x-request-id", b"x-private", *(n for n, _ in tracing)])
    request = (b"GET /raw HTTP/1.1\r\nHost: svc\r\nx-request-id: rid-1\r\nx-private: secret\r\n"
               + b"".join(b"%s: %s\r\n" % h for h in tracing) + b"Connection: " + names + b"\r\n\r\n")

    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        proc = await kit.standalone(proxy_cli, kit.http_config(port, {"svc": [backend.port]}), tmp_path,
                                    "--codec", codec, port=port)
        # Without an x-request-id of its own, the one the proxy adds survives too.
        bare = b"GET /bare HTTP/1.1\r\nHost: svc\r\nConnection: host, x-request-id\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request + bare)
        received = await _read_until(reader, 2, 3)
        writer.close()
        await asyncio.sleep(0.05)
        assert received.count(b"HTTP/1.1 200 ") == 2, received[:300]
        seen, bare_seen = backend.requests
        assert seen.header(b"host") == b"svc" and seen.header(b"x-request-id") == b"rid-1"
        for name, value in tracing:
            assert seen.header(name) == value, name
        assert seen.header(b"x-private") is None and seen.header(b"connection") is None
        assert bare_seen.header(b"host") == b"svc"
        rid = bare_seen.header(b"x-request-id")
        assert rid is not None and len(rid) == 36
        # Two well-formed heads (on one upstream connection or two): no stray CRLF after either.
        raw = b"".join(backend.raw)
        assert raw.count(b"\r\n\r\n") == 2 and raw.endswith(b"\r\n\r\n") and b"\r\n\r\n\r\n" not in raw, raw
        lines = _log_lines(proc)
        assert '"rid-1"' in lines[0] and f'"{rid.decode()}"' in lines[1]

    kit.run(main())


@pytest.mark.parametrize("codec", CODECS)
def test_d4_big_request_in_one_read_gets_no_spurious_431(kit: Any, proxy_cli: Any, tmp_path: Path,
                                                         codec: str) -> None:
    """D4: the bytes of a finished request are never counted against the next request head's size."""
    body = b"b" * 102_400

    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        proc = await kit.standalone(proxy_cli, kit.http_config(port, {"svc": [backend.port]}), tmp_path,
                                    "--codec", codec, port=port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /one HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        first = await _read_until(reader, 2, 1.5)  # a spurious second answer would come right away
        writer.write(b"GET /two HTTP/1.1\r\nHost: svc\r\n\r\n")
        second = await _read_until(reader, 1, 3)
        writer.close()
        await asyncio.sleep(0.1)
        assert first.startswith(b"HTTP/1.1 200 ") and first.count(b"HTTP/1.1 ") == 1, first[-300:]
        assert second.startswith(b"HTTP/1.1 200 "), second[:200]
        assert [r.target for r in backend.requests] == [b"/one", b"/two"]
        assert backend.requests[0].body == body
        assert not any(" DPE " in line or " 431 " in line for line in _log_lines(proc))

    kit.run(main())


def test_d5_pipelined_requests_and_timeouts_raise_nothing(kit: Any, proxy_cli: Any, tmp_path: Path) -> None:
    """D5: a pipelined request dispatched after a response, a 504 or a 502 raises nothing, and route
    timeouts keep firing for the whole process afterwards."""

    async def hang_or_echo(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        if req.target == b"/hang":
            await asyncio.sleep(30)
            return False
        if req.target == b"/garbage":
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            return False
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        return True

    async def main() -> None:
        backend = await kit.Backend(handler=hang_or_echo).start()
        port = kit.free_port()
        proc = await kit.standalone(proxy_cli, kit.http_config(port, {"svc": [backend.port]}, timeout="0.5s"),
                                    tmp_path, port=port)
        get = b"GET %s HTTP/1.1\r\nHost: svc\r\n\r\n"
        for first in (b"/a", b"/hang", b"/garbage"):
            # Three requests in one write: the second and third wait in the backlog.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(get % first + get % b"/b" + get % b"/c")
            received = await _read_until(reader, 3, 3)
            writer.close()
            statuses = [int(part[:3]) for part in received.split(b"HTTP/1.1 ")[1:]]
            assert statuses == [{b"/a": 200, b"/hang": 504, b"/garbage": 502}[first], 200, 200], received[:500]
        # The timer wheel still fires: a later request that hangs gets its 504 in time.
        t0 = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(get % b"/hang")
        late = await _read_until(reader, 1, 3)
        writer.close()
        assert late.startswith(b"HTTP/1.1 504 ") and time.monotonic() - t0 < 2, late[:200]
        errors = await asyncio.to_thread(_stderr, proc)
        assert "Traceback" not in errors and "Error" not in errors, errors[-2000:]

    kit.run(main())


def test_d6_pipelined_local_reply_is_sent_at_once(kit: Any, proxy_cli: Any, tmp_path: Path) -> None:
    """D6: a local reply to a pipelined request goes out as soon as it is decided, without the client
    writing again."""

    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        routes = [{"match": {"prefix": "/a"}, "clusters": [{"cluster": "svc"}]}]
        await kit.standalone(proxy_cli, kit.http_config(port, {"svc": [backend.port]}, routes=routes), tmp_path,
                             port=port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\nGET * HTTP/1.1\r\nHost: svc\r\n\r\n"
                     b"GET /zzz HTTP/1.1\r\nHost: svc\r\n\r\n")
        received = await _read_until(reader, 3, 2)
        writer.close()
        statuses = [int(part[:3]) for part in received.split(b"HTTP/1.1 ")[1:]]
        assert statuses == [200, 404, 404], received

    kit.run(main())


@pytest.mark.parametrize("codec", CODECS)
def test_absolute_form_target_routes_by_its_authority(kit: Any, proxy_cli: Any, tmp_path: Path, codec: str) -> None:
    """RFC 9112 3.2.2: an absolute-form target is routed by its authority (a Host header is ignored), and
    goes upstream in origin form with that authority as Host."""

    async def main() -> None:
        svc, other = await kit.Backend("svc").start(), await kit.Backend("other").start()
        port = kit.free_port()
        routes = [{"match": {"prefix": "/x"}, "clusters": [{"cluster": "svc"}]}]
        config = kit.http_config(port, {"svc": [svc.port], "other": [other.port]}, routes=routes,
                                 domains=["svc"])
        config.route_configs[0].virtual_hosts.add(name="other", domains=["other"]).routes.add().clusters.add(
            cluster="other")
        proc = await kit.standalone(proxy_cli, config, tmp_path, "--codec", codec, port=port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET http://svc/x?q=1 HTTP/1.1\r\nHost: other\r\n\r\n"
                     b"GET HTTP://other HTTP/1.1\r\nHost: other\r\n\r\n")
        received = await _read_until(reader, 2, 3)
        writer.close()
        await asyncio.sleep(0.05)
        assert received.count(b"HTTP/1.1 200 ") == 2, received[:300]
        assert [(r.target, r.header(b"host")) for r in svc.requests] == [(b"/x?q=1", b"svc")]
        assert [(r.target, r.header(b"host")) for r in other.requests] == [(b"/", b"other")]
        first = kit.log_fields(_log_lines(proc)[0])
        assert first[1] == "GET /x?q=1 HTTP/1.1" and first[-2] == "svc"

    kit.run(main())


@pytest.mark.parametrize("codec", CODECS)
def test_partial_head_after_a_complete_request_gets_the_head_timeout(kit: Any, proxy_cli: Any, tmp_path: Path,
                                                                     codec: str) -> None:
    """A partial head in the same read as a complete request is watched by the head timeout (408), not
    left to the idle timeout."""

    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        proc = await kit.standalone(proxy_cli, kit.http_config(port, {"svc": [backend.port]}), tmp_path,
                                    "--codec", codec, "--request-head-timeout", "0.5", port=port)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.monotonic()
        writer.write(b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\nGET /b HTTP/1.1\r\nHo")
        received = await _read_until(reader, 2, 4)
        elapsed = time.monotonic() - t0
        writer.close()
        assert received.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.1 408 " in received, received[-300:]
        assert 0.4 <= elapsed < 2.5
        await asyncio.sleep(0.1)
        assert " 408 SI " in _log_lines(proc)[-1]

    kit.run(main())


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_refused_big_config_gives_its_memory_back(kit: Any, proxy_cli: Any) -> None:
    """A 20 MB POST /config that is refused leaves the proxy's memory where it was (it used to keep
    ~20 MB: the body was held as a list of read-sized chunks that fragmented the heap)."""
    import os

    async def main() -> None:
        proc = proxy_cli("--admin-port", "0", "--outbound-port", "0")
        port = await asyncio.to_thread(kit.admin_port, proc)
        client = await kit.Client.connect(port)
        try:
            assert (await client.request("GET", "/config_dump", host="localhost")).json()["config"] is None
            before = _rss_mib(proc.pid)
            refused = await client.request("POST", "/config", host="localhost", body=os.urandom(20 << 20))
            assert refused.status == 400, refused.body
            await asyncio.sleep(0.2)
            after = _rss_mib(proc.pid)
            dump = (await client.request("GET", "/config_dump", host="localhost")).json()
        finally:
            client.close()
        assert after - before < 6, (before, after)
        assert dump["config"] is None and dump["version"] == 0 and "outbound" in str(dump["ports"])

    kit.run(main())
