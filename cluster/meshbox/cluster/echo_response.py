"""What echoserver:1.4 answers, as pure functions (no sockets here).

The image is nginx with a lua script that prints the request back as plain text; the layout
is in /work/shared/reference/echoserver-1.4.md and reproduced here line for line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SERVER_VERSION = "nginx: 1.10.0 - lua: 10001"
SERVER_HEADER = "nginx/1.10.0"
NO_BODY = "-no body in request-"


@dataclass(frozen=True)
class EchoRequest:
    """One request as the echoserver saw it."""

    client_address: str
    method: str
    target: str
    http_version: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def version_text(http_version: str) -> str:
    """nginx's numeric request version: 1.1 stays ``1.1``, 1.0 prints as ``1``."""
    return "1" if http_version == "1.0" else http_version


def host_part(host_header: str) -> str:
    """The host of a Host header value, without its port (IPv6 literals keep their brackets)."""
    if host_header.startswith("["):
        end = host_header.find("]")
        return host_header[: end + 1] if end != -1 else host_header
    return host_header.split(":", 1)[0]


def merged_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Names lower-cased, sorted; a repeated header's values are run together with no separator."""
    merged: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        merged[key] = merged.get(key, "") + value
    return sorted(merged.items())


def render_body(request: EchoRequest, *, listen_port: int, server_host: str) -> bytes:
    """The response body for ``request`` on a server listening on ``listen_port``.

    ``server_host`` stands in for the Host header when the client sent none (HTTP/1.0).
    """
    headers = merged_headers(request.headers)
    host = dict(headers).get("host")
    _, sep, query = request.target.partition("?")
    lines = [
        "CLIENT VALUES:",
        f"client_address={request.client_address}",
        f"command={request.method}",
        f"real path={request.target}",
        f"query={query if sep else 'nil'}",
        f"request_version={version_text(request.http_version)}",
        f"request_uri=http://{host_part(host) if host else server_host}:{listen_port}{request.target}",
        "",
        "SERVER VALUES:",
        f"server_version={SERVER_VERSION}",
        "",
        "HEADERS RECEIVED:",
        *(f"{name}={value}" for name, value in headers),
        "BODY:",
    ]
    text = "\n".join(lines) + "\n"
    body = request.body if request.body else NO_BODY.encode()
    return text.encode("latin-1", errors="replace") + body


def response_headers(body: bytes, date: str) -> list[tuple[str, str]]:
    """Response headers nginx sends with the echo body."""
    return [
        ("Server", SERVER_HEADER),
        ("Date", date),
        ("Content-Type", "text/plain"),
        ("Content-Length", str(len(body))),
    ]
