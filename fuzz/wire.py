"""HTTP/1.1 request templates, their serialization, and what a client expects back from each."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

CRLF = b"\r\n"


class Expect(Enum):
    """What answer the client may demand for a request it sent."""

    BACKEND = "backend"  # a 200 from the capture backend echoing the request's own id
    LOCAL = "local"  # a local reply from the proxy (>= 400), no echo
    RESPONSE = "response"  # an unusual but well-formed request: a response of any status
    HOSTILE = "hostile"  # the backend misbehaves: any status or a close, but never another request's echo
    ANY = "any"  # a malformed request: any answer, or a close


@dataclass
class Template:
    """A request before serialization; mutators edit a copy of it."""

    method: bytes = b"GET"
    target: bytes = b"/"
    version: bytes = b"HTTP/1.1"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    # "length": Content-Length from the body; "chunked": the body in ``chunks`` plus ``trailers``;
    # "none": no framing header is added (the headers may still carry one a mutator wrote).
    framing: str = "none"
    chunks: list[bytes] = field(default_factory=list)
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def copy(self) -> Template:
        return replace(self, headers=list(self.headers), chunks=list(self.chunks), trailers=list(self.trailers))

    def framing_headers(self) -> list[tuple[bytes, bytes]]:
        if self.framing == "length":
            return [(b"content-length", b"%d" % len(self.body))]
        if self.framing == "chunked":
            return [(b"transfer-encoding", b"chunked")]
        return []

    def head(self, line_end: bytes = CRLF) -> bytes:
        lines = [b"%s %s %s" % (self.method, self.target, self.version)]
        lines += [b"%s: %s" % (n, v) for n, v in self.headers + self.framing_headers()]
        return line_end.join(lines) + line_end + line_end

    def payload(self) -> bytes:
        if self.framing != "chunked":
            return self.body
        out = [b"%x\r\n%s\r\n" % (len(c), c) for c in self.chunks if c]
        out.append(b"0\r\n")
        out += [b"%s: %s\r\n" % t for t in self.trailers]
        out.append(CRLF)
        return b"".join(out)

    def serialize(self) -> bytes:
        return self.head() + self.payload()


@dataclass
class Request:
    """One request of a connection script: its bytes on the wire and what the client expects back."""

    rid: str  # the x-request-id it carries
    data: bytes
    expect: Expect
    mutation: str  # "valid:<variant>" for a well-formed variant, else the name of the breaking mutation
    head_only: bool = False  # HEAD: the answer has no body
    may_close: bool = False  # the proxy may close the connection after (or instead of) answering it
    last: bool = False  # it asks the proxy to close after it: a client sends nothing more (RFC 9112 §9.6)
    embedded: tuple[str, ...] = ()  # ids of requests hidden in its body as smuggling bait
    # HTTP/2 only: the stream it opens, its frames (each header block one unit), and whether the proxy
    # must settle that stream (answer, reset, or GOAWAY): not when the client reset it or the proxy
    # cannot have read it as a stream (a truncated frame, a length that swallows what follows).
    sid: int = 0
    frames: tuple[bytes, ...] = ()
    opens: bool = True

    @property
    def malformed(self) -> bool:
        return not self.mutation.startswith("valid:")
