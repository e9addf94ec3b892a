"""The verified peer of a mutual TLS connection, as the data plane passes it around (no ssl import)."""

from __future__ import annotations

import sys

SPIFFE = "spiffe://"


class PeerIdentity:
    """A TLS peer: its SPIFFE ID ("" when its certificate has none) and the TLS version spoken."""

    __slots__ = ("namespace", "principal", "tls_version", "uri")

    def __init__(self, uri: str, tls_version: str) -> None:
        self.uri = uri
        self.tls_version = tls_version
        # Istio's principal: the SPIFFE ID without its scheme, "<trust domain>/ns/<ns>/sa/<sa>".
        self.principal = uri[len(SPIFFE):] if uri.startswith(SPIFFE) else ""
        parts = self.principal.split("/")
        self.namespace = parts[2] if len(parts) == 5 and parts[1] == "ns" else ""

    def __repr__(self) -> str:
        return f"PeerIdentity({self.uri!r}, {self.tls_version!r})"


# Peers already announced (bounded: forgotten wholesale when full, so a peer may be announced again).
_ANNOUNCED: set[tuple[str, str]] = set()
_ANNOUNCED_MAX = 4096


def announce_peer(direction: str, peer: PeerIdentity, where: str) -> None:
    """One stderr line the first time this proxy speaks mutual TLS with a peer identity at ``where``,
    e.g. ``mutual TLS: TLSv1.3 from spiffe://cluster.local/ns/default/sa/sleep (10.244.0.5:41234)``."""
    key = (direction, f"{peer.uri} {where.rsplit(':', 1)[0]}")
    if key in _ANNOUNCED:
        return
    if len(_ANNOUNCED) >= _ANNOUNCED_MAX:
        _ANNOUNCED.clear()
    _ANNOUNCED.add(key)
    print(f"meshbox-proxy: mutual TLS: {peer.tls_version} {direction} {peer.uri or '(no SPIFFE ID)'} ({where})",
          file=sys.stderr, flush=True)
