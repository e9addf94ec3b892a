"""Which headers cross the proxy, as pure functions used by both the request and the response path.

Hop-by-hop headers (RFC 9110 7.6.1) are the fixed set below plus whatever a ``Connection`` header names,
except the headers the proxy frames itself or the mesh relies on end to end: Content-Length and
Transfer-Encoding (the proxy frames what it forwards: a message's framing is never the sender's to
remove), Host, x-request-id and the trace-context headers. ``Connection: content-length`` would
otherwise turn a body into a smuggled request (issue #18).
"""

from __future__ import annotations

from collections.abc import Iterable

from meshbox.proxy.codec.events import Headers, ProtocolError

# Always dropped when forwarding (Transfer-Encoding is re-added by the proxy when it chunks).
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer",
                        b"upgrade"})
# Connection options that are not header names.
CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})
# Never removed because Connection names them.
END_TO_END = frozenset({
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
