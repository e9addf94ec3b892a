"""The proxy's TLS layer (tls_layer.TlsLayer) on real TCP sockets on 127.0.0.1 under uvloop, with mutual
TLS 1.3 certificates made by `cryptography` (tls_kit.workload_identities).

Both sides of the layer are run against each other and against a stdlib peer (blocking ``ssl`` module
sockets in a thread: plain OpenSSL, which also tells a clean TLS EOF from a ragged one): the handshake,
data both ways, what ``get_extra_info`` shows, handshake timeouts and failures, close_notify both ways,
a record that fails, flow control and the transport methods the protocol above may call.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import pytest

from meshbox.proxy.workload_tls import WorkloadTls
from proxy.tests.test_mutual_tls import CLIENT_ID, SERVER_ID
from proxy.tests.tls_kit import (
    WAIT,
    App,
    LayerServer,
    MemoryEnd,
    layer_client,
    new_layer,
    recv_exactly,
    recv_until_eof,
    silent_server,
    stdlib_client,
    stdlib_context,
    workload_identities,
)

REQUEST = b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> tuple[WorkloadTls, WorkloadTls]:
    return workload_identities(tmp_path_factory.mktemp("tls-layer"))


def test_layer_client_and_layer_server(kit: Any, identities: Any) -> None:
    """Layer against layer: both handshakes complete, data crosses both ways, each side shows the ALPN
    choice, the peer's certificate and the TCP addresses; the client's close reaches the server's app as
    EOF then connection_lost, and the client's app gets connection_lost."""
    client_tls, server_tls = identities

    async def main() -> None:
        async with LayerServer(server_tls.server_context(), bytes.upper) as server:
            client, client_app = await layer_client(client_tls.client_context(), server.port)
            layer, app = await server.side(0)
            client.write(b"hello")
            await client_app.until(lambda: len(client_app.data) == 5)
            assert (bytes(app.data), bytes(client_app.data)) == (b"hello", b"HELLO")
            for side in (client, layer):
                assert side.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
                assert side.get_extra_info("ssl_object").version() == "TLSv1.3"
            assert ("URI", SERVER_ID) in client.get_extra_info("peercert")["subjectAltName"]
            assert ("URI", CLIENT_ID) in layer.get_extra_info("peercert")["subjectAltName"]
            assert layer.get_extra_info("peername") == client.get_extra_info("sockname")
            assert client.get_extra_info("peername") == ("127.0.0.1", server.port)
            assert app.transport is layer and client_app.transport is client
            client.close()
            assert client.is_closing()
            assert await asyncio.wait_for(app.lost, WAIT) is None
            assert await asyncio.wait_for(client_app.lost, WAIT) is None
            assert app.life() == ["made", "data", "eof", "lost"]
            assert client_app.life() == ["made", "data", "lost"]

    kit.run(main(), 20)


def test_layer_client_against_a_stdlib_server(kit: Any, identities: Any) -> None:
    """Against plain OpenSSL as the server: request and response cross; TLS has no half-close
    (can_write_eof False, write_eof refused); close() sends close_notify, which the server sees as a
    clean TLS EOF (not a ragged one) after the last 4 MiB written before it, still being flushed; a write
    after close is dropped (and does not cut that flush short)."""
    client_tls, server_tls = identities
    server_context = stdlib_context(server_tls, server_side=True)
    last = os.urandom(4 << 20)  # still in the write buffer when close() is called
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(WAIT)

    def serve() -> tuple[bytes, bytes, str, str | None]:
        conn, _ = listener.accept()
        conn.settimeout(WAIT)
        with server_context.wrap_socket(conn, server_side=True, suppress_ragged_eofs=False) as tls:
            request = recv_exactly(tls, len(REQUEST))
            tls.sendall(RESPONSE)
            rest, ending = recv_until_eof(tls)
            return request, rest, ending, tls.selected_alpn_protocol()

    async def main() -> None:
        served = asyncio.ensure_future(asyncio.to_thread(serve))
        client, app = await layer_client(client_tls.client_context(http2=True), listener.getsockname()[1])
        assert client.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        assert client.can_write_eof() is False
        with pytest.raises(NotImplementedError):
            client.write_eof()
        client.write(REQUEST)
        await app.until(lambda: len(app.data) >= len(RESPONSE))
        client.write(last)
        assert client.get_write_buffer_size() > 0
        client.close()
        client.write(b"after close")
        assert await asyncio.wait_for(served, WAIT) == (REQUEST, last, "close_notify", "h2")
        assert await asyncio.wait_for(app.lost, WAIT) is None
        assert bytes(app.data) == RESPONSE and app.life() == ["made", "data", "lost"]

    try:
        kit.run(main(), 20)
    finally:
        listener.close()


@pytest.mark.parametrize("ending", ["close_notify", "tcp_eof"])
def test_layer_server_against_a_stdlib_client(kit: Any, identities: Any, ending: str) -> None:
    """Against plain OpenSSL as the client: data both ways, ALPN h2 selected, the peer's address passed
    through; the client's close_notify (sent right behind its last data) or a bare TCP EOF reaches the
    app as all the data, then eof_received, then connection_lost(None), and nothing after the EOF. Either
    way the layer answers with its own close_notify: the client's unwrap() completes, or its read ends
    cleanly."""
    client_tls, server_tls = identities

    def talk(port: int) -> tuple[tuple[str, int], bytes, str]:
        tls = stdlib_client(stdlib_context(client_tls, server_side=False, http2=True), port)
        try:
            address = tls.getsockname()
            tls.sendall(b"ping")
            echoed = recv_exactly(tls, 4)
            tls.sendall(b"last words")
            if ending == "close_notify":
                tls.unwrap()  # returns once the layer's close_notify came back
                return address, echoed, "close_notify"
            socket.socket.shutdown(tls, socket.SHUT_WR)  # TCP FIN, no close_notify
            rest, how = recv_until_eof(tls)
            return address, echoed + rest, how
        finally:
            tls.close()

    async def main() -> None:
        async with LayerServer(server_tls.server_context(), lambda d: d.upper() if d == b"ping" else b"") as server:
            address, echoed, how = await asyncio.wait_for(asyncio.to_thread(talk, server.port), WAIT)
            layer, app = await server.side(0)
            assert (echoed, how) == (b"PING", "close_notify")
            assert await asyncio.wait_for(app.lost, WAIT) is None
            assert bytes(app.data) == b"pinglast words"
            assert app.life() == ["made", "data", "eof", "lost"]
            assert layer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
            assert layer.get_extra_info("peername") == address

    kit.run(main(), 20)


def test_a_server_that_never_answers_times_the_handshake_out(kit: Any, identities: Any) -> None:
    """The client's waiter fails with ConnectionAbortedError after handshake_timeout, the socket is closed
    (the server sees the ClientHello, then EOF) and the app is never connected."""
    client_tls, _ = identities

    async def main() -> None:
        received: list[bytes] = []
        server = await silent_server(received)
        try:
            app = App()
            layer, waiter = new_layer(client_tls.client_context(), False, app, timeout=0.3)
            loop = asyncio.get_running_loop()
            await loop.create_connection(lambda: layer, "127.0.0.1", server.sockets[0].getsockname()[1])
            with pytest.raises(ConnectionAbortedError, match=r"longer than 0\.3 seconds"):
                await asyncio.wait_for(waiter, WAIT)
            async with asyncio.timeout(WAIT):
                while not received:
                    await asyncio.sleep(0.01)
            assert received[0][:1] == b"\x16" and layer.is_closing() and app.events == []
        finally:
            server.close()

    kit.run(main(), 20)


def test_a_client_that_never_sends_its_hello_times_out(kit: Any, identities: Any) -> None:
    """The server side's waiter fails the same way and the client sees the connection closed."""
    _, server_tls = identities

    async def main() -> None:
        async with LayerServer(server_tls.server_context(), timeout=0.3) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                assert await asyncio.wait_for(reader.read(), WAIT) == b""
                _, app, waiter = server.sides[0]
                with pytest.raises(ConnectionAbortedError, match=r"longer than 0\.3 seconds"):
                    await waiter
                assert app.events == []
            finally:
                writer.close()

    kit.run(main(), 20)


def test_the_server_closing_during_the_handshake_fails_the_client(kit: Any, identities: Any) -> None:
    """A server that reads part of the ClientHello and closes: the client's waiter gets
    ConnectionResetError at once (not at the handshake timeout)."""
    client_tls, _ = identities

    async def main() -> None:
        received: list[bytes] = []
        server = await silent_server(received, close_after=1)
        try:
            app = App()
            layer, waiter = new_layer(client_tls.client_context(), False, app, timeout=60)
            loop = asyncio.get_running_loop()
            await loop.create_connection(lambda: layer, "127.0.0.1", server.sockets[0].getsockname()[1])
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(waiter, WAIT)
            assert layer.timer is None and app.events == []
        finally:
            server.close()

    kit.run(main(), 20)


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_the_client_closing_during_the_handshake_fails_the_server(kit: Any, identities: Any, how: str) -> None:
    """A client that sends half a real ClientHello and closes (FIN) or aborts (RST): the server's waiter
    gets ConnectionResetError (an OSError for the RST) at once, and its app is never connected."""
    client_tls, server_tls = identities
    hello_maker = MemoryEnd(client_tls.client_context())
    with pytest.raises(ssl.SSLWantReadError):
        hello_maker.ssl_object.do_handshake()
    hello = hello_maker.outgoing.read()

    async def main() -> None:
        async with LayerServer(server_tls.server_context(), timeout=60) as server:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
            sock.sendall(hello[: len(hello) // 2])
            if how == "rst":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
            _, app, waiter = await server.accepted(0)
            with pytest.raises(ConnectionResetError if how == "fin" else OSError):
                await asyncio.wait_for(waiter, WAIT)
            assert app.events == []

    kit.run(main(), 20)


def test_garbage_after_the_handshake_fails_that_connection_only(kit: Any, identities: Any,
                                                                capfd: pytest.CaptureFixture[str]) -> None:
    """Bytes that are no TLS record, written under a stdlib client's TLS after its handshake: that
    connection's app gets connection_lost with "TLS record refused: <reason>", stderr says so naming the
    peer; a second connection open beside it goes on exchanging data."""
    client_tls, server_tls = identities

    async def main() -> None:
        async with LayerServer(server_tls.server_context(), bytes.upper) as server:
            spoiled = await asyncio.to_thread(stdlib_client, stdlib_context(client_tls, server_side=False), server.port)
            healthy = await asyncio.to_thread(stdlib_client, stdlib_context(client_tls, server_side=False), server.port)
            try:
                _, spoiled_app = await server.side(0)
                await server.side(1)
                await asyncio.to_thread(os.write, spoiled.fileno(), b"GARBAGE, NOT A TLS RECORD\r\n")
                lost = await asyncio.wait_for(spoiled_app.lost, WAIT)
                assert isinstance(lost, ConnectionAbortedError)
                assert str(lost) == "TLS record refused: wrong version number"
                assert spoiled_app.life() == ["made", "lost"]
                for i in range(3):
                    await asyncio.to_thread(healthy.sendall, b"still here %d" % i)
                    assert await asyncio.to_thread(recv_exactly, healthy, 12) == b"STILL HERE %d" % i
            finally:
                spoiled.close()
                healthy.close()

    kit.run(main(), 20)
    err = capfd.readouterr().err
    assert "TLS connection with 127.0.0.1:" in err and "closed: record refused: wrong version number" in err


def test_writing_to_a_peer_that_does_not_read_pauses_the_app(kit: Any, identities: Any) -> None:
    """8 MiB written to a stdlib client that does not read: the app gets pause_writing; once the client
    reads everything, resume_writing; every byte arrives in order."""
    client_tls, server_tls = identities
    data = os.urandom(8 << 20)

    async def main() -> None:
        async with LayerServer(server_tls.server_context()) as server:
            context = stdlib_context(client_tls, server_side=False)
            tls = await asyncio.to_thread(stdlib_client, context, server.port, 65536)
            try:
                layer, app = await server.side(0)
                layer.set_write_buffer_limits(high=256 << 10)
                for start in range(0, len(data), 1 << 20):
                    layer.write(data[start:start + (1 << 20)])
                assert app.events.count("pause_writing") == 1 and layer.get_write_buffer_size() > 256 << 10
                assert await asyncio.to_thread(recv_exactly, tls, len(data)) == data
                await app.until(lambda: "resume_writing" in app.events)
                assert app.events.count("resume_writing") == 1
            finally:
                tls.close()

    kit.run(main(), 30)


def test_pause_reading_stops_delivery_until_resumed(kit: Any, identities: Any) -> None:
    """With the layer's reading paused, data the peer sent is not delivered (for 0.3 s here); after
    resume_reading it all is."""
    client_tls, server_tls = identities

    async def main() -> None:
        async with LayerServer(server_tls.server_context()) as server:
            client, _ = await layer_client(client_tls.client_context(), server.port)
            try:
                layer, app = await server.side(0)
                layer.pause_reading()
                assert not layer.is_reading()
                client.write(b"sent while paused")
                await asyncio.sleep(0.3)
                assert app.events == ["made"]
                layer.resume_reading()
                assert layer.is_reading()
                await app.until(lambda: len(app.data) == 17)
                assert bytes(app.data) == b"sent while paused"
            finally:
                client.close()

    kit.run(main(), 20)


def test_data_in_the_flight_that_ends_the_handshake_is_delivered(kit: Any, identities: Any) -> None:
    """A client whose Finished and first record leave in one TCP write (a memory-BIO client over a plain
    socket): the server's app gets that data at once, with no later bytes to push it through."""
    client_tls, server_tls = identities

    async def main() -> None:
        async with LayerServer(server_tls.server_context()) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                client = MemoryEnd(client_tls.client_context())
                with pytest.raises(ssl.SSLWantReadError):
                    client.ssl_object.do_handshake()
                writer.write(client.outgoing.read())
                while True:
                    flight = await asyncio.wait_for(reader.read(65536), WAIT)
                    assert flight, "the server closed during the handshake"
                    client.incoming.write(flight)
                    try:
                        client.ssl_object.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        continue
                client.ssl_object.write(b"in the same flight")
                writer.write(client.outgoing.read())
                _, app = await server.side(0)
                await app.until(lambda: len(app.data) == 18)
                assert bytes(app.data) == b"in the same flight"
            finally:
                writer.close()

    kit.run(main(), 20)


def test_a_foreign_certificate_fails_both_handshakes_with_the_alert_sent(kit: Any, identities: Any,
                                                                         tmp_path: Path) -> None:
    """A client of another mesh root: its waiter fails verifying the server's certificate, and the alert
    it sends tells the server why (unknown CA), rather than a bare EOF; neither app is connected."""
    _, server_tls = identities
    foreign_client, _ = workload_identities(tmp_path, "another mesh root")

    async def main() -> None:
        async with LayerServer(server_tls.server_context()) as server:
            app = App()
            layer, waiter = new_layer(foreign_client.client_context(), False, app)
            await asyncio.get_running_loop().create_connection(lambda: layer, "127.0.0.1", server.port)
            with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
                await asyncio.wait_for(waiter, WAIT)
            _, server_app, server_waiter = await server.accepted(0)
            with pytest.raises(ssl.SSLError, match="alert unknown ca"):
                await asyncio.wait_for(server_waiter, WAIT)
            assert app.events == [] and server_app.events == []

    kit.run(main(), 20)


def test_a_session_from_one_connection_resumes_the_next(kit: Any, identities: Any) -> None:
    """The session ticket the client layer read after its first exchange resumes a second connection
    (TlsLayer(..., session)): both sides see it reused, and data crosses."""
    client_tls, server_tls = identities

    async def main() -> None:
        async with LayerServer(server_tls.server_context(), bytes.upper) as server:
            first, first_app = await layer_client(client_tls.client_context(), server.port)
            first.write(b"one")
            await first_app.until(lambda: len(first_app.data) == 3)
            session = first.get_extra_info("ssl_object").session
            first.close()
            layer, app = await layer_client(client_tls.client_context(), server.port, session)
            second, _ = await server.side(1)
            assert layer.get_extra_info("ssl_object").session_reused
            assert second.get_extra_info("ssl_object").session_reused
            layer.write(b"two")
            await app.until(lambda: len(app.data) == 3)
            assert bytes(app.data) == b"TWO"
            layer.close()

    kit.run(main(), 20)
