"""The agent's status server over real loopback sockets: probe answers, quit, and bad requests."""

from __future__ import annotations

import asyncio

import pytest

from meshbox.agent.http_client import HttpReply, http_request
from meshbox.agent.status_server import Answer, StatusServer, route


def test_routes_name_the_endpoint_or_the_error() -> None:
    assert route("GET", "/healthz/ready") == "ready"
    assert route("HEAD", "/healthz/ready?x=1") == "ready"
    assert route("POST", "/quitquitquit") == "quit"
    assert route("GET", "/stats/prometheus") == "metrics"
    assert route("POST", "/stats/prometheus") == Answer(405, "/stats/prometheus takes GET, not POST", allow="GET")
    assert route("GET", "/quitquitquit") == Answer(405, "/quitquitquit takes POST, not GET", allow="POST")
    assert route("POST", "/healthz/ready") == Answer(405, "/healthz/ready takes GET, not POST", allow="GET")
    missing = route("GET", "/nope")
    assert isinstance(missing, Answer) and missing.status == 404 and "/healthz/ready" in missing.text


async def _with_server(state: dict[str, object], body: object) -> object:
    quits: list[int] = []

    async def readiness() -> tuple[bool, str]:
        return bool(state["ready"]), str(state["reason"])

    server = await StatusServer(readiness, lambda: quits.append(1)).start("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await body(port, quits)  # type: ignore[operator]
    finally:
        server.close()
        await server.wait_closed()


def test_readiness_follows_the_agent_state_and_quit_calls_back() -> None:
    state: dict[str, object] = {"ready": False, "reason": "no config applied yet"}

    async def body(port: int, quits: list[int]) -> None:
        reply = await http_request("127.0.0.1", port, "GET", "/healthz/ready")
        assert reply == HttpReply(503, b"no config applied yet\n")
        state.update(ready=True, reason="ready")
        assert (await http_request("127.0.0.1", port, "GET", "/healthz/ready")).status == 200
        assert (await http_request("127.0.0.1", port, "GET", "/quitquitquit")).status == 405
        assert quits == []
        assert (await http_request("127.0.0.1", port, "POST", "/quitquitquit")).status == 200
        assert quits == [1]

    asyncio.run(_with_server(state, body))


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return reply


def test_keep_alive_serves_several_probes_on_one_connection() -> None:
    state: dict[str, object] = {"ready": True, "reason": "ready"}
    two = (b"GET /healthz/ready HTTP/1.1\r\nhost: x\r\n\r\n"
           b"HEAD /healthz/ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")

    async def body(port: int, quits: list[int]) -> bytes:
        return await _raw(port, two)

    reply = asyncio.run(_with_server(state, body))
    assert isinstance(reply, bytes)
    assert reply.count(b"HTTP/1.1 200") == 2
    assert reply.endswith(b"\r\n\r\n")  # the HEAD answer has no body


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NONSENSE\r\n\r\n", b"400"),
        (b"POST /quitquitquit HTTP/1.1\r\nhost: x\r\ncontent-length: 70000\r\n\r\n" + b"x" * 70000, b"413"),
    ],
)
def test_bad_requests_get_an_error_and_do_not_quit(request_bytes: bytes, status: bytes) -> None:
    state: dict[str, object] = {"ready": True, "reason": "ready"}

    async def body(port: int, quits: list[int]) -> tuple[bytes, list[int]]:
        return await _raw(port, request_bytes), quits

    reply, quits = asyncio.run(_with_server(state, body))  # type: ignore[misc]
    assert reply.startswith(b"HTTP/1.1 " + status)
    assert quits == []


def test_loopback_peers() -> None:
    from meshbox.agent.status_server import is_loopback_peer, remote_allowed

    for peer in (("127.0.0.1", 1), ("127.0.0.2", 1), ("::1", 1, 0, 0), ("::ffff:127.0.0.1", 1, 0, 0)):
        assert is_loopback_peer(peer), peer
    for peer in (("10.0.0.2", 1), ("::ffff:10.0.0.2", 1, 0, 0), ("fe80::1%eth0", 1, 0, 2), None, ("garbage", 1)):
        assert not is_loopback_peer(peer), peer
    assert remote_allowed("GET", "/healthz/ready") and remote_allowed("HEAD", "/healthz/ready?x")
    assert remote_allowed("GET", "/stats/prometheus") and not remote_allowed("POST", "/stats/prometheus")
    assert not remote_allowed("POST", "/quitquitquit") and not remote_allowed("GET", "/nope")
