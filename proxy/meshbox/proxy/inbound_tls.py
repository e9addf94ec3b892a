"""The inbound side of mutual TLS: tell TLS from plaintext, terminate TLS, apply the port's policy.

An accepted connection on a listener with a peer authentication mode other than DISABLE is decided by
its first bytes: a TLS record (0x16, handshake) puts the proxy's TLS layer (tls_layer) under the connection
at once (the bytes already read are fed to it), for a TLS 1.3 server handshake requiring a client
certificate that chains to the trust bundle (the ALPN protocols it selects: alpn); anything else is
plaintext, which PERMISSIVE lets through and STRICT refuses (an access log line with flag ``NR``, as a
listener without a plaintext filter chain does in Envoy, and a stderr line naming why). Reading the
first bytes rather than peeking at them is deliberate: both asyncio and uvloop start reading an accepted
connection right after ``connection_made``, so a peek would race with them. A PERMISSIVE connection
whose client stays silent for ``SILENT_CLIENT`` seconds is treated as plaintext (server-first
protocols), as Istio does.

At L4, the listener's authorization policies are checked here, once the peer is known; at L7 per
request by the exchange core. A refused handshake (garbage, a truncated ClientHello, a forged, expired
or foreign certificate) closes that connection only, with a stderr line giving OpenSSL's reason.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any, Protocol, cast

from meshbox.proxy.alpn import counter, selected
from meshbox.proxy.context import ProxyContext
from meshbox.proxy.peer_exchange import MalformedPreamble, PreambleReader, negotiated, preamble
from meshbox.proxy.peer_identity import PeerIdentity, announce_peer
from meshbox.proxy.peer_metadata import Peer
from meshbox.proxy.snapshot import PERMISSIVE, STRICT, ListenerRuntime

TLS_HANDSHAKE_RECORD = 0x16
SILENT_CLIENT = 0.1
STRICT_WAIT = 10.0
HANDSHAKE_TIMEOUT = 10.0
# The client's metadata preamble follows its handshake at once; a client silent this long is closed.
PREAMBLE_WAIT = 10.0


class CertificateMissing(OSError):
    """TLS arrived at a proxy that has no workload certificate."""


def _say(message: str) -> None:
    print(f"meshbox-proxy: {message}", file=sys.stderr, flush=True)


class PeerAware(Protocol):
    """A downstream protocol (DownstreamHttp, DownstreamTcp): it reports the verified peer."""

    peer: PeerIdentity | None


class _Handshaken(asyncio.Protocol):
    """The TLS layer's application protocol until the handshake is done: then hands the connection on."""

    def __init__(self, gate: InboundGate) -> None:
        self.gate = gate

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.gate.tls_established(cast(asyncio.Transport, transport))

    # While the client's metadata preamble is read (peer_exchange):
    def data_received(self, data: bytes) -> None:
        self.gate.preamble_received(data)

    def eof_received(self) -> bool:
        self.gate.preamble_ended()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.gate._decide()


class InboundGate(asyncio.Protocol):
    """Decides TLS or plaintext for one accepted connection from its first bytes, then hands it to
    ``make_protocol()``; ``refuse(flag)`` makes the protocol that logs and closes a refused connection."""

    def __init__(self, ctx: ProxyContext, listener: ListenerRuntime,
                 make_protocol: Callable[[], asyncio.Protocol], refuse: Callable[[str], asyncio.Protocol]) -> None:
        self.ctx = ctx
        self.listener = listener
        self.make_protocol = make_protocol
        self.refuse = refuse
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.peer = "-"
        self.decided = False
        # Set while the client's metadata preamble is read: the reader, the TLS transport and its peer.
        self.exchange: PreambleReader | None = None
        self.tls_transport: asyncio.Transport | None = None
        self.tls_peer: PeerIdentity | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        self.peer = f"{peername[0]}:{peername[1]}" if peername else "-"
        wait = SILENT_CLIENT if self.listener.mtls == PERMISSIVE else STRICT_WAIT
        self.timer = self.ctx.loop.call_later(wait, self._silent)

    def connection_lost(self, exc: Exception | None) -> None:
        self._decide()

    def eof_received(self) -> bool:
        self._decide()
        return False  # closed by the client before its first byte

    def _decide(self) -> None:
        self.decided = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _silent(self) -> None:
        self.timer = None
        if self.decided:
            return
        self.decided = True
        if self.listener.mtls == PERMISSIVE:
            self._hand_over(self.make_protocol(), cast(asyncio.Transport, self.transport), None)
        else:
            self._refuse_plaintext("silent")

    def data_received(self, data: bytes) -> None:
        """The client's first bytes: a TLS handshake record, or plaintext."""
        self._decide()
        transport = cast(asyncio.Transport, self.transport)
        if data[0] == TLS_HANDSHAKE_RECORD:
            self._start_tls(transport, data)
        elif self.listener.mtls == STRICT:
            self._refuse_plaintext("plaintext")
        else:
            proto = self.make_protocol()
            self._hand_over(proto, transport, None)
            if not transport.is_closing():
                proto.data_received(data)

    def _refuse_plaintext(self, what: str) -> None:
        self.ctx.stats.incr("downstream_cx_plaintext_refused")
        _say(f"refused {what} connection from {self.peer} to port {self.listener.port}: "
             f"peer authentication STRICT requires mutual TLS (flag NR)")
        self._hand_over(self.refuse("NR"), cast(asyncio.Transport, self.transport), None)

    def _start_tls(self, transport: asyncio.Transport, first: bytes) -> None:
        """Put the loop's TLS protocol under the connection now (synchronously, so no later byte can
        reach anything else) and feed it the bytes already read."""
        ctx = self.ctx
        tls = ctx.tls
        try:
            if tls is None:
                raise CertificateMissing("this proxy has no workload certificate (--cert-dir)")
            context = tls.server_context()
        except OSError as exc:
            _say(f"TLS connection from {self.peer} closed: {exc}")
            transport.abort()
            return
        from meshbox.proxy.tls_layer import TlsLayer  # loads the TLS records code: TLS only

        waiter: asyncio.Future[None] = ctx.loop.create_future()
        waiter.add_done_callback(self._handshake_done)
        layer = TlsLayer(ctx.loop, context, True, _Handshaken(self), waiter, HANDSHAKE_TIMEOUT)
        transport.set_protocol(layer)
        layer.connection_made(transport)
        layer.data_received(first)

    def _handshake_done(self, waiter: asyncio.Future[None]) -> None:
        exc = None if waiter.cancelled() else waiter.exception()
        if exc is not None:
            self.ctx.stats.incr("ssl_handshake_error")
            _say(f"TLS handshake from {self.peer} refused: {tls_failure_reason(exc)}")
            if self.transport is not None:
                self.transport.abort()

    def tls_established(self, tls_transport: asyncio.Transport) -> None:
        stats = self.ctx.stats
        stats.incr("ssl_handshake")
        if getattr(tls_transport, "own_records", False):
            stats.incr("downstream_cx_tls_own_records")
        alpn_counter = counter("downstream", selected(tls_transport))
        if alpn_counter is not None:
            stats.incr(alpn_counter)
        peer = peer_of(tls_transport)
        if peer is not None:
            announce_peer("from", peer, f"{self.peer} to port {self.listener.port}")
        if negotiated(tls_transport):
            # Ours goes out at once (a server-first app must not wait on it); the client's is read next.
            tls_transport.write(preamble(self.ctx.peer_metadata.struct))
            self.exchange, self.tls_transport, self.tls_peer = PreambleReader(), tls_transport, peer
            self.timer = self.ctx.loop.call_later(PREAMBLE_WAIT, self._preamble_late)
            return
        self._hand_over(self.make_protocol(), tls_transport, peer)

    def preamble_received(self, data: bytes) -> None:
        """Bytes of the client's metadata preamble: once it is whole, the connection is handed over with the
        peer it names and the bytes after it."""
        reader, transport = self.exchange, self.tls_transport
        if reader is None or transport is None:
            return
        try:
            done = reader.read(data)
            if done is None:
                return
            named, rest = done
        except MalformedPreamble as exc:
            self._preamble_refused(str(exc))
            return
        self._decide()
        self.exchange = None
        tls_peer = self.tls_peer
        exchanged = self.ctx.peer_metadata.believed(named, tls_peer.uri if tls_peer is not None else None)
        proto = self._hand_over(self.make_protocol(), transport, tls_peer, exchanged)
        if rest and not transport.is_closing():
            proto.data_received(rest)

    def preamble_ended(self) -> None:
        if self.exchange is not None:
            self._preamble_refused(str(self.exchange.truncated()))

    def _preamble_late(self) -> None:
        self.timer = None
        if self.exchange is not None:
            self._preamble_refused(f"no preamble within {PREAMBLE_WAIT:g} s")

    def _preamble_refused(self, reason: str) -> None:
        self._decide()
        self.exchange = None
        self.ctx.stats.incr("peer_exchange_malformed")
        _say(f"TCP metadata exchange from {self.peer} to port {self.listener.port} failed, connection closed: "
             f"{reason}")
        if self.transport is not None:
            self.transport.abort()

    def _hand_over(self, proto: asyncio.Protocol, transport: asyncio.Transport, peer: PeerIdentity | None,
                   exchanged: Peer | None = None) -> asyncio.Protocol:
        """Give ``transport`` to ``proto`` (or to a refusal, when authorization says no); the one it got."""
        listener = self.listener
        if peer is not None:
            cast(PeerAware, proto).peer = peer
        if exchanged is not None and hasattr(proto, "exchanged_peer"):
            # Only an L4 connection labels its metrics with it (HTTP has the exchange in its headers).
            setattr(proto, "exchanged_peer", exchanged)  # noqa: B010
        if not listener.http and listener.authz is not None:
            from meshbox.proxy.authorization import Request  # loaded with the first listener that has policies

            reason = listener.authz.check(Request(peer.principal if peer else "", peer.namespace if peer else "",
                                                  listener.port))
            if reason is not None:
                _say(f"RBAC: access denied: TCP connection from {self.peer} "
                     f"({peer.uri if peer else 'no peer certificate'}) to port {listener.port}: {reason}")
                proto = self.refuse("RBAC")
        transport.set_protocol(proto)
        proto.connection_made(transport)
        return proto


def peer_of(transport: asyncio.BaseTransport) -> PeerIdentity | None:
    """The verified TLS peer of a transport, or None for plaintext."""
    ssl_object: Any = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert() or {}
    uri = next((v for k, v in cert.get("subjectAltName", ()) if k == "URI"), "")
    return PeerIdentity(uri, ssl_object.version() or "-")


def tls_failure_reason(exc: BaseException) -> str:
    """OpenSSL's words for a failed handshake (the verification message when there is one)."""
    verify = getattr(exc, "verify_message", None)
    if verify:
        return f"{getattr(exc, 'reason', None) or type(exc).__name__}: {verify}"
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason)
    return str(exc) or type(exc).__name__
