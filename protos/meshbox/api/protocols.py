"""How a Service port's name (or appProtocol) picks its protocol: the seed's rule, shared by discovery and
`meshctl analyze`."""

from __future__ import annotations

from meshbox.api.v1 import proxy_config_pb2 as pc

# Protocol prefixes Istio recognised in port names (`<protocol>[-<suffix>]`); http*/grpc* are routed at L7.
KNOWN_PROTOCOLS = ("http", "http2", "https", "grpc", "grpc-web", "tcp", "tls", "mongo", "mysql", "redis", "udp")


# appProtocol values (Kubernetes 1.18+) that say HTTP, and those of them that say HTTP/2; an appProtocol
# takes precedence over the port's name, as in Istio.
HTTP_APP_PROTOCOLS = frozenset({"http", "http2", "grpc", "grpc-web", "kubernetes.io/h2c"})
HTTP2_APP_PROTOCOLS = frozenset({"http2", "grpc", "grpc-web", "kubernetes.io/h2c"})


def is_http_port(name: str, app_protocol: str = "") -> bool:
    """Service ports named http*/grpc* (or with an HTTP appProtocol) are routed at L7, the rest proxied at L4."""
    if app_protocol:
        return app_protocol in HTTP_APP_PROTOCOLS
    return name.startswith(("http", "grpc"))


def upstream_protocol(name: str, app_protocol: str = "") -> pc.UpstreamProtocol.ValueType:
    """The HTTP version spoken to a port's endpoints (Istio's rule): HTTP/2 for http2*/grpc* (or appProtocol
    http2, grpc, grpc-web, kubernetes.io/h2c), HTTP/1.1 for the other HTTP ports, UNSPECIFIED for TCP ports."""
    if not is_http_port(name, app_protocol):
        return pc.UPSTREAM_PROTOCOL_UNSPECIFIED
    if app_protocol:
        return pc.HTTP2 if app_protocol in HTTP2_APP_PROTOCOLS else pc.HTTP1
    return pc.HTTP2 if name.startswith(("http2", "grpc")) else pc.HTTP1


def port_name_problem(name: str) -> str:
    """Why a port name does not say its protocol ('' when it does)."""
    if not name:
        return "unnamed: proxied at L4 (TCP); name it http or http-<suffix> to route HTTP"
    if name in KNOWN_PROTOCOLS or any(name.startswith(f"{p}-") for p in KNOWN_PROTOCOLS):
        return ""
    layer = "routed at L7 as HTTP" if is_http_port(name) else "proxied at L4 (TCP)"
    return f"{name!r} is not <protocol>[-<suffix>] with a known protocol ({', '.join(KNOWN_PROTOCOLS)}): {layer}"
