"""How an exchange's messages become bytes on a connection: the core writes through a Framing object
and never serializes by itself, so a protocol with other framing (HTTP/2 frames on the exchange's
stream) can take HTTP/1.1's place on either side of the same core."""

from __future__ import annotations

from meshbox.proxy.codec.events import Headers, ResponseHead
from meshbox.proxy.codec.writer import LAST_CHUNK, chunk, local_reply
from meshbox.proxy.exchange import Exchange
from meshbox.proxy.header_policy import interim_head_out, request_head_out, response_head_out


class Http1Framing:
    """HTTP/1.1 on both sides: heads built by header_policy, bodies of unknown length re-chunked."""

    # -- towards the client --------------------------------------------------------------------------
    def response_head(self, ex: Exchange, head: ResponseHead, upstream_ms: int, draining: bool) -> bytes:
        """The final response head; decides ``ex.chunked_out`` and ``ex.close_after``."""
        request = ex.head
        assert request is not None
        data, ex.chunked_out, ex.close_after = response_head_out(request, head, upstream_ms, draining)
        return data

    def interim_head(self, ex: Exchange, head: ResponseHead) -> bytes:
        """A 1xx response (nothing for a client that cannot take one)."""
        request = ex.head
        assert request is not None
        return interim_head_out(request, head)

    def response_body(self, ex: Exchange, data: bytes) -> bytes:
        return chunk(data) if ex.chunked_out else data

    def response_end(self, ex: Exchange) -> bytes:
        return LAST_CHUNK if ex.chunked_out else b""

    def local_reply(self, ex: Exchange, status: int, body: bytes, close: bool,
                    headers: Headers | None = None) -> bytes:
        """A complete response made by the proxy itself (no body for a HEAD request); ``headers``: more
        fields for it (a redirect's Location)."""
        request = ex.head
        version = request.version if request is not None else b"1.1"
        head_only = request is not None and request.method == b"HEAD"
        return local_reply(status, body, close=close, version=version, head_only=head_only, extra=headers)

    # -- towards the upstream ------------------------------------------------------------------------
    def request_head(self, ex: Exchange, target: bytes, headers: Headers) -> bytes:
        request = ex.head
        assert request is not None
        if request.chunked:
            headers.append((b"transfer-encoding", b"chunked"))
        return request_head_out(request.method, target, headers)

    def request_body(self, ex: Exchange, data: bytes) -> bytes:
        request = ex.head
        return chunk(data) if request is not None and request.chunked else data

    def request_end(self, ex: Exchange) -> bytes:
        request = ex.head
        return LAST_CHUNK if request is not None and request.chunked else b""


HTTP1 = Http1Framing()
