"""TLS under a proxy connection: the protocol of the TCP transport and the transport of the protocol above.

The proxy's own TLS layer, in place of the event loop's (uvloop's SSLProtocol): the handshake runs on
CPython's C SSL object (``_ssl``, what ssl.SSLObject wraps) over memory BIOs, so OpenSSL does the
certificate work, and once it is done every record goes through tls_records, one call per read and per
write (why: docs/security.md, "Benchmark"). ``get_extra_info("ssl_object")`` is that C object: it
answers ``getpeercert()``, ``version()``, ``selected_alpn_protocol()``, ``session`` and
``session_reused`` as an ssl.SSLObject does. Application data is handed up as it is decrypted and written
down as it is encrypted: no buffer of its own, so flow control is the TCP transport's, passed through
both ways.

A record that fails after the handshake (tampered, forged, not TLS) closes that connection only, with
a stderr line naming the peer and OpenSSL's or the record layer's reason. Semantics follow asyncio's
TLS transports: the protocol above is connected when the handshake is done (``waiter`` gets the
result, or the handshake's exception); an EOF or the peer's close_notify reaches it as
``eof_received`` and then the connection closes (TLS has no half-close, so ``can_write_eof`` is
False); ``close`` sends close_notify, then closes the TCP connection once its buffer is written.

Imported only by a proxy that has a workload certificate: it loads OpenSSL.
"""

from __future__ import annotations

import _ssl
import asyncio
import sys
from collections.abc import Callable
from typing import Any, cast

try:
    from meshbox.proxy.tls_records import (
        TlsClosed,
        TlsFailed,
        after_handshake,
        read_records,
        records_of,
        shutdown_records,
        write_records,
    )
except ImportError:  # a pure-Python build (MESHBOX_PROXY_PURE=1)
    from meshbox.proxy.tls_records_pure import (  # type: ignore[assignment]
        TlsClosed,
        TlsFailed,
        after_handshake,
        read_records,
        records_of,
        shutdown_records,
        write_records,
    )

HANDSHAKE = 0
OPEN = 1
CLOSED = 2


def _not_connected(data: bytes) -> None:
    raise ConnectionError("the TLS layer has no TCP transport yet")


class TlsLayer(asyncio.Protocol):
    """One TLS connection of ``context`` (an ``_ssl._SSLContext``, a client one resuming ``session`` when
    given) over the TCP transport it is connected to, for ``app``, the protocol above; ``waiter`` learns
    how the handshake ended."""

    def __init__(self, loop: asyncio.AbstractEventLoop, context: _ssl._SSLContext, server_side: bool, app: Any,
                 waiter: asyncio.Future[None], handshake_timeout: float,
                 session: _ssl.SSLSession | None = None) -> None:
        self.loop = loop
        self.incoming = _ssl.MemoryBIO()
        self.outgoing = _ssl.MemoryBIO()
        self.ssl_object: Any = cast(Any, context)._wrap_bio(self.incoming, self.outgoing, server_side, None,
                                                            session=session)
        self.records = records_of(self.ssl_object, self.incoming, self.outgoing)
        self.app: Any = app
        # Bound once, called per record: the protocol above's data_received, the TCP transport's write.
        self.deliver: Callable[[bytes], object] = app.data_received
        self.send: Callable[[bytes], object] = _not_connected
        self.waiter = waiter
        self.handshake_timeout = handshake_timeout
        self.raw: Any = None
        self.state = HANDSHAKE
        self.closing = False
        # True once the protocol above got connection_made (and so is owed connection_lost).
        self.connected = False
        # Why a record failed: what the protocol above gets in connection_lost.
        self.failure: Exception | None = None
        self.timer: asyncio.TimerHandle | None = None
        # True once the records are sealed and opened by tls_records itself (after_handshake).
        self.own_records = False

    # The TCP transport's side.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport
        self.send = self.raw.write
        self.timer = self.loop.call_later(self.handshake_timeout, self._handshake_late)
        if not self.ssl_object.server_side:
            self._handshake(b"")  # the ClientHello

    def data_received(self, data: bytes) -> None:
        if self.state == OPEN:
            try:
                plaintext = read_records(self.records, data)
            except TlsClosed as end:
                self._ended(end.args[0], None)
                return
            except TlsFailed as failed:
                peer = self.raw.get_extra_info("peername")
                where = f"{peer[0]}:{peer[1]}" if peer else "-"
                print(f"meshbox-proxy: TLS connection with {where} closed: record refused: {failed.args[0]}",
                      file=sys.stderr, flush=True)
                self._ended(failed.args[1], ConnectionAbortedError(f"TLS record refused: {failed.args[0]}"))
                return
            if plaintext:
                self.deliver(plaintext)
        elif self.state == HANDSHAKE:
            self._handshake(data)

    def eof_received(self) -> bool:
        if self.state == HANDSHAKE:
            self._handshake_failed(ConnectionResetError("the peer closed the connection during the TLS handshake"))
        elif self.state == OPEN:
            self._ended(b"", None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.connected:
            self.state, self.closing = CLOSED, True
            self.app.connection_lost(exc or self.failure)
        elif self.state == HANDSHAKE:
            self._handshake_failed(exc or ConnectionResetError("connection lost during the TLS handshake"))

    def pause_writing(self) -> None:
        if self.state == OPEN:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.state == OPEN:
            self.app.resume_writing()

    # The handshake.

    def _handshake(self, data: bytes) -> None:
        ssl_object = self.ssl_object
        if data:
            self.incoming.write(data)
        try:
            ssl_object.do_handshake()
        except _ssl.SSLWantReadError:
            self._send_handshake()
            return
        except (_ssl.SSLError, OSError) as exc:
            self._send_handshake()  # the alert that says why
            self._handshake_failed(exc)
            return
        flushed = self.outgoing.read()
        self.own_records = after_handshake(self.records, flushed)
        if flushed and not self.raw.is_closing():
            self.raw.write(flushed)
        self._cancel_timer()
        if self.waiter.cancelled():  # whoever waited for the connection gave up on it
            self.abort()
            return
        self.state, self.connected = OPEN, True
        self.waiter.set_result(None)
        self.app.connection_made(self)
        # Application data that came in the same flight as the end of the handshake.
        if self.state == OPEN:
            self.data_received(b"")

    def _send_handshake(self) -> None:
        out = self.outgoing.read()
        if out and not self.raw.is_closing():
            self.raw.write(out)

    def _handshake_late(self) -> None:
        self.timer = None
        if self.state == HANDSHAKE:
            self._handshake_failed(ConnectionAbortedError(
                f"TLS handshake is taking longer than {self.handshake_timeout:g} seconds: aborting the connection"))

    def _handshake_failed(self, exc: BaseException) -> None:
        self.state, self.closing = CLOSED, True
        self._cancel_timer()
        if not self.waiter.done():
            self.waiter.set_exception(exc)
        self.raw.close()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _ended(self, plaintext: bytes, failure: Exception | None) -> None:
        """The peer ended TLS (close_notify, EOF) or sent a record that failed: deliver what came before,
        then EOF to the protocol above, then close."""
        if plaintext:
            self.app.data_received(plaintext)
        if self.state != OPEN:
            return
        if failure is not None:
            self.state, self.closing, self.failure = CLOSED, True, failure
            self.raw.abort()
            return
        self.app.eof_received()
        self.close()

    # The transport of the protocol above.

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.state != OPEN or self.closing or not data:
            return
        try:
            out = write_records(self.records, data)
        except TlsFailed:
            self.abort()
            return
        self.send(out)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close: close the transport instead")

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if self.state == OPEN:
            out = shutdown_records(self.records)
            if out:
                self.raw.write(out)
        self.raw.close()

    def abort(self) -> None:
        self.closing = True
        self._cancel_timer()
        if self.raw is not None:
            self.raw.abort()

    def is_closing(self) -> bool:
        return self.closing or self.raw is None or bool(self.raw.is_closing())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.ssl_object
        if name == "sslcontext":
            return self.ssl_object.context
        if name == "peercert":
            return self.ssl_object.getpeercert()
        if name == "cipher":
            return self.ssl_object.cipher()
        return self.raw.get_extra_info(name, default) if self.raw is not None else default

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def is_reading(self) -> bool:
        return bool(self.raw.is_reading())

    def set_protocol(self, protocol: Any) -> None:
        self.app = protocol
        self.deliver = protocol.data_received

    def get_protocol(self) -> Any:
        return self.app

    def get_write_buffer_size(self) -> int:
        return int(self.raw.get_write_buffer_size())

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.raw.set_write_buffer_limits(high, low)
