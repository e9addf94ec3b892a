"""The proxy's own TLS 1.3 record layer (tls13_protection.c, tls13_stream.c behind tls_records) against
stock OpenSSL: the ssl module's record layer in memory, and `openssl s_client` over a real socket.

After the handshake, tls_records seals and opens a connection's records itself (keys from the traffic
secrets). What must hold: every byte either side writes reaches the other unchanged whichever side runs
which layer; sequence numbers agree after the server's session tickets; the client still keeps a session
that resumes; key updates in both directions (requested or not) keep the connection working; other
cipher suites stay on OpenSSL's record layer; a record that fails says why and moves nothing more.
"""

from __future__ import annotations

import _ssl
import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import uvloop

from conftest import Pki, free_port, need  # type: ignore[import-not-found]
from meshbox.proxy.tls_layer import TlsLayer
from meshbox.proxy.tls_records import (
    TlsClosed,
    TlsFailed,
    after_handshake,
    read_records,
    records_of,
    shutdown_records,
    write_records,
)
from meshbox.proxy.workload_tls import WorkloadTls

CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/server"


def _identity(pki: Pki, directory: Path, root: Any, root_key: Any, uri: str) -> Path:
    directory.mkdir()
    cert, key = pki.leaf(root, root_key, uris=(uri,))
    (directory / "key.pem").write_bytes(pki.key_pem(key))
    (directory / "cert-chain.pem").write_bytes(pki.pem(cert))
    (directory / "root-cert.pem").write_bytes(pki.pem(root))
    return directory


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> tuple[WorkloadTls, WorkloadTls, Path]:
    """(client, server) workload contexts from one root, and the client's certificate directory."""
    pki = Pki()
    root, root_key = pki.root()
    tmp = tmp_path_factory.mktemp("tls13")
    client_dir = _identity(pki, tmp / "client", root, root_key, CLIENT_ID)
    server_dir = _identity(pki, tmp / "server", root, root_key, SERVER_ID)
    return WorkloadTls(str(client_dir)), WorkloadTls(str(server_dir)), client_dir


class Side:
    """One end of an in-memory connection: its C SSL object, its records and whether they are ours."""

    def __init__(self, context: Any, server_side: bool, own: bool, session: Any = None) -> None:
        self.incoming, self.outgoing = _ssl.MemoryBIO(), _ssl.MemoryBIO()
        self.ssl_object = context._wrap_bio(self.incoming, self.outgoing, server_side, None, session=session)
        self.records = records_of(self.ssl_object, self.incoming, self.outgoing)
        self.want_own = own
        self.own: bool | None = None  # after_handshake's answer


def handshake(identities: Any, own_client: bool, own_server: bool,
              session: _ssl.SSLSession | None = None) -> tuple[Side, Side, bytes]:
    """A mutual TLS 1.3 handshake through memory BIOs; each side's records ours or OpenSSL's as asked.
    Returns (client, server, bytes still on their way to the client: the session tickets)."""
    client_tls, server_tls, _ = identities
    client = Side(client_tls.client_context(), False, own_client, session)
    server = Side(server_tls.server_context(), True, own_server)
    to = {id(client): b"", id(server): b""}
    peer = {id(client): server, id(server): client}
    for _ in range(6):
        for side in (client, server):
            if side.own is not None:
                continue
            side.incoming.write(to[id(side)])
            to[id(side)] = b""
            try:
                side.ssl_object.do_handshake()
            except _ssl.SSLWantReadError:
                to[id(peer[id(side)])] += side.outgoing.read()
                continue
            flushed = side.outgoing.read()
            side.own = after_handshake(side.records, flushed) if side.want_own else False
            to[id(peer[id(side)])] += flushed
    assert client.own is not None and server.own is not None, "the handshake did not finish"
    return client, server, to[id(client)]


@pytest.mark.parametrize(("own_client", "own_server"), [(True, True), (True, False), (False, True)])
def test_records_cross_between_our_layer_and_openssls(identities: Any, own_client: bool, own_server: bool) -> None:
    """Whichever side runs which record layer, bytes arrive whole both ways, the server's session tickets
    included (the client reads them first: sequence numbers must agree), and close_notify closes."""
    client, server, tickets = handshake(identities, own_client, own_server)
    assert (client.own, server.own) == (own_client, own_server)
    assert read_records(client.records, tickets) == b""
    assert client.ssl_object.session is not None and client.ssl_object.version() == "TLSv1.3"
    for n in range(3):
        request = b"GET /%d HTTP/1.1\r\nhost: x\r\n\r\n" % n
        assert read_records(server.records, write_records(client.records, request)) == request
        response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        assert read_records(client.records, write_records(server.records, response)) == response
    big = bytes(range(256)) * 4096  # 1 MiB: 65 records
    ciphertext = write_records(client.records, big)
    pieces = [read_records(server.records, ciphertext[i:i + 1000]) for i in range(0, len(ciphertext), 1000)]
    assert b"".join(pieces) == big
    with pytest.raises(TlsClosed) as closed:
        read_records(server.records, write_records(client.records, b"last") + shutdown_records(client.records))
    assert closed.value.args == (b"last",)


def test_a_client_on_our_layer_keeps_a_session_that_resumes(identities: Any) -> None:
    """The tickets reach OpenSSL through our layer: the next connection resumes with the session."""
    client, _, tickets = handshake(identities, True, True)
    read_records(client.records, tickets)
    session = client.ssl_object.session
    again, _, _ = handshake(identities, True, True, session=session)
    assert again.ssl_object.session_reused and again.own


def test_a_tampered_record_fails_naming_why_and_nothing_more_moves(identities: Any) -> None:
    client, server, tickets = handshake(identities, True, True)
    read_records(client.records, tickets)
    ciphertext = bytearray(write_records(client.records, b"kept") + write_records(client.records, b"lost"))
    ciphertext[-5] ^= 0x40
    with pytest.raises(TlsFailed) as failed:
        read_records(server.records, bytes(ciphertext))
    assert failed.value.args == ("decryption failed or bad record mac", b"kept")
    with pytest.raises(TlsFailed, match="already failed"):
        read_records(server.records, write_records(client.records, b"more"))


@pytest.mark.parametrize("garbage", [
    b"\x17\x03\x03\x00\x05hello",                     # too short to hold a tag
    b"\x17\x03\x03\x41\x01" + b"\x00" * 16,           # longer than any record may be
    b"\x15\x03\x03\x00\x02\x02\x28",                  # an alert in the clear after the handshake
    b"\x16\x03\x01\x00\x04abcd",                      # a handshake record in the clear
])
def test_malformed_records_are_refused(identities: Any, garbage: bytes) -> None:
    _, server, _ = handshake(identities, True, True)
    with pytest.raises(TlsFailed) as failed:
        read_records(server.records, garbage)
    assert failed.value.args[1] == b"" and failed.value.args[0]


def test_writes_after_shutdown_are_refused_and_reads_after_close_notify_stay_closed(identities: Any) -> None:
    client, server, tickets = handshake(identities, True, True)
    read_records(client.records, tickets)
    with pytest.raises(TlsClosed):
        read_records(server.records, shutdown_records(client.records))
    with pytest.raises(TlsFailed, match="shut down"):
        write_records(client.records, b"after")
    with pytest.raises(TlsClosed):
        read_records(server.records, b"")
    # The side that received close_notify can still send its own (TLS 1.3 closes each direction alone).
    with pytest.raises(TlsClosed):
        read_records(client.records, shutdown_records(server.records))


def test_handle_type_is_checked(identities: Any) -> None:
    with pytest.raises(TypeError):
        read_records(object(), b"")
    with pytest.raises(TypeError):
        records_of(object(), _ssl.MemoryBIO(), _ssl.MemoryBIO())


class Echo(asyncio.Protocol):
    def __init__(self, seen: list[bytes], layers: list[TlsLayer]) -> None:
        self.seen, self.layers = seen, layers

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.layers.append(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.seen.append(data)
        self.transport.write(b"echo:" + data)  # type: ignore[attr-defined]


def _s_client(identities: Any, port: int, suite: str, lines: list[bytes]) -> str:
    """`openssl s_client` sending ``lines`` a little apart (its K and k lines are key updates)."""
    _, _, client_dir = identities
    script = "".join(f"printf '{line.decode()}\\n'; sleep 0.3; " for line in lines) + "sleep 0.5"
    result = subprocess.run(
        f"({script}) | openssl s_client -connect 127.0.0.1:{port} -tls1_3 -ciphersuites {suite} "
        f"-cert {client_dir}/cert-chain.pem -key {client_dir}/key.pem -CAfile {client_dir}/root-cert.pem",
        shell=True, capture_output=True, text=True, timeout=20)
    return result.stdout + result.stderr


@pytest.mark.parametrize(("suite", "own"), [("TLS_AES_256_GCM_SHA384", True), ("TLS_AES_128_GCM_SHA256", True),
                                            ("TLS_CHACHA20_POLY1305_SHA256", False)])
def test_openssl_s_client_with_key_updates(identities: Any, suite: str, own: bool) -> None:
    """A real `openssl s_client` against TlsLayer: data after a key update it requests (K: we must answer
    and switch our keys) and one it does not (k); ChaCha20 stays with OpenSSL's record layer."""
    need(shutil.which("openssl") is not None, "openssl is not installed")
    _, server_tls, _ = identities
    seen: list[bytes] = []
    layers: list[TlsLayer] = []
    port = free_port()

    async def main() -> str:
        loop = asyncio.get_running_loop()

        def layer() -> TlsLayer:
            return TlsLayer(loop, server_tls.server_context(), True, Echo(seen, layers), loop.create_future(), 5.0)

        server = await loop.create_server(layer, "127.0.0.1", port)
        try:
            return await loop.run_in_executor(None, _s_client, identities, port, suite,
                                              [b"one", b"K", b"two", b"k", b"three"])
        finally:
            server.close()

    output = uvloop.run(main())
    assert output.count("KEYUPDATE") == 2, output
    assert b"".join(seen) == b"one\ntwo\nthree\n"
    assert "echo:one" in output and "echo:two" in output and "echo:three" in output, output
    assert [layer.own_records for layer in layers] == [own]
