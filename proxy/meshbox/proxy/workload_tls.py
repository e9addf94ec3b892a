"""The workload certificate as TLS contexts: mutual TLS 1.3 for inbound and outbound connections.

The agent writes the key, chain and trust bundle in ``<cert dir>/current/`` (a symlink to one
generation, swapped by a rename: docs/security.md). Contexts are built from one generation and rebuilt
when ``current`` points at another one (checked at most once a second, by the connections that need a
context): connections already open keep the context they were made with, new ones get the new one.

Only imported in a proxy started with ``--cert-dir``: importing it loads OpenSSL. The contexts are the C
ones of ``_ssl`` (what ``_ssl._SSLContext`` is built on): the proxy's own TLS layer (tls_layer) needs nothing
of ``ssl.py``, whose enums and helpers would cost about half a megabyte of the proxy's memory, so the
``ssl`` name stays with the stand-in (tls_stand_in) in every proxy process.
"""

from __future__ import annotations

import _ssl
import os
import sys
import time

from meshbox.proxy.alpn import H2, HTTP11, SERVER_PROTOCOLS, client_protocol
from meshbox.proxy.peer_exchange import ALPN as PEER_EXCHANGE

KEY = "key.pem"
CHAIN = "cert-chain.pem"
ROOTS = "root-cert.pem"
CURRENT = "current"
# How often new connections look at the cert directory for a new generation.
CHECK_INTERVAL = 1.0


class CertificateUnavailable(OSError):
    """No usable workload certificate (yet): the message names the file and the cause."""


def _alpn_wire(protocols: tuple[str, ...]) -> bytes:
    """ALPN protocol names as the TLS extension lists them: each prefixed by its length."""
    return b"".join(len(name).to_bytes(1, "big") + name.encode() for name in protocols)


def _context(side: int, directory: str, alpn: tuple[str, ...] = ()) -> _ssl._SSLContext:
    ctx = _ssl._SSLContext(side)
    if alpn:
        ctx._set_alpn_protocols(_alpn_wire(alpn))  # type: ignore[attr-defined]
    ctx.minimum_version = _ssl.PROTO_TLSv1_3
    ctx.maximum_version = _ssl.PROTO_TLSv1_3
    ctx.verify_mode = _ssl.CERT_REQUIRED
    if side == _ssl.PROTOCOL_TLS_CLIENT:
        # Servers are identified by their SPIFFE ID (checked after the handshake), never by host name.
        ctx.check_hostname = False
    for name in (ROOTS, CHAIN, KEY):
        if not os.path.exists(os.path.join(directory, name)):
            raise CertificateUnavailable(f"{os.path.join(directory, name)}: no such file")
    try:
        ctx.load_verify_locations(cafile=os.path.join(directory, ROOTS))
        ctx.load_cert_chain(os.path.join(directory, CHAIN), os.path.join(directory, KEY))
    except (OSError, _ssl.SSLError) as exc:
        raise CertificateUnavailable(f"{directory}: cannot load the workload certificate: {exc}") from None
    return ctx


def _own_identity(chain: str) -> str | None:
    """The first URI SAN of the chain's first certificate. The ssl module has no public way to read a
    certificate file (only a peer's); its decoder for them is CPython's own, used by its test suite.
    Without it the identity stays unknown (metric labels say "unknown")."""
    decode = getattr(_ssl, "_test_decode_cert", None)
    if decode is None:
        return None
    try:
        cert = decode(chain)
    except (OSError, _ssl.SSLError, ValueError):
        return None
    return next((v for k, v in cert.get("subjectAltName", ()) if k == "URI"), None)


class WorkloadTls:
    """Server and client contexts of the workload certificate in ``cert_dir``, reloaded on rotation."""

    def __init__(self, cert_dir: str) -> None:
        self.cert_dir = cert_dir
        self.generation: str | None = None
        self._server: _ssl._SSLContext | None = None
        # Client contexts by the one ALPN protocol they offer (alpn.client_protocol).
        self._clients: dict[str, _ssl._SSLContext] = {}
        self._checked = 0.0
        self.reloads = 0
        # This workload's SPIFFE ID, from its certificate (None until one is loaded).
        self.identity: str | None = None

    def _generation(self) -> str:
        current = os.path.join(self.cert_dir, CURRENT)
        if os.path.islink(current):
            return os.path.join(self.cert_dir, os.readlink(current))
        return self.cert_dir  # files directly in the directory (static setups, tests)

    def refresh(self, now: float | None = None) -> None:
        """Rebuild the contexts if the current generation changed (at most every CHECK_INTERVAL)."""
        now = time.monotonic() if now is None else now
        if self._server is not None and now - self._checked < CHECK_INTERVAL:
            return
        self._checked = now
        generation = self._generation()
        if generation == self.generation and self._server is not None:
            return
        try:
            # The server takes the TCP metadata exchange, h2 or http/1.1, whichever the client offers (alpn).
            server = _context(_ssl.PROTOCOL_TLS_SERVER, generation, SERVER_PROTOCOLS)
            clients = {name: _context(_ssl.PROTOCOL_TLS_CLIENT, generation, (name,))
                       for name in (PEER_EXCHANGE, H2, HTTP11)}
        except CertificateUnavailable as exc:
            if self._server is None:
                raise
            print(f"meshbox-proxy: keeping the previous workload certificate: {exc}", file=sys.stderr, flush=True)
            return
        self._server, self._clients, self.generation = server, clients, generation
        self.identity = _own_identity(os.path.join(generation, CHAIN))
        self.reloads += 1
        print(f"meshbox-proxy: workload certificate loaded from {generation}", file=sys.stderr, flush=True)

    def server_context(self) -> _ssl._SSLContext:
        self.refresh()
        assert self._server is not None
        return self._server

    def client_context(self, peer_exchange: bool = False, http2: bool = False) -> _ssl._SSLContext:
        """The client context offering the ALPN protocol of the connection: the TCP metadata exchange
        (``peer_exchange``), ``h2`` (``http2``) or ``http/1.1``."""
        self.refresh()
        return self._clients[client_protocol(peer_exchange, http2)]
