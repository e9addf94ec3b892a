"""The verified peer of a mutual TLS connection, as the data plane passes it around (no ssl import)."""

from __future__ import annotations

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
