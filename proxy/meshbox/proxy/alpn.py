"""The ALPN protocols of the proxy's mutual TLS connections, and what each side does with the choice.

A server context takes, in this order of preference, the TCP metadata exchange (:mod:`peer_exchange`),
``h2`` and ``http/1.1``. A client offers exactly one of them, by what it will speak: TCP clusters the
metadata exchange, HTTP/2 upstream connections ``h2``, HTTP/1.1 ones ``http/1.1``. A server that knows
none of them (a meshbox sidecar from before ALPN ``h2``) selects nothing, and the connection goes on as
before: HTTP/2 as prior knowledge, told from HTTP/1.1 by its preface. On the inbound side, ``h2`` hands
the connection to the HTTP/2 codec at once (which refuses a client that then does not send the
preface), ``http/1.1`` to the HTTP/1.1 parser without looking for the preface; no choice: the first
bytes decide, as on plaintext.
"""

from __future__ import annotations

import asyncio
from typing import Any

from meshbox.proxy.peer_exchange import ALPN as PEER_EXCHANGE

H2 = "h2"
HTTP11 = "http/1.1"
# What a server context accepts, most preferred first (OpenSSL picks the first one the client offered).
SERVER_PROTOCOLS = (PEER_EXCHANGE, H2, HTTP11)
# Counter name parts of the negotiated protocols (downstream_cx_alpn_h2, upstream_cx_alpn_http11, ...).
_COUNTED = {H2: "h2", HTTP11: "http11"}


def client_protocol(peer_exchange: bool, http2: bool) -> str:
    """The one protocol a client connection offers: the metadata exchange (TCP), ``h2`` or ``http/1.1``."""
    if peer_exchange:
        return PEER_EXCHANGE
    return H2 if http2 else HTTP11


def selected(transport: asyncio.BaseTransport) -> str | None:
    """The protocol the TLS handshake of ``transport`` chose (None: plaintext, or none chosen)."""
    ssl_object: Any = transport.get_extra_info("ssl_object")
    return ssl_object.selected_alpn_protocol() if ssl_object is not None else None


def counter(side: str, protocol: str | None) -> str | None:
    """The counter of a connection that negotiated ``protocol`` (``side``: downstream or upstream), if any."""
    name = _COUNTED.get(protocol) if protocol is not None else None
    return f"{side}_cx_alpn_{name}" if name is not None else None
