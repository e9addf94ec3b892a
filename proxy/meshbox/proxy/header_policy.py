"""Which headers cross the proxy and the heads it sends, as pure functions for both directions.

Hop-by-hop headers (RFC 9110 7.6.1) are the fixed set below plus whatever a ``Connection`` header names,
except the headers the proxy frames itself or the mesh relies on end to end: Content-Length and
Transfer-Encoding (the proxy frames what it forwards: a message's framing is never the sender's to
remove), Host, x-request-id and the trace-context headers. ``Connection: content-length`` would
otherwise turn a body into a smuggled request (issue #18).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from meshbox.proxy.access_log import LogRecord, decimal
from meshbox.proxy.codec.events import Headers, ProtocolError, RequestHead, ResponseHead

# Always dropped when forwarding (Transfer-Encoding is re-added by the proxy when it chunks).
HOP_BY_HOP: Final = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
                               b"trailer", b"upgrade"})
# Connection options that are not header names.
CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade"})
# Never removed because Connection names them.
END_TO_END: Final = frozenset({
    b"content-length", b"transfer-encoding", b"host",
    b"x-request-id", b"traceparent", b"tracestate", b"b3", b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid",
    b"x-b3-sampled", b"x-b3-flags", b"x-ot-span-context", b"x-cloud-trace-context", b"grpc-trace-bin",
})


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """The lower-cased tokens of one or more Connection header values (empty list elements skipped)."""
    return frozenset(t for value in values for token in value.split(b",") if (t := token.strip().lower()))


def named_hop_by_hop(value: bytes) -> frozenset[bytes]:
    """The header names one Connection value makes hop-by-hop (options and END_TO_END names excluded)."""
    return connection_tokens((value,)) - CONNECTION_OPTIONS - END_TO_END


def end_to_end(headers: Headers) -> Headers:
    """``headers`` minus the hop-by-hop ones, order kept."""
    out: Headers = []
    named: frozenset[bytes] | None = None
    for h in headers:
        name = h[0]
        if name not in HOP_BY_HOP:
            out.append(h)
        elif name == b"connection" and h[1].lower() not in CONNECTION_OPTIONS:
            tokens = named_hop_by_hop(h[1])
            if tokens:
                named = tokens if named is None else named | tokens
    if named:
        return [h for h in out if h[0] not in named]
    return out


def absolute_form(target: bytes) -> tuple[bytes, bytes]:
    """An absolute-form request target (``http://authority/path?query``) split into its authority and
    the origin-form target to forward (RFC 9112 3.2.2: the authority replaces any Host header).
    ProtocolError(400) for a target with no authority or with user info."""
    rest = target[7:]
    end = len(rest)
    for stop in (b"/", b"?"):
        i = rest.find(stop)
        if 0 <= i < end:
            end = i
    authority, path = rest[:end], rest[end:]
    if not authority or b"@" in authority:
        raise ProtocolError(400, "invalid authority in an absolute-form request target")
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority.lower(), path


def request_headers_out(head: RequestHead, record: LogRecord) -> tuple[Headers, bytes | None, bytes | None]:
    """The headers to forward for a request (hop-by-hop ones dropped), its Host and x-request-id values
    (None when absent); records its user-agent and x-forwarded-for in ``record`` on the way (one pass)."""
    host: bytes | None = None
    request_id: bytes | None = None
    headers: Headers = []
    dropped: frozenset[bytes] | None = None
    for h in head.headers:
        name = h[0]
        if name in HOP_BY_HOP:
            if name == b"connection" and h[1].lower() not in CONNECTION_OPTIONS:
                tokens = named_hop_by_hop(h[1])
                if tokens:
                    dropped = tokens if dropped is None else dropped | tokens
            continue
        if name == b"host":
            host = h[1]
        elif name == b"user-agent":
            record.user_agent = h[1]
        elif name == b"x-request-id":
            request_id = h[1]
        elif name == b"x-forwarded-for":
            record.forwarded_for = h[1]
        headers.append(h)
    if dropped:
        headers = [h for h in headers if h[0] not in dropped]
    if head.upgrade:
        headers += [(b"connection", b"upgrade")] + [h for h in head.headers if h[0] == b"upgrade"]
    return headers, host, request_id


def request_head_out(method: bytes, target: bytes, headers: Headers) -> bytes:
    """The HTTP/1.1 request head sent upstream (``headers`` is never empty: Host is always there)."""
    # One join of pieces appended one by one: the cheapest way to build a head in the compiled module.
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for h in headers:
        parts.append(h[0])
        parts.append(b": ")
        parts.append(h[1])
        parts.append(b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _append_end_to_end(parts: list[bytes], headers: Headers) -> None:
    """Append ``name: value\\r\\n`` to ``parts`` for each of ``headers`` that :func:`end_to_end` keeps (without
    building its list in the usual case, where no Connection header names another header)."""
    start = len(parts)
    for h in headers:
        name = h[0]
        if name not in HOP_BY_HOP:
            parts.append(name)
            parts.append(b": ")
            parts.append(h[1])
            parts.append(b"\r\n")
        elif name == b"connection" and h[1].lower() not in CONNECTION_OPTIONS and named_hop_by_hop(h[1]):
            del parts[start:]
            for kept in end_to_end(headers):
                parts.append(kept[0])
                parts.append(b": ")
                parts.append(kept[1])
                parts.append(b"\r\n")
            return


def interim_head_out(request: RequestHead, head: ResponseHead) -> bytes:
    """A 1xx response relayed to the client (nothing for an HTTP/1.0 client, which knows no 1xx)."""
    if request.version != b"1.1":
        return b""
    kept = end_to_end(head.headers)
    block = b"".join(b"%s: %s\r\n" % h for h in kept)
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (head.status, head.reason, block)


def response_head_out(request: RequestHead, head: ResponseHead, upstream_ms: int,
                      draining: bool) -> tuple[bytes, bool, bool]:
    """(the response head sent to the client, whether the body must be re-chunked, whether the client
    connection closes after it): the upstream's end-to-end headers, then the ones the proxy adds."""
    status = head.status
    chunked = False
    # After a refused upgrade the client's further bytes (held, never forwarded) are not HTTP: close.
    keep_alive = request.keep_alive and head.keep_alive and not draining and not request.upgrade
    parts = [b"HTTP/", request.version, b" ", decimal(status), b" ", head.reason, b"\r\n"]
    _append_end_to_end(parts, head.headers)
    parts.append(b"x-envoy-upstream-service-time: ")
    parts.append(decimal(upstream_ms))
    parts.append(b"\r\n")
    if status == 101:
        parts.append(b"connection: upgrade\r\n")
        parts += [b"%s: %s\r\n" % h for h in head.headers if h[0] == b"upgrade"]
    else:
        if head.has_body and head.content_length is None:
            if request.version == b"1.1":
                chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                keep_alive = False
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        elif request.version == b"1.0":
            parts.append(b"connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts), chunked, not keep_alive
