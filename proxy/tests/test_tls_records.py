"""The TLS record functions under the proxy's TLS layer, C (``tls_records``) and pure Python
(``tls_records_pure``), on pairs of real SSL objects (CPython's ``_ssl``): mutual TLS 1.3 with certificates
made by `cryptography`, loaded by the proxy's own WorkloadTls, the handshake pumped through the memory BIOs.

Every behaviour test runs on three record paths: the C module's own TLS 1.3 record layer (what the proxy
uses after ``after_handshake``), the C module driving OpenSSL's record layer (a connection it does not
take over), and the pure-Python functions. The compiled build always has the C module (its cases are
skipped only in a build made pure on purpose, MESHBOX_PROXY_PURE=1, as in test_compiled_build.py). A
differential test feeds the C and pure paths the same records cut at the same random places and wants
the same results.
"""

from __future__ import annotations

import _ssl
import importlib
import itertools
import os
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshbox.proxy.workload_tls import WorkloadTls
from proxy.tests.tls_kit import workload_identities

C_RECORDS = "meshbox.proxy.tls_records"
PURE_RECORDS = "meshbox.proxy.tls_records_pure"
PURE_BUILD = os.environ.get("MESHBOX_PROXY_PURE") == "1"
NOT_PURE = pytest.mark.skipif(PURE_BUILD,
                              reason="meshbox-proxy was built pure-Python on purpose (MESHBOX_PROXY_PURE=1)")
IMPLEMENTATIONS = [
    pytest.param((C_RECORDS, True), id="c-own", marks=NOT_PURE),
    pytest.param((C_RECORDS, False), id="c-openssl", marks=NOT_PURE),
    pytest.param((PURE_RECORDS, False), id="pure"),
]
# What OpenSSL says of a record whose authentication tag does not verify.
BAD_MAC = "decryption failed or bad record mac"


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> tuple[WorkloadTls, WorkloadTls]:
    return workload_identities(tmp_path_factory.mktemp("tls-records"))


@dataclass
class Records:
    """A record path: the module, and whether its connections are handed to the C module's own record
    layer after the handshake (``own``)."""

    module: ModuleType
    own: bool

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


@pytest.fixture(params=IMPLEMENTATIONS)
def records(request: pytest.FixtureRequest) -> Records:
    name, own = request.param
    return Records(importlib.import_module(name), own)


def connected(identities: tuple[WorkloadTls, WorkloadTls], records: Records) -> tuple[object, object]:
    """(client, server) record handles of ``records`` after a complete handshake, as the TLS layer makes
    them; the server's session tickets already read by the client (post-handshake messages, no plaintext)."""
    client_tls, server_tls = identities
    ends = []
    for context, server_side in ((client_tls.client_context(), False), (server_tls.server_context(), True)):
        incoming, outgoing = _ssl.MemoryBIO(), _ssl.MemoryBIO()
        ssl_object = context._wrap_bio(incoming, outgoing, server_side, None)  # type: ignore[attr-defined]
        ends.append((ssl_object, incoming, outgoing, records.records_of(ssl_object, incoming, outgoing)))
    (client, client_in, client_out, client_records), (server, server_in, server_out, server_records) = ends
    done: set[int] = set()
    to_client = b""
    for _ in range(8):
        for side, out, peer_in in ((client, client_out, server_in), (server, server_out, client_in)):
            if id(side) in done:
                continue
            try:
                side.do_handshake()
            except _ssl.SSLWantReadError:
                peer_in.write(out.read())
                continue
            flushed = out.read()
            done.add(id(side))
            handle = client_records if side is client else server_records
            if records.own:
                assert records.after_handshake(handle, flushed), "the C module did not take the records over"
            if side is client:
                peer_in.write(flushed)
            else:
                to_client = flushed
    assert done == {id(client), id(server)}, "the handshake did not complete"
    assert client.version() == "TLSv1.3" and server.getpeercert() is not None
    assert records.read_records(client_records, to_client) == b""
    return client_records, server_records


def test_a_request_and_its_response_cross(records: Records, identities: Any) -> None:
    """Plaintext written on one side is what the other side reads, both ways; the session tickets the
    client reads with the response are not plaintext."""
    client, server = connected(identities, records)
    request = b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n"
    assert records.read_records(server, records.write_records(client, request)) == request
    response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    assert records.read_records(client, records.write_records(server, response)) == response


def test_several_records_in_one_feed_come_out_in_one_call(records: Records, identities: Any) -> None:
    """Ciphertext of several writes fed at once gives all their plaintext, in order, from one call."""
    client, server = connected(identities, records)
    messages = [b"one", b"two" * 1000, b"three" * 5000, b"four"]
    flight = b"".join(records.write_records(client, m) for m in messages)
    assert records.read_records(server, flight) == b"".join(messages)


def test_a_record_fed_byte_by_byte_completes_on_its_last_byte(records: Records, identities: Any) -> None:
    """A partial record is no plaintext and no error: b"" for every byte but the last."""
    client, server = connected(identities, records)
    record = records.write_records(client, b"partial until the end")
    assert [records.read_records(server, record[i:i + 1]) for i in range(len(record) - 1)] == [b""] * (len(record) - 1)
    assert records.read_records(server, record[-1:]) == b"partial until the end"


def test_a_mebibyte_comes_out_whole(records: Records, identities: Any) -> None:
    """1 MiB written at once (64 records, sixteen times the C module's 64 KiB read buffer) comes out equal,
    fed whole and fed in uneven pieces."""
    client, server = connected(identities, records)
    data = os.urandom(1 << 20)
    assert records.read_records(server, records.write_records(client, data)) == data
    flight = records.write_records(client, data)
    assert len(flight) > len(data) + 64 * 5
    pieces = [records.read_records(server, flight[i:i + 100_003]) for i in range(0, len(flight), 100_003)]
    assert b"".join(pieces) == data


def test_close_notify_raises_tls_closed_with_the_plaintext_before_it(records: Records, identities: Any) -> None:
    """The peer's close_notify ends the read with TlsClosed(plaintext that came before it in the same feed);
    bytes after it are not read."""
    client, server = connected(identities, records)
    flight = records.write_records(client, b"last words") + records.shutdown_records(client)
    with pytest.raises(records.TlsClosed) as closed:
        records.read_records(server, flight + b"\x17\x03\x03\x00\x05after")
    assert closed.value.args == (b"last words",)


def test_close_notify_split_across_feeds(records: Records, identities: Any) -> None:
    """Data then half a close_notify: the data; the other half: TlsClosed with nothing before it."""
    client, server = connected(identities, records)
    data = records.write_records(client, b"data")
    alert = records.shutdown_records(client)
    assert records.read_records(server, data + alert[:3]) == b"data"
    with pytest.raises(records.TlsClosed) as closed:
        records.read_records(server, alert[3:])
    assert closed.value.args == (b"",)


def test_a_tampered_record_fails_with_the_reason_and_the_plaintext_before_it(records: Records,
                                                                           identities: Any) -> None:
    """One flipped ciphertext byte: TlsFailed(OpenSSL's reason, plaintext of the good record before it);
    writing on the failed connection afterwards is refused with TlsFailed, not a crash."""
    client, server = connected(identities, records)
    good = records.write_records(client, b"good")
    bad = bytearray(records.write_records(client, b"tampered"))
    bad[8] ^= 0x01  # inside the encrypted content, after the 5-byte record header
    with pytest.raises(records.TlsFailed) as failed:
        records.read_records(server, good + bytes(bad))
    assert failed.value.args == (BAD_MAC, b"good")
    with pytest.raises(records.TlsFailed) as refused:
        records.write_records(server, b"after the failure")
    assert refused.value.args[1] == b""


def test_garbage_instead_of_a_record_fails(records: Records, identities: Any) -> None:
    """Bytes that are not a TLS record header fail at once, naming the wrong version."""
    _, server = connected(identities, records)
    with pytest.raises(records.TlsFailed) as failed:
        records.read_records(server, b"GET / HTTP/1.1\r\n\r\n")
    assert failed.value.args == ("wrong version number", b"")


def test_records_keep_flowing(records: Records, identities: Any) -> None:
    """300 exchanges of 1 byte to 40 KB each way, then a close_notify."""
    client, server = connected(identities, records)
    for i in range(300):
        size = 1 + (i * 7919) % 40_000
        request, response = bytes([i % 256]) * size, bytes([(i + 1) % 256]) * (40_001 - size)
        assert records.read_records(server, records.write_records(client, request)) == request
        assert records.read_records(client, records.write_records(server, response)) == response
    with pytest.raises(records.TlsClosed):
        records.read_records(client, records.shutdown_records(server))


@pytest.fixture
def ssl_socket() -> Iterator[ssl.SSLSocket]:
    """A client SSLSocket on a connected, non-blocking socket pair: it has the same private _SSLSocket as
    the layer's SSL objects, but on a socket, not on memory BIOs (non-blocking, so a wrongful use cannot
    hang)."""
    near, far = socket.socketpair()
    near.setblocking(False)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    wrapped = context.wrap_socket(near, do_handshake_on_connect=False)
    yield wrapped
    wrapped.close()
    far.close()


@pytest.mark.skipif(PURE_BUILD, reason="meshbox-proxy was built pure-Python on purpose (MESHBOX_PROXY_PURE=1)")
@pytest.mark.parametrize("kind", ["int", "none", "bytes", "object", "ssl_object"])
def test_the_c_functions_refuse_what_is_not_their_handle(kind: str, request: pytest.FixtureRequest) -> None:
    """Each C function raises TypeError for an argument that is not the handle records_of gives, before
    touching any SSL state (even the SSL object the handle would be made from)."""
    c = importlib.import_module(C_RECORDS)
    values = {"int": 42, "none": None, "bytes": b"data", "object": object()}
    if kind == "ssl_object":
        context = _ssl._SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
        values[kind] = context._wrap_bio(_ssl.MemoryBIO(), _ssl.MemoryBIO(), False, "x")  # type: ignore[attr-defined]
    value = values[kind]
    calls = {"read_records": lambda: c.read_records(value, b"\x16\x03\x01"),
             "write_records": lambda: c.write_records(value, b"plaintext"),
             "shutdown_records": lambda: c.shutdown_records(value),
             "after_handshake": lambda: c.after_handshake(value, b"")}
    outcomes = {}
    for name, call in calls.items():
        try:
            call()
            outcomes[name] = "accepted"
        except Exception as exc:
            outcomes[name] = type(exc).__name__
    assert outcomes == dict.fromkeys(calls, "TypeError")
    with pytest.raises(TypeError):
        c.read_records(b"one argument")  # wrong arity


@pytest.mark.skipif(PURE_BUILD, reason="meshbox-proxy was built pure-Python on purpose (MESHBOX_PROXY_PURE=1)")
def test_records_of_refuses_an_ssl_object_on_a_socket_or_on_other_bios(ssl_socket: ssl.SSLSocket) -> None:
    """An SSLSocket's SSL writes to its socket, and BIOs that are not the object's would feed nothing:
    records_of refuses both, naming why."""
    c = importlib.import_module(C_RECORDS)
    sock_ssl = ssl_socket._sslobj  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="not the ones"):
        c.records_of(sock_ssl, _ssl.MemoryBIO(), _ssl.MemoryBIO())
    context = _ssl._SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
    made_on = _ssl.MemoryBIO(), _ssl.MemoryBIO()
    ssl_object = context._wrap_bio(*made_on, False, "x")  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="not the ones"):
        c.records_of(ssl_object, _ssl.MemoryBIO(), made_on[1])
    with pytest.raises(TypeError):
        c.records_of(ssl_object, b"", b"")


def outcome(records: Records, handle: object, pieces: list[bytes]) -> list[tuple[str, Any]]:
    """What read_records gives for each piece, up to the first exception (class name and the plaintext it
    carries; the reasons' words differ between OpenSSL's record layer and the C module's)."""
    seen: list[tuple[str, Any]] = []
    for piece in pieces:
        try:
            seen.append(("data", records.read_records(handle, piece)))
        except (records.TlsClosed, records.TlsFailed) as end:
            seen.append((type(end).__name__, end.args[-1]))
            break
    return seen


def stream(records: Records, client: object, messages: list[bytes], ending: str, at: float) -> bytes:
    """The client's ciphertext of ``messages``, then its close_notify, or one byte flipped at ``at``."""
    flight = b"".join(records.write_records(client, m) for m in messages)
    if ending == "close_notify":
        return flight + records.shutdown_records(client) + b"trailing"
    if ending == "tampered":
        spoiled = bytearray(flight)
        spoiled[int(at * (len(flight) - 1))] ^= 0x40
        return bytes(spoiled)
    return flight


@pytest.mark.skipif(PURE_BUILD, reason="the differential needs the C module (built pure on purpose)")
@settings(max_examples=40, deadline=None)
@given(messages=st.lists(st.binary(min_size=1, max_size=20_000), min_size=1, max_size=4),
       ending=st.sampled_from(["open", "close_notify", "tampered"]), at=st.floats(0, 1),
       cuts=st.lists(st.integers(0, 90_000), max_size=8))
def test_c_and_pure_read_alike(identities: Any, messages: list[bytes], ending: str, at: float,
                               cuts: list[int]) -> None:
    """The same messages, written and cut into the same pieces on a connection of the C module's own record
    layer and of the pure functions over OpenSSL's (the keys differ, the lengths do not): the same
    plaintext per piece and the same exception."""
    results = []
    for name in (C_RECORDS, PURE_RECORDS):
        records = Records(importlib.import_module(name), name == C_RECORDS)
        client, server = connected(identities, records)
        flight = stream(records, client, messages, ending, at)
        edges = sorted({0, len(flight), *(c % (len(flight) + 1) for c in cuts)})
        results.append((len(flight), outcome(records, server, [flight[a:b] for a, b in itertools.pairwise(edges)])))
    assert results[0] == results[1]
    seen = results[0][1]
    plaintext = b"".join(data for kind, data in seen if kind == "data")
    if ending == "close_notify":
        assert seen[-1][0] == "TlsClosed"
        plaintext += seen[-1][1]
    if ending != "tampered":
        assert plaintext == b"".join(messages)


@pytest.mark.skipif(PURE_BUILD, reason="the comparison needs the C module (built pure on purpose)")
@pytest.mark.parametrize("own", [True, False], ids=["c-own", "c-openssl"])
def test_a_write_after_a_failure_is_refused_in_words(identities: Any, own: bool) -> None:
    """After a failed record, a write raises TlsFailed in every path, the C module driving OpenSSL's record
    layer wording it as the pure functions do, and no reason is a source location of CPython's _ssl."""
    reasons = {}
    for name, label in ((C_RECORDS, "c"), (PURE_RECORDS, "pure")):
        records = Records(importlib.import_module(name), own and name == C_RECORDS)
        _, server = connected(identities, records)
        with pytest.raises(records.TlsFailed):
            records.read_records(server, b"\x17\x03\x03\x00\x20" + bytes(32))
        with pytest.raises(records.TlsFailed) as refused:
            records.write_records(server, b"after the failure")
        reasons[label] = refused.value.args[0]
    assert all("ssl.c" not in reason for reason in reasons.values()), reasons
    if not own:
        assert reasons["c"] == reasons["pure"], reasons


def test_the_layer_uses_the_build_s_records_module() -> None:
    """tls_layer takes the C functions in a compiled build and the pure ones only in a pure build."""
    layer = importlib.import_module("meshbox.proxy.tls_layer")
    assert layer.read_records.__module__ == (PURE_RECORDS if PURE_BUILD else C_RECORDS)
