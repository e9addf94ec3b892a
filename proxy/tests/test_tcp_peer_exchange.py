"""The TCP metadata exchange (peer_exchange) over real mutual TLS between two real meshbox-proxy processes.

A client-side proxy (outbound TCP listener → cluster with mutual TLS) talks to a server-side proxy
(inbound TCP listener, STRICT) in front of a raw TCP backend on 127.0.0.1. Covered: the TCP metrics of
both sides name the other side's workload; a server-first protocol (the backend speaks first) still
works; on a TLS connection that did not negotiate the ALPN, bytes shaped like a preamble reach the app
untouched; a negotiated connection gets the server's preamble first and its own is stripped; an
oversize, a wrongly marked and a cut-short preamble close the connection (counted, stderr says why)
with nothing forwarded; and a server sidecar stand-in (a TLS server in the test) sees the client
proxy's preamble before any app byte and makes it close the connection when its own is malformed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Pki  # type: ignore[import-not-found]
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.v1 import security_pb2
from meshbox.proxy.peer_exchange import ALPN, HEADER_SIZE, MAGIC, PreambleReader, peer_of_struct, preamble
from meshbox.proxy.peer_metadata import encode_struct

CLIENT_ID = "spiffe://cluster.local/ns/default/sa/sleep"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/httpbin"
STRICT = security_pb2.PeerAuthentication.MutualTLS.STRICT
FMT = "%RESPONSE_FLAGS% up=%UPSTREAM_PEER_URI_SAN% fail=%UPSTREAM_TRANSPORT_FAILURE_REASON%\n"
CLIENT_ENV = {"POD_NAME": "sleep-5f7b9c8d4-x2x9z", "POD_NAMESPACE": "default", "APP": "sleep"}
SERVER_ENV = {"POD_NAME": "httpbin-6d9f8b7c5-abcde", "POD_NAMESPACE": "default", "APP": "httpbin"}
MALFORMED = "meshbox_proxy_peer_exchange_malformed_total"


class TcpBackend:
    """A raw TCP server: writes ``banner`` when a connection opens (a server-first protocol), then echoes;
    records every connection's bytes as received."""

    def __init__(self, banner: bytes = b"") -> None:
        self.banner = banner
        self.received: list[bytearray] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> TcpBackend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = bytearray()
        self.received.append(got)
        if self.banner:
            writer.write(self.banner)
        try:
            while chunk := await reader.read(65536):
                got += chunk
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def write_identity(pki: Any, directory: Path, root: Any, root_key: Any, uri: str) -> Path:
    """A certificate directory as the proxy reads it (files directly in it: no rotation here)."""
    directory.mkdir(parents=True)
    cert, key = pki.leaf(root, root_key, uris=(uri,))
    (directory / "key.pem").write_bytes(pki.key_pem(key))
    (directory / "cert-chain.pem").write_bytes(pki.pem(cert))
    (directory / "root-cert.pem").write_bytes(pki.pem(root))
    return directory


def tcp_config(direction: int, port: int, upstream: int, tls: pc.UpstreamTls | None = None) -> pc.ProxyConfig:
    """A TCP listener on 127.0.0.1:``port`` to a cluster of one endpoint, ``upstream``."""
    inbound = direction == pc.INBOUND
    cluster = pc.Cluster(name="inbound|app" if inbound else "outbound|httpbin",
                         service="httpbin.default.svc.cluster.local", tls=tls)
    listener = pc.Listener(name="in" if inbound else "out", direction=direction, address="127.0.0.1", port=port,
                           protocol=pc.TCP, bind=True, cluster=cluster.name, mtls_mode=STRICT if inbound else 0)
    return pc.ProxyConfig(clusters=[cluster], listeners=[listener], endpoints=[pc.ClusterLoadAssignment(
        cluster_name=cluster.name, endpoints=[pc.Endpoint(address="127.0.0.1", port=upstream, sidecar=not inbound)])])


def stop(proc: Any) -> tuple[str, str]:
    """Stop a proxy; its access log and the rest of its stderr."""
    proc.terminate()
    _, err = proc.communicate(timeout=10)
    return Path(proc.log_path).read_text(), err


class Sidecars:
    """The client-side and server-side proxies, each with its workload (env) and certificate."""

    def __init__(self, kit: Any, proxy_cli: Any, tmp_path: Path, pki: Any) -> None:
        self.kit, self.proxy_cli, self.tmp_path, self.pki = kit, proxy_cli, tmp_path, pki
        self.root, self.root_key = pki.root("mesh root")
        self.client_dir = write_identity(pki, tmp_path / "client-certs", self.root, self.root_key, CLIENT_ID)
        self.server_dir = write_identity(pki, tmp_path / "server-certs", self.root, self.root_key, SERVER_ID)
        self.in_port = kit.free_port()
        self.out_port = kit.free_port()

    async def start_server(self, backend: int) -> Any:
        self.server = await self.kit.standalone(
            self.proxy_cli, tcp_config(pc.INBOUND, self.in_port, backend), self.tmp_path,
            "--cert-dir", str(self.server_dir), "--access-log-format", FMT, port=self.in_port, env=SERVER_ENV)
        return self.server

    async def start_client(self, upstream: int) -> Any:
        self.client = await self.kit.standalone(
            self.proxy_cli, self._client_config(upstream), self.tmp_path,
            "--cert-dir", str(self.client_dir), "--access-log-format", FMT, port=self.out_port, env=CLIENT_ENV)
        return self.client

    def _client_config(self, upstream: int) -> pc.ProxyConfig:
        tls = pc.UpstreamTls(mode=pc.UpstreamTls.MUTUAL, subject_alt_names=[SERVER_ID])
        return tcp_config(pc.OUTBOUND, self.out_port, upstream, tls)

    def _context(self, side: ssl._SSLMethod, uri: str, alpn: bool) -> ssl.SSLContext:
        cert, key = self.pki.leaf(self.root, self.root_key, uris=(uri,))
        name = f"{side.name}-{len(list(self.tmp_path.iterdir()))}"
        (self.tmp_path / f"{name}.crt").write_bytes(self.pki.pem(cert))
        (self.tmp_path / f"{name}.key").write_bytes(self.pki.key_pem(key))
        ctx = ssl.SSLContext(side)
        if side == ssl.PROTOCOL_TLS_CLIENT:
            ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(self.tmp_path / f"{name}.crt", self.tmp_path / f"{name}.key")
        ctx.load_verify_locations(cadata=self.pki.pem(self.root).decode())
        if alpn:
            ctx.set_alpn_protocols([ALPN])
        return ctx

    def tls_client(self, alpn: bool = True) -> ssl.SSLContext:
        """A TLS client with the client workload's identity, offering the exchange's ALPN or not."""
        return self._context(ssl.PROTOCOL_TLS_CLIENT, CLIENT_ID, alpn)

    def tls_server(self) -> ssl.SSLContext:
        """A TLS server with the server workload's identity that accepts the exchange's ALPN."""
        return self._context(ssl.PROTOCOL_TLS_SERVER, SERVER_ID, True)

    async def metrics(self, proc: Any) -> str:
        return (await self.kit.get(self.kit.admin_port_of(proc), "/stats/prometheus")).body.decode()


def tcp_samples(text: str, name: str = "istio_tcp_connections_opened_total") -> list[dict[str, str]]:
    return [dict(sample.labels, value=str(sample.value)) for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name]


def counter(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def read_preamble(reader: asyncio.StreamReader) -> bytes:
    """A whole preamble off ``reader``; its Struct."""
    head = await asyncio.wait_for(reader.readexactly(HEADER_SIZE), 5)
    body = await asyncio.wait_for(reader.readexactly(int.from_bytes(head[-4:], "big")), 5)
    done = PreambleReader().feed(head + body)
    assert done is not None and done[1] == b""
    return done[0]


async def talk(port: int, data: bytes, banner: bytes = b"") -> bytes:
    """Through a plaintext connection to ``port``: read ``banner`` first when given, then send ``data`` and
    read its echo."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if banner:
            assert await asyncio.wait_for(reader.readexactly(len(banner)), 5) == banner
        writer.write(data)
        echoed = await asyncio.wait_for(reader.readexactly(len(data)), 5)
    finally:
        writer.close()
    return echoed


async def wait_closed_count(side: Sidecars, proc: Any, count: int) -> str:
    """The metrics of ``proc`` once ``count`` TCP connections are counted closed (bounded wait)."""
    text = ""
    for _ in range(100):
        text = await side.metrics(proc)
        if sum(float(s["value"]) for s in tcp_samples(text, "istio_tcp_connections_closed_total")) >= count:
            break
        await asyncio.sleep(0.05)
    return text


@pytest.fixture
def pki() -> Any:
    return Pki()


def test_tcp_metrics_name_the_peer_workloads_on_both_sides(kit: Any, proxy_cli: Any, tmp_path: Path, pki: Any) -> None:
    side = Sidecars(kit, proxy_cli, tmp_path, pki)

    async def main() -> tuple[str, str, list[bytes], list[bytearray]]:
        backend = await TcpBackend().start()
        await side.start_server(backend.port)
        await side.start_client(side.in_port)
        echoes = [await talk(side.out_port, b"hello %d" % i) for i in range(3)]
        server_metrics = await wait_closed_count(side, side.server, 3)
        client_metrics = await wait_closed_count(side, side.client, 3)
        backend.close()
        return server_metrics, client_metrics, echoes, backend.received

    server_metrics, client_metrics, echoes, received = kit.run(main())
    # The preambles never reach either app: the backend got exactly what the client sent, and back.
    # (An empty connection is the readiness probe of the client proxy's start.)
    assert echoes == [b"hello %d" % i for i in range(3)]
    assert [bytes(r) for r in received if r] == [b"hello %d" % i for i in range(3)]
    for name in ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total"):
        # (The readiness probe's connection may end before any preamble: it is left out by its count.)
        inbound = [s for s in tcp_samples(server_metrics, name) if float(s["value"]) >= 3]
        assert len(inbound) == 1, inbound
        assert inbound[0]["reporter"] == "destination"
        assert (inbound[0]["source_workload"], inbound[0]["source_workload_namespace"], inbound[0]["source_app"]) \
            == ("sleep", "default", "sleep"), inbound
        assert inbound[0]["source_principal"] == CLIENT_ID
        outbound = [s for s in tcp_samples(client_metrics, name) if float(s["value"]) >= 3]
        assert len(outbound) == 1, [sorted(o.items()) for o in outbound]
        # Discovery put no workload on the endpoint: the server's preamble named it.
        assert (outbound[0]["destination_workload"], outbound[0]["destination_workload_namespace"],
                outbound[0]["destination_app"]) == ("httpbin", "default", "httpbin"), outbound
        assert outbound[0]["destination_principal"] == SERVER_ID
    assert counter(server_metrics, MALFORMED) == 0 and counter(client_metrics, MALFORMED) == 0


def test_server_first_protocol_works_with_the_exchange(kit: Any, proxy_cli: Any, tmp_path: Path, pki: Any) -> None:
    """The backend speaks first: neither proxy may wait for the client's app bytes to exchange metadata."""
    side = Sidecars(kit, proxy_cli, tmp_path, pki)
    banner = b"220 smtp.example ESMTP ready\r\n"

    async def main() -> tuple[list[bytes], str]:
        backend = await TcpBackend(banner).start()
        await side.start_server(backend.port)
        await side.start_client(side.in_port)
        echoes = [await talk(side.out_port, b"EHLO %d\r\n" % i, banner=banner) for i in range(2)]
        server_metrics = await wait_closed_count(side, side.server, 2)
        backend.close()
        return echoes, server_metrics

    echoes, server_metrics = kit.run(main())
    assert echoes == [b"EHLO 0\r\n", b"EHLO 1\r\n"]
    inbound = [s for s in tcp_samples(server_metrics) if float(s["value"]) >= 2]
    assert [s["source_workload"] for s in inbound] == ["sleep"], inbound


def test_preamble_is_only_read_when_negotiated(kit: Any, proxy_cli: Any, tmp_path: Path, pki: Any) -> None:
    """Over a TLS connection without the ALPN, bytes shaped like a preamble are app bytes; with it, the
    server's preamble comes first and the client's is taken off before the app."""
    side = Sidecars(kit, proxy_cli, tmp_path, pki)
    forged = preamble(encode_struct({"WORKLOAD_NAME": "forged", "NAMESPACE": "default"}))
    mine = preamble(encode_struct({"WORKLOAD_NAME": "tester", "NAMESPACE": "default"}))

    async def main() -> tuple[bytes, bytes, bytes, list[bytearray], str]:
        backend = await TcpBackend().start()
        await side.start_server(backend.port)
        reader, writer = await asyncio.open_connection("127.0.0.1", side.in_port, ssl=side.tls_client(alpn=False),
                                                      server_hostname=None)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
        writer.write(forged + b"after")
        plain_echo = await asyncio.wait_for(reader.readexactly(len(forged) + 5), 5)
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", side.in_port, ssl=side.tls_client(),
                                                      server_hostname=None)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == ALPN
        server_struct = await read_preamble(reader)
        writer.write(mine + b"app bytes")
        exchanged_echo = await asyncio.wait_for(reader.readexactly(9), 5)
        writer.close()
        server_metrics = await wait_closed_count(side, side.server, 2)
        backend.close()
        return plain_echo, server_struct, exchanged_echo, backend.received, server_metrics

    plain_echo, server_struct, exchanged_echo, received, server_metrics = kit.run(main())
    assert plain_echo == forged + b"after"
    assert bytes(received[0]) == forged + b"after"
    assert peer_of_struct(server_struct) == ("httpbin", "default", "httpbin")
    assert exchanged_echo == b"app bytes" and bytes(received[1]) == b"app bytes"
    sources = sorted(s["source_workload"] for s in tcp_samples(server_metrics))
    assert sources == ["tester", "unknown"], server_metrics


def test_malformed_preambles_close_the_connection_with_nothing_forwarded(
        kit: Any, proxy_cli: Any, tmp_path: Path, pki: Any) -> None:
    side = Sidecars(kit, proxy_cli, tmp_path, pki)
    oversize = MAGIC + bytes((1,)) + (5000).to_bytes(4, "big") + b"x" * 5000
    bad_magic = b"HTTP/1.1 200 OK\r\n\r\n"
    bad_struct = MAGIC + bytes((1,)) + (3).to_bytes(4, "big") + b"\x0f\xff\xff"
    cut_short = MAGIC + bytes((1,)) + (100).to_bytes(4, "big") + b"y" * 10

    async def attempt(data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", side.in_port, ssl=side.tls_client(),
                                                      server_hostname=None)
        await read_preamble(reader)
        writer.write(data + b"app bytes")
        try:
            rest = await asyncio.wait_for(reader.read(), 5)
        except (ConnectionError, ssl.SSLError):
            rest = b""
        writer.close()
        return rest

    async def main() -> tuple[list[bytes], list[bytearray], str]:
        backend = await TcpBackend().start()
        await side.start_server(backend.port)
        answers = [await attempt(oversize), await attempt(bad_magic), await attempt(bad_struct)]
        # The app bytes after a cut-short preamble would be read as more of it: the client closes instead.
        reader, writer = await asyncio.open_connection("127.0.0.1", side.in_port, ssl=side.tls_client(),
                                                      server_hostname=None)
        await read_preamble(reader)
        writer.write(cut_short)
        await writer.drain()
        writer.close()
        metrics = ""
        for _ in range(100):
            metrics = await side.metrics(side.server)
            if counter(metrics, MALFORMED) >= 4:
                break
            await asyncio.sleep(0.05)
        backend.close()
        return answers, backend.received, metrics

    answers, received, metrics = kit.run(main())
    assert answers == [b"", b"", b""]
    assert received == []  # no upstream connection was even made
    assert counter(metrics, MALFORMED) == 4, metrics
    _, err = stop(side.server)
    assert "metadata of 5000 bytes is over the limit of 4096" in err, err
    assert "bad magic b'HTTP'" in err
    assert "metadata: " in err
    assert "connection ended after 19 bytes of the preamble" in err


def test_client_proxy_writes_its_preamble_first_and_refuses_a_bad_one(
        kit: Any, proxy_cli: Any, tmp_path: Path, pki: Any) -> None:
    """A server sidecar stand-in (TLS with the ALPN, in the test) sees the client proxy's preamble before
    any app byte (the app waits for a banner), then answers with a malformed one."""
    side = Sidecars(kit, proxy_cli, tmp_path, pki)
    seen: list[bytes] = []

    async def fake_sidecar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == ALPN
        seen.append(await read_preamble(reader))
        writer.write(MAGIC + bytes((7,)) + b"\0\0\0\0" + b"banner")
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await reader.read()
        writer.close()

    async def main() -> tuple[bytes, str]:
        server = await asyncio.start_server(fake_sidecar, "127.0.0.1", 0, ssl=side.tls_server())
        await side.start_client(server.sockets[0].getsockname()[1])
        # The app sends nothing and waits for the server to speak.
        reader, writer = await asyncio.open_connection("127.0.0.1", side.out_port)
        try:
            answer = await asyncio.wait_for(reader.read(), 5)
        except ConnectionError:
            answer = b""
        writer.close()
        metrics = ""
        for _ in range(100):
            metrics = await side.metrics(side.client)
            if counter(metrics, MALFORMED) >= 1:
                break
            await asyncio.sleep(0.05)
        server.close()
        return answer, metrics

    answer, metrics = kit.run(main())
    # (One more connection is the readiness probe of the proxy's start.)
    assert seen and all(peer_of_struct(s) == ("sleep", "default", "sleep") for s in seen)
    assert answer == b""  # nothing of the bad preamble (nor the banner after it) reached the app
    assert counter(metrics, MALFORMED) >= 1, metrics
    log, err = stop(side.client)
    assert "unknown version 7" in err, err
    assert "fail=peer exchange: unknown version 7" in log, log
