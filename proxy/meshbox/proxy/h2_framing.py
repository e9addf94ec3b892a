"""The exchange core's framing on an HTTP/2 stream: what the core writes for the client becomes HEADERS,
DATA and trailers on the stream (``H2ResponseFraming``), what it writes for upstream waits on the
stream for the upstream stream to send (``H2RequestFraming``). Both return no bytes: the frames go
through the connection's send queues (``h2_link``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshbox.proxy import grpc_status
from meshbox.proxy.codec.events import Headers, ResponseHead
from meshbox.proxy.exchange import Exchange
from meshbox.proxy.framing import Http1Framing
from meshbox.proxy.header_policy import end_to_end
from meshbox.proxy.http2_to_http1 import H2ToHttp1

if TYPE_CHECKING:
    from meshbox.proxy.http2_stream import H2Stream


class H2ResponseFraming(Http1Framing):
    """Towards the client: the core's response messages as frames on one stream."""

    def __init__(self, stream: H2Stream) -> None:
        self.stream = stream

    def response_head(self, ex: Exchange, head: ResponseHead, upstream_ms: int, draining: bool) -> bytes:
        ex.chunked_out = False
        ex.close_after = False
        headers = [(b":status", b"%d" % head.status), *end_to_end(head.headers),
                   (b"x-envoy-upstream-service-time", b"%d" % upstream_ms)]
        self.stream.send_head(headers, not head.has_body)
        return b""

    def interim_head(self, ex: Exchange, head: ResponseHead) -> bytes:
        # 1xx (100-continue) is informational: HTTP/2 clients do not wait for it; not relayed.
        return b""

    def response_body(self, ex: Exchange, data: bytes) -> bytes:
        self.stream.send_body(data, ex.up)
        return b""

    def response_end(self, ex: Exchange) -> bytes:
        self.stream.send_end()
        return b""

    def local_reply(self, ex: Exchange, status: int, body: bytes, close: bool,
                    headers: Headers | None = None) -> bytes:
        """The proxy's own answer: for a gRPC call a trailers-only response with the gRPC status Envoy
        would give (a route timeout: DEADLINE_EXCEEDED; a fault: its gRPC status when it has one);
        ``headers``: more fields for it (a redirect's Location)."""
        stream = self.stream
        route = ex.route
        code = route.abort_grpc_status if route is not None and ex.response_flags == "FI" else None
        if code is not None or stream.grpc:
            code = grpc_status.from_http(status, ex.response_flags) if code is None else code
            ex.response_code = 200
            ex.grpc_status = code
            stream.send_head([(b":status", b"200"), (b"content-type", b"application/grpc"),
                              (b"grpc-status", b"%d" % code),
                              (b"grpc-message", grpc_status.percent_encode_message(body))], True)
            return b""
        head_only = ex.head is not None and ex.head.method == b"HEAD"
        fields = [(b":status", b"%d" % status), (b"content-type", b"text/plain"),
                  (b"content-length", b"%d" % len(body))]
        if headers:
            fields.extend(headers)
        stream.send_head(fields, head_only or not body)
        if body and not head_only:
            stream.send_body(body, None)
            stream.send_end()
        return b""


class H2RequestFraming(Http1Framing):
    """Towards upstream: the request head and body wait on the stream for the upstream stream to send;
    HTTP/1.1 bytes instead when the route's cluster is spoken to over HTTP/1.1 (http2_to_http1)."""

    def __init__(self, stream: H2Stream) -> None:
        self.stream = stream

    def request_head(self, ex: Exchange, target: bytes, headers: Headers) -> bytes:
        stream = self.stream
        cluster = ex.cluster
        if cluster is not None and cluster.http1_upstream:
            http1 = stream.http1 = H2ToHttp1(stream)
            return http1.request_head(ex, target, headers)
        stream.target = target
        stream.up_headers = headers
        return b""

    def request_body(self, ex: Exchange, data: bytes) -> bytes:
        stream = self.stream
        if stream.http1 is not None:
            return stream.http1.request_body(data)
        stream.record_body(data)
        return data

    def request_end(self, ex: Exchange) -> bytes:
        stream = self.stream
        stream.request_end_seen = True
        return stream.http1.request_end() if stream.http1 is not None else b""
