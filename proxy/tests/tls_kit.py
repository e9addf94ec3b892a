"""Parts of the TLS layer and TLS record tests (test_tls_layer.py, test_tls_records.py): workload
certificates made by `cryptography` and loaded by the proxy's WorkloadTls, the protocol above a TlsLayer
that records every call, a server of layers, and blocking stdlib (plain OpenSSL) peers."""

from __future__ import annotations

import _ssl
import asyncio
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import Pki  # type: ignore[import-not-found]
from meshbox.proxy.alpn import H2, HTTP11, SERVER_PROTOCOLS
from meshbox.proxy.tls_layer import TlsLayer
from meshbox.proxy.workload_tls import WorkloadTls
from proxy.tests.test_mutual_tls import CLIENT_ID, SERVER_ID, write_identity

WAIT = 5.0  # seconds any single step may take


def workload_identities(base: Path, root_name: str = "tls test root") -> tuple[WorkloadTls, WorkloadTls]:
    """(client, server) workload certificates of a new mesh root, written under ``base`` in the agent's
    layout and loaded as the proxy loads them (the client offers http/1.1 unless asked otherwise)."""
    pki = Pki()
    root, root_key = pki.root(root_name)
    client = write_identity(pki, base / "client", root, root_key, CLIENT_ID)
    server = write_identity(pki, base / "server", root, root_key, SERVER_ID)
    return WorkloadTls(str(client)), WorkloadTls(str(server))


class App(asyncio.Protocol):
    """The protocol above the layer: records every call in order; answers data with ``reply(data)``."""

    def __init__(self, reply: Callable[[bytes], bytes] | None = None) -> None:
        self.reply = reply
        self.transport: Any = None
        self.events: list[str] = []
        self.data = bytearray()
        self.changed = asyncio.Event()
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.events.append("data")
        self.data += data
        self.changed.set()
        if self.reply is not None:
            self.transport.write(self.reply(data))

    def eof_received(self) -> bool:
        self.events.append("eof")
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.events.append("pause_writing")
        self.changed.set()

    def resume_writing(self) -> None:
        self.events.append("resume_writing")
        self.changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT):
            while not done():
                self.changed.clear()
                await self.changed.wait()

    def life(self) -> list[str]:
        """The connection's events without flow control, consecutive data merged."""
        merged: list[str] = []
        for event in self.events:
            if event in ("made", "data", "eof", "lost") and not (event == "data" and merged[-1:] == ["data"]):
                merged.append(event)
        return merged


def new_layer(context: Any, server_side: bool, app: App, timeout: float = WAIT,
              session: Any = None) -> tuple[TlsLayer, asyncio.Future[None]]:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    return TlsLayer(loop, context, server_side, app, waiter, timeout, session), waiter


class MemoryEnd:
    """A client SSL object of ``context`` on memory BIOs, driven by the test itself (a peer that does
    what no library client does: stop half-way, coalesce records)."""

    def __init__(self, context: Any) -> None:
        self.incoming, self.outgoing = _ssl.MemoryBIO(), _ssl.MemoryBIO()
        self.ssl_object = context._wrap_bio(self.incoming, self.outgoing, False, None)


class LayerServer:
    """A TCP server on 127.0.0.1 putting a server-side TlsLayer under a new App on each connection."""

    def __init__(self, context: ssl.SSLContext, reply: Callable[[bytes], bytes] | None = None,
                 timeout: float = WAIT) -> None:
        self.context, self.reply, self.timeout = context, reply, timeout
        self.sides: list[tuple[TlsLayer, App, asyncio.Future[None]]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> LayerServer:
        self.server = await asyncio.get_running_loop().create_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for layer, _, _ in self.sides:
            layer.abort()

    def _accept(self) -> TlsLayer:
        app = App(self.reply)
        layer, waiter = new_layer(self.context, True, app, self.timeout)
        self.sides.append((layer, app, waiter))
        return layer

    async def accepted(self, index: int) -> tuple[TlsLayer, App, asyncio.Future[None]]:
        """The layer, app and handshake waiter of the index-th connection, once it is accepted."""
        async with asyncio.timeout(WAIT):
            while len(self.sides) <= index:
                await asyncio.sleep(0.005)
        return self.sides[index]

    async def side(self, index: int) -> tuple[TlsLayer, App]:
        """The layer and app of the index-th connection, once its handshake is done."""
        layer, app, waiter = await self.accepted(index)
        await asyncio.wait_for(waiter, WAIT)
        return layer, app


async def layer_client(context: ssl.SSLContext, port: int,
                       session: ssl.SSLSession | None = None) -> tuple[TlsLayer, App]:
    """A client-side TlsLayer connected to ``port`` (resuming ``session``), its handshake done."""
    app = App()
    layer, waiter = new_layer(context, False, app, session=session)
    await asyncio.get_running_loop().create_connection(lambda: layer, "127.0.0.1", port)
    await asyncio.wait_for(waiter, WAIT)
    return layer, app


def stdlib_context(identity: WorkloadTls, server_side: bool, http2: bool = False) -> ssl.SSLContext:
    """A context of the ssl module with ``identity``'s certificate, set as the proxy sets its own, for a
    stdlib peer, which reports a TCP EOF without close_notify as an error: CPython sets
    OP_IGNORE_UNEXPECTED_EOF by default, which hides it."""
    directory = Path(identity.cert_dir) / "current"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = False
    context.load_verify_locations(cafile=directory / "root-cert.pem")
    context.load_cert_chain(directory / "cert-chain.pem", directory / "key.pem")
    context.set_alpn_protocols(list(SERVER_PROTOCOLS) if server_side else [H2 if http2 else HTTP11])
    context.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    return context


def stdlib_client(context: ssl.SSLContext, port: int, rcvbuf: int = 0) -> ssl.SSLSocket:
    """A blocking stdlib TLS client, handshake done (run it in a thread); reports ragged EOFs."""
    raw = socket.socket()
    raw.settimeout(WAIT)
    if rcvbuf:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.connect(("127.0.0.1", port))
    return context.wrap_socket(raw, suppress_ragged_eofs=False)


def recv_exactly(tls: ssl.SSLSocket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = tls.recv(min(size - len(data), 1 << 20))
        if not chunk:
            raise ConnectionError(f"EOF after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def recv_until_eof(tls: ssl.SSLSocket) -> tuple[bytes, str]:
    """Everything until the end, and how it ended: "close_notify" (a clean TLS EOF) or the exception."""
    data = bytearray()
    try:
        while chunk := tls.recv(65536):
            data += chunk
    except (OSError, ssl.SSLError) as exc:
        return bytes(data), type(exc).__name__
    return bytes(data), "close_notify"


async def silent_server(received: list[bytes], close_after: int | None = None) -> asyncio.Server:
    """A plain TCP server that never answers: it records what arrives until EOF, or closes once
    ``close_after`` bytes came."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        while chunk := await reader.read(65536):
            data += chunk
            if close_after is not None and len(data) >= close_after:
                break
        received.append(data)
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)
