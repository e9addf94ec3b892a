"""How a Service port's name picks its protocol: the seed's rule, shared by discovery and `meshctl analyze`."""

from __future__ import annotations

# Protocol prefixes Istio recognised in port names (`<protocol>[-<suffix>]`); http*/grpc* are routed at L7.
KNOWN_PROTOCOLS = ("http", "http2", "https", "grpc", "grpc-web", "tcp", "tls", "mongo", "mysql", "redis", "udp")


def is_http_port(name: str) -> bool:
    """Service ports named http*/grpc* are routed at L7, the rest proxied at L4."""
    return name.startswith(("http", "grpc"))


def port_name_problem(name: str) -> str:
    """Why a port name does not say its protocol ('' when it does)."""
    if not name:
        return "unnamed: proxied at L4 (TCP); name it http or http-<suffix> to route HTTP"
    if name in KNOWN_PROTOCOLS or any(name.startswith(f"{p}-") for p in KNOWN_PROTOCOLS):
        return ""
    layer = "routed at L7 as HTTP" if is_http_port(name) else "proxied at L4 (TCP)"
    return f"{name!r} is not <protocol>[-<suffix>] with a known protocol ({', '.join(KNOWN_PROTOCOLS)}): {layer}"
