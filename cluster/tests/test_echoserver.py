"""meshbox's echoserver against the reference layout of echoserver:1.4 (shared/reference/echoserver-1.4.md)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from meshbox.cluster.echo_response import EchoRequest, host_part, merged_headers, render_body
from meshbox.cluster.echoserver import start

ACCESS_LOG: list[str] = []
TUTORIAL_BODY = """CLIENT VALUES:
client_address=10.244.0.3
command=GET
real path=/
query=nil
request_version=1.1
request_uri=http://service-two:8080/

SERVER VALUES:
server_version=nginx: 1.10.0 - lua: 10001

HEADERS RECEIVED:
accept=*/*
host=service-two
user-agent=curl/7.47.0
x-request-id=a641eff7-eb82-4a4f-b67b-53cd3a03c399
BODY:
-no body in request-"""


def test_tutorial_request_renders_the_reference_text() -> None:
    request = EchoRequest("10.244.0.3", "GET", "/", "1.1", [
        ("Host", "service-two"), ("User-Agent", "curl/7.47.0"), ("Accept", "*/*"),
        ("x-request-id", "a641eff7-eb82-4a4f-b67b-53cd3a03c399")])
    assert render_body(request, listen_port=8080, server_host="10.244.0.4").decode() == TUTORIAL_BODY


def test_query_version_body_and_host_port() -> None:
    request = EchoRequest("127.0.0.1", "POST", "/a/b?x=1&y=2", "1.0", [("Host", "svc:80")], b"hello")
    text = render_body(request, listen_port=8080, server_host="h").decode()
    assert "real path=/a/b?x=1&y=2\nquery=x=1&y=2\nrequest_version=1\n" in text
    # The listen port, not the Host header's port.
    assert "request_uri=http://svc:8080/a/b?x=1&y=2\n" in text
    assert text.endswith("host=svc:80\nBODY:\nhello")


def test_no_host_header_uses_server_address() -> None:
    text = render_body(EchoRequest("1.2.3.4", "GET", "/", "1.0"), listen_port=9000, server_host="10.0.0.9").decode()
    assert "request_uri=http://10.0.0.9:9000/\n" in text
    assert "HEADERS RECEIVED:\nBODY:\n-no body in request-" in text


def test_repeated_headers_run_together_sorted_lowercase() -> None:
    assert merged_headers([("X-B", "1"), ("x-a", "z"), ("X-b", "2")]) == [("x-a", "z"), ("x-b", "12")]
    assert host_part("[::1]:8080") == "[::1]"
    assert host_part("example:80") == "example"


@pytest.fixture
def server_port() -> Iterator[int]:
    """A real echoserver on 127.0.0.1 (free port) in a background event loop thread."""
    loop = asyncio.new_event_loop()
    ready: list[asyncio.Server] = []
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        ready.append(loop.run_until_complete(start("127.0.0.1", 0, ACCESS_LOG.append)))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(10)
    async def shutdown() -> None:
        ready[0].close()
        await ready[0].wait_closed()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        yield ready[0].sockets[0].getsockname()[1]
    finally:
        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_curl_gets_the_echo(server_port: int) -> None:
    out = subprocess.run(["curl", "-s", "-H", "x-request-id: abc", f"http://127.0.0.1:{server_port}/p?q=1"],
                         check=True, capture_output=True, text=True, timeout=10).stdout
    assert out.startswith("CLIENT VALUES:\nclient_address=127.0.0.1\ncommand=GET\nreal path=/p?q=1\nquery=q=1\n")
    assert f"request_uri=http://127.0.0.1:{server_port}/p?q=1\n" in out
    assert "\nx-request-id=abc\nBODY:\n-no body in request-" in out
    assert ACCESS_LOG[-1].startswith('127.0.0.1 - - [') and '"GET /p?q=1 HTTP/1.1" 200 ' in ACCESS_LOG[-1]


def test_keep_alive_two_requests_and_post_body(server_port: int) -> None:
    raw = (b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
           b"POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nConnection: close\r\n\r\nping")
    reply = _exchange(server_port, raw)
    assert reply.count(b"HTTP/1.1 200 ") == 2
    assert b"Content-Type: text/plain" in reply
    assert b"real path=/one" in reply
    assert reply.endswith(b"BODY:\nping\r\n0\r\n\r\n")  # chunked, as nginx answers HTTP/1.1


def test_garbage_gets_400_and_server_keeps_serving(server_port: int) -> None:
    assert _exchange(server_port, b"NOT HTTP AT ALL\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert b"command=GET" in _exchange(server_port, b"GET / HTTP/1.0\r\n\r\n")


def test_cli_rejects_bad_port() -> None:
    result = subprocess.run([sys.executable, "-m", "meshbox.cluster.echoserver", "--port", "70000"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert "--port must be 1-65535" in result.stderr


# ---- where echoserver:1.4 (nginx + lua) and a naive echo differ; each compared with nginx's answer ----


def test_absolute_form_target_names_the_host_once() -> None:
    request = EchoRequest("1.2.3.4", "GET", "http://Service-Two:80/p?q=1", "1.1", [("Host", "ignored")])
    text = render_body(request, listen_port=8080, server_host="h").decode()
    # nginx: $request_uri is the path from the absolute URI; $host comes from the request line.
    assert "real path=/p?q=1\nquery=q=1\n" in text
    assert "request_uri=http://service-two:8080/p?q=1\n" in text
    bare = render_body(EchoRequest("1.2.3.4", "GET", "http://svc", "1.1"), listen_port=8080, server_host="h")
    assert b"request_uri=http://svc:8080/\n" in bare


def test_host_in_request_uri_is_lower_cased_but_the_header_is_not() -> None:
    request = EchoRequest("1.2.3.4", "GET", "/", "1.1", [("Host", "Service-TWO:80")])
    text = render_body(request, listen_port=8080, server_host="h").decode()
    assert "request_uri=http://service-two:8080/\n" in text
    assert "\nhost=Service-TWO:80\n" in text


def test_empty_query_prints_nil() -> None:
    text = render_body(EchoRequest("1.2.3.4", "GET", "/?", "1.1", [("Host", "a")]), listen_port=80,
                       server_host="h").decode()
    assert "real path=/?\nquery=nil\n" in text


def test_headers_with_underscores_are_dropped() -> None:
    request = EchoRequest("1.2.3.4", "GET", "/", "1.1", [("Host", "a"), ("X_Forged", "1"), ("x-real", "2")])
    text = render_body(request, listen_port=80, server_host="h").decode()
    assert "x_forged" not in text and "\nx-real=2\n" in text


def _head_and_body(reply: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def test_status_line_has_the_reason_phrase(server_port: int) -> None:
    lines, _ = _head_and_body(_exchange(server_port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"))
    assert lines[0] == b"HTTP/1.1 200 OK"
    bad, _ = _head_and_body(_exchange(server_port, b"NOT HTTP AT ALL\r\n\r\n"))
    assert bad[0] == b"HTTP/1.1 400 Bad Request"


def test_http11_answer_is_chunked_and_keeps_alive(server_port: int) -> None:
    with socket.create_connection(("127.0.0.1", server_port), timeout=5) as sock:
        sock.sendall(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        reply = b""
        while not reply.endswith(b"\r\n0\r\n\r\n"):
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {reply!r}"
            reply += chunk
        lines, body = _head_and_body(reply)
        assert b"Transfer-Encoding: chunked" in lines and b"Connection: keep-alive" in lines
        assert not any(line.lower().startswith(b"content-length") for line in lines)
        size, _, rest = body.partition(b"\r\n")
        assert rest[: int(size, 16)].endswith(b"BODY:\n-no body in request-")
        # Still open: a second request on the same connection is answered.
        sock.sendall(b"GET /second HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        second = b""
        while chunk := sock.recv(65536):
            second += chunk
    lines, _ = _head_and_body(second)
    assert lines[0] == b"HTTP/1.1 200 OK" and b"Connection: keep-alive" not in lines
    assert b"real path=/second" in second


def test_http10_answer_is_close_delimited(server_port: int) -> None:
    lines, body = _head_and_body(_exchange(server_port, b"GET / HTTP/1.0\r\n\r\n"))
    assert b"Connection: close" in lines and not any(b"chunked" in line or b"Content-Length" in line
                                                     for line in lines)
    assert body.startswith(b"CLIENT VALUES:\n") and body.endswith(b"-no body in request-")
