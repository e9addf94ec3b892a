"""The upstream of the fuzz: records every request the proxy forwards, with the raw bytes of each
connection, and answers as ``hostile_responses`` says. It parses with h11 (not the proxy's codec), so a
framing bug in the proxy cannot hide behind the same bug here: what h11 sees is what a strict origin
server would see."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import h11

from .h2_capture import H2Upstream
from .h2_frames import PREFACE
from .hostile_responses import answer_for

RAW_KEEP = 64 * 1024  # bytes of each upstream connection kept for reports


@dataclass
class Received:
    """A request as the backend parsed it."""

    rid: str | None  # its (first) x-request-id (None: it had none)
    method: bytes
    target: bytes
    conn: int  # which upstream connection carried it
    index: int  # its position on that connection
    ids: tuple[str, ...] = ()  # every x-request-id it carried
    protocol: str = "http/1.1"
    problems: tuple[str, ...] = ()  # HTTP/2: why the request as received is malformed (RFC 9113 §8)


@dataclass
class BackendStats:
    connections: int = 0
    parse_errors: list[tuple[int, str]] = field(default_factory=list)  # (connection, h11's complaint)


class CaptureBackend:
    """An HTTP/1.1 and h2c server on 127.0.0.1 (the HTTP/2 preface decides per connection) that records
    what it receives."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.raw: dict[int, bytearray] = {}
        self.stats = BackendStats()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> CaptureBackend:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Upstream(self), "127.0.0.1", 0, backlog=1024)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def raw_bytes(self, conn: int) -> bytes:
        return bytes(self.raw.get(conn, b""))


class _Upstream(asyncio.Protocol):
    def __init__(self, backend: CaptureBackend) -> None:
        self.backend = backend
        backend.stats.connections += 1
        self.conn = backend.stats.connections
        backend.raw[self.conn] = bytearray()
        self.h11 = h11.Connection(h11.SERVER)
        self.request: h11.Request | None = None
        self.index = 0
        self.busy = False  # a request is being answered (later or never): hold further bytes
        self.held = b""
        self.transport: asyncio.Transport | None = None
        self.h2: H2Upstream | None = None
        self.sniffed: bytes | None = b""  # first bytes, until they tell HTTP/2 from HTTP/1.1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        raw = self.backend.raw[self.conn]
        if len(raw) < RAW_KEEP:
            raw += data[:RAW_KEEP - len(raw)]
        if self.transport is None or self.transport.is_closing():
            return  # closed after a parse error: the rest of the bytes are kept above, not parsed
        if self.h2 is not None:
            self.h2.receive(data)
            return
        if self.sniffed is not None:
            self.sniffed += data
            if PREFACE.startswith(self.sniffed):
                return  # not enough to tell yet
            data, self.sniffed = self.sniffed, None
            if data.startswith(PREFACE):
                self.h2 = H2Upstream(self.backend, self.conn, self.transport)
                self.h2.receive(data)
                return
        if self.busy:
            self.held += data
            return
        self._parse(data)

    def eof_received(self) -> bool:
        return False

    def _parse(self, data: bytes) -> None:
        try:
            self.h11.receive_data(data)
            while not self.busy and self.transport is not None and not self.transport.is_closing():
                event = self.h11.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    return
                if isinstance(event, h11.Request):
                    self.request = event
                elif isinstance(event, h11.EndOfMessage):
                    self._answer()
        except h11.RemoteProtocolError as exc:
            self.backend.stats.parse_errors.append((self.conn, str(exc)))
            self._close()

    def _answer(self) -> None:
        request = self.request
        assert request is not None and self.transport is not None
        ids = tuple(v.decode("latin-1") for n, v in request.headers if n == b"x-request-id")
        rid = ids[0] if ids else None
        self.backend.received.append(Received(rid, request.method, request.target, self.conn, self.index, ids))
        self.index += 1
        answer = answer_for(request.target, (rid or "-").encode("latin-1"), request.method == b"HEAD")
        if answer.hang:
            self.busy = True
            return
        if answer.delay:
            self.busy = True
            asyncio.get_running_loop().call_later(answer.delay, self._write, answer.data, answer.close)
            return
        self._write(answer.data, answer.close)

    def _write(self, data: bytes, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if data:
            transport.write(data)
        if close:
            self._close()
            return
        # The next request starts a new h11 cycle with the bytes that followed this one.
        trailing, _ = self.h11.trailing_data
        self.h11 = h11.Connection(h11.SERVER)
        self.request = None
        self.busy = False
        held, self.held = bytes(trailing) + self.held, b""
        if held:
            self._parse(held)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
