"""One HTTP/2 stream sent upstream as an HTTP/1.1 request (a cluster whose upstream protocol is HTTP1: a
Service port named http*), on the pooled HTTP/1.1 connections HTTP/1.1 clients use.

The stream's exchange core routes, retries, times out and logs as for any stream; only what goes upstream
changes: the request head and body are HTTP/1.1 bytes (``request_head`` / ``request_body`` /
``request_end`` below, called by the stream's request framing), and the core's upstream actions (OPEN,
START_UP, WRITE_UP, RELEASE, CLOSE_UP) act on an ``UpstreamHttp`` (:meth:`H2ToHttp1.carry`). The HTTP/1.1
response comes back through the core to the stream's HEADERS / DATA frames, hop-by-hop fields dropped by
``header_policy.end_to_end`` as for an HTTP/2 upstream.

Flow control holds both ways: the client's window re-opens by what was written to the upstream socket,
held while that socket's buffer is full; the upstream socket is no longer read while more than
``RESPONSE_HIGH`` bytes of its response wait for the client's stream window, and read again below
``RESPONSE_LOW``.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Final

from meshbox.proxy.codec.events import Headers
from meshbox.proxy.codec.writer import LAST_CHUNK, chunk
from meshbox.proxy.exchange import CLOSE_UP, OPEN, RELEASE, START_UP, WRITE_UP, Exchange
from meshbox.proxy.header_policy import request_head_out
from meshbox.proxy.upstream_http import UpstreamHttp
from meshbox.proxy.upstream_http_open import open_http1, open_new

if TYPE_CHECKING:
    from meshbox.proxy.connection_slots import PendingOpen
    from meshbox.proxy.exchange_core import ExchangeCore
    from meshbox.proxy.http2_stream import H2Stream

# Response bytes waiting for the client's stream window above which the upstream socket is not read.
RESPONSE_HIGH: Final = 256 * 1024
RESPONSE_LOW: Final = 64 * 1024


class H2ToHttp1:
    """The HTTP/1.1 upstream side of one HTTP/2 stream (what ``UpstreamHttp`` knows as its client)."""

    def __init__(self, stream: H2Stream) -> None:
        self.stream = stream
        self.core: ExchangeCore | None = stream.core
        self.transport: asyncio.Transport | None = stream.down.transport
        self.eof = False
        # The request body goes chunked (no content-length from the client).
        self.chunked = False
        # The upstream socket's writes are backed up: the client's window stays closed meanwhile.
        self.writes_paused = False
        # Response bytes queued on the client's stream and not sent yet; whether the upstream is not read.
        self.queued = 0
        self.leaving = 0
        self.up_paused: UpstreamHttp | None = None

    # -- the request as HTTP/1.1 (for the stream's request framing) --------------------------------
    def request_head(self, ex: Exchange, target: bytes, headers: Headers) -> bytes:
        """The HTTP/1.1 request head: the client's fields (pseudo-headers already taken out, ``:authority``
        already Host, ``te`` dropped as hop-by-hop), cookies joined into one field (RFC 9113 8.2.3), and
        the body's framing: the client's content-length, else chunked when a body follows."""
        request = ex.head
        assert request is not None
        fields: Headers = []
        cookies: list[bytes] = []
        length = False
        for h in headers:
            name = h[0]
            if name == b"cookie":
                cookies.append(h[1])
                continue
            if name == b"content-length":
                length = True
            fields.append(h)
        if cookies:
            fields.append((b"cookie", b"; ".join(cookies)))
        if request.chunked and not length:
            self.chunked = True
            fields.append((b"transfer-encoding", b"chunked"))
        return request_head_out(request.method, target, fields)

    def request_body(self, data: bytes) -> bytes:
        return chunk(data) if self.chunked else data

    def request_end(self) -> bytes:
        return LAST_CHUNK if self.chunked else b""

    # -- the core's upstream actions ---------------------------------------------------------------
    def carry(self, action: tuple[Any, ...]) -> bool:
        """Carry out ``action`` when it is one about the upstream connection (True), else leave it (False)."""
        op: int = action[0]
        core = self.core
        assert core is not None
        if op == OPEN:
            open_http1(self, core, action[1], action[2], action[3])
        elif op == START_UP:
            up: UpstreamHttp = action[1]
            up.start(self, action[2])
            up.write(action[3])
            self._sent_up()
        elif op == WRITE_UP:
            up = action[1]
            up.write(action[2])
            self._sent_up()
        elif op in (RELEASE, CLOSE_UP):
            up = action[1]
            self._read_up(up)
            if op == RELEASE:
                up.release()
            else:
                up.close()
        else:
            return False
        return True

    def _sent_up(self) -> None:
        if not self.writes_paused:
            self.stream.ack(self.stream.unacked)

    # -- flow control of the response -------------------------------------------------------------
    def queue_body(self, data: bytes, up: object | None) -> None:
        """``data`` of the response goes on the client's stream; past RESPONSE_HIGH waiting, stop reading ``up``."""
        size = len(data)
        self.queued += size
        self.stream.down.queue_data(self.stream.sid, data, self.sent)
        if self.queued > RESPONSE_HIGH and self.up_paused is None and isinstance(up, UpstreamHttp):
            transport = up.transport
            if transport is not None and not up.closed:
                self.up_paused = up
                transport.pause_reading()

    def sent(self, size: int) -> None:
        """``size`` bytes of the response went into the client connection's frames (or were dropped with the
        stream). Counted off on the next turn of the event loop, after they were written to its socket: one
        read event of the upstream may deliver many reads in a row, and what they send on within that turn
        must count against RESPONSE_HIGH, or a wide client window would let megabytes pile up unwritten."""
        if not self.leaving:
            self.stream.ctx.loop.call_soon(self._left)
        self.leaving += size

    def _left(self) -> None:
        self.queued -= self.leaving
        self.leaving = 0
        up = self.up_paused
        if up is not None and self.queued <= RESPONSE_LOW:
            self._read_up(up)

    def _read_up(self, up: UpstreamHttp) -> None:
        if self.up_paused is up:
            self.up_paused = None
            if up.transport is not None and not up.closed:
                up.transport.resume_reading()

    # -- what UpstreamHttp calls (upstream_http.Http1Client) --------------------------------------
    def run(self, core: ExchangeCore) -> None:
        self.stream.run()

    def pause_reading(self) -> None:
        self.writes_paused = True

    def resume_reading(self) -> None:
        self.writes_paused = False
        self.stream.ack(self.stream.unacked)

    def tunnel_data(self, data: bytes) -> None:
        # The request is never an Upgrade (HTTP/2 has none): no upstream connection turns into a tunnel.
        raise RuntimeError("an HTTP/2 stream sent as HTTP/1.1 cannot be tunnelled")

    def tunnel_closed(self, ex: Exchange) -> None:
        raise RuntimeError("an HTTP/2 stream sent as HTTP/1.1 cannot be tunnelled")

    # -- what connection_slots calls (a pending request of a cluster with max_connections) ----------
    def open_pending(self, entry: PendingOpen) -> None:
        open_new(self, entry.core, entry.ex, entry.host)

    def attach_pending(self, entry: PendingOpen, up: UpstreamHttp) -> None:
        entry.core.attached(entry.ex, up, time.monotonic())
        self.stream.run()
