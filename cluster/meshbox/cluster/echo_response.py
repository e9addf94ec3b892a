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


def nginx_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers nginx passes on: those whose names hold ``_`` are dropped (underscores_in_headers off)."""
    return [(name, value) for name, value in headers if "_" not in name]


def merged_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Names lower-cased, sorted; a repeated header's values are run together with no separator."""
    merged: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        merged[key] = merged.get(key, "") + value
    return sorted(merged.items())


def split_target(target: str) -> tuple[str, str | None]:
    """(request URI, host) of a request target: an absolute-form target (``http://host/path``) names
    its own host, which nginx prefers to the Host header, and its URI is the path from there on."""
    scheme, sep, rest = target.partition("://")
    if not sep or "/" in scheme or not scheme.isalpha():
        return target, None
    authority, slash, path = rest.partition("/")
    authority = authority.split("?", 1)[0]
    return (slash + path) or "/", host_part(authority)


def render_body(request: EchoRequest, *, listen_port: int, server_host: str) -> bytes:
    """The response body for ``request`` on a server listening on ``listen_port``.

    ``server_host`` stands in for the Host header when the client sent none (HTTP/1.0). The host
    in request_uri is nginx's $host: from an absolute-form target first, then the Host header,
    lower-cased and without its port.
    """
    headers = merged_headers(nginx_headers(request.headers))
    uri, target_host = split_target(request.target)
    host_header = dict(headers).get("host")
    host = target_host or (host_part(host_header) if host_header else server_host)
    _, _, query = uri.partition("?")
    lines = [
        "CLIENT VALUES:",
        f"client_address={request.client_address}",
        f"command={request.method}",
        f"real path={uri}",
        f"query={query or 'nil'}",
        f"request_version={version_text(request.http_version)}",
        f"request_uri=http://{host.lower()}:{listen_port}{uri}",
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


def keeps_alive(request: EchoRequest) -> bool:
    """Whether the connection stays open after this request (HTTP/1.1 without ``Connection: close``)."""
    tokens = {t.strip().lower() for n, v in request.headers if n.lower() == "connection" for t in v.split(",")}
    return request.http_version == "1.1" and "close" not in tokens


def response_headers(request: EchoRequest, date: str) -> list[tuple[str, str]]:
    """Response headers nginx sends with the echo body.

    No Content-Length: the lua script streams its answer, so nginx sends it chunked to an HTTP/1.1
    client (saying ``Connection: keep-alive``) and close-delimited to an HTTP/1.0 one; the HTTP
    library adds the framing headers.
    """
    headers = [("Server", SERVER_HEADER), ("Date", date), ("Content-Type", "text/plain")]
    if keeps_alive(request):
        headers.append(("Connection", "keep-alive"))
    return headers
