"""A strict, incremental reader of the HTTP/1.1 responses the proxy sends to a client (RFC 9112 §4-7):
anything a client could not delimit unambiguously is a ``MalformedResponse``."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9][0-9]) [\t -~\x80-\xff]*")
_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[^\r\n]*)?")
MAX_HEAD = 256 * 1024


class MalformedResponse(Exception):
    """The proxy sent bytes that are not a well-delimited HTTP/1.1 response."""


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    close_delimited: bool = False
    interim: list[int] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        return next((v for n, v in self.headers if n == name), None)

    @property
    def echo(self) -> bytes | None:
        """The request id the capture backend echoed, when the response came from it."""
        return self.header(b"x-fuzz-echo")

    @property
    def closes(self) -> bool:
        value = self.header(b"connection")
        return self.close_delimited or (value is not None and b"close" in value.lower())


class ResponseReader:
    """Parse responses from the bytes of one connection; ``head_only(i)`` says whether the i-th request
    was HEAD (its response has no body)."""

    def __init__(self, head_only: Callable[[int], bool]) -> None:
        self.buf = bytearray()
        self.head_only = head_only
        self.responses: list[Response] = []
        self.eof = False
        self._interim: list[int] = []

    @property
    def partial(self) -> bool:
        """Bytes of a response have arrived but not all of it (after EOF: a truncated response)."""
        return bool(self.buf)

    def feed(self, data: bytes) -> None:
        """Add bytes (``b""`` = the proxy closed) and parse every response they complete."""
        if not data:
            self.eof = True
        self.buf += data
        while self.buf and self._one():
            pass

    def _one(self) -> bool:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise MalformedResponse(f"no end of response head in {len(buf)} bytes")
            return False
        lines = bytes(buf[:end]).split(b"\r\n")
        m = _STATUS_LINE.fullmatch(lines[0])
        if m is None:
            raise MalformedResponse(f"bad status line {lines[0][:200]!r}")
        status = int(m.group(1))
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            h = _HEADER.fullmatch(line)
            if h is None:
                raise MalformedResponse(f"bad header line {line[:200]!r} (status {status})")
            headers.append((h.group(1).lower(), h.group(2)))
        start = end + 4
        if 100 <= status < 200 and status != 101:
            del buf[:start]
            self._interim.append(status)
            return True
        response = Response(status, headers, interim=self._interim)
        body_end = self._body(response, start)
        if body_end is None:
            return False
        del buf[:body_end]
        self._interim = []
        self.responses.append(response)
        return True

    def _body(self, r: Response, start: int) -> int | None:
        """Where the response's body ends in the buffer (filling r.body), or None if it is not all here."""
        lengths = [v for n, v in r.headers if n == b"content-length"]
        codings = [v for n, v in r.headers if n == b"transfer-encoding"]
        if lengths and codings:
            raise MalformedResponse(f"both Content-Length and Transfer-Encoding (status {r.status})")
        if len(lengths) > 1:
            raise MalformedResponse(f"{len(lengths)} Content-Length headers (status {r.status})")
        if self.head_only(len(self.responses)) or r.status in (204, 304) or r.status == 101:
            return start
        buf = self.buf
        if codings:
            if codings != [b"chunked"]:
                raise MalformedResponse(f"transfer-encoding {codings!r} (status {r.status})")
            return self._chunked(r, start)
        if lengths:
            if not lengths[0].isdigit():
                raise MalformedResponse(f"content-length {lengths[0]!r}")
            end = start + int(lengths[0])
            if len(buf) < end:
                return None
            r.body = bytes(buf[start:end])
            return end
        if not r.closes:
            raise MalformedResponse(f"status {r.status} has no Content-Length nor Transfer-Encoding on a kept-alive "
                                    "connection: its end cannot be found")
        if not self.eof:
            return None
        r.body, r.close_delimited = bytes(buf[start:]), True
        return len(buf)

    def _chunked(self, r: Response, pos: int) -> int | None:
        buf = self.buf
        body = bytearray()
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            m = _CHUNK_SIZE.fullmatch(bytes(buf[pos:eol]))
            if m is None:
                raise MalformedResponse(f"bad chunk size line {bytes(buf[pos:eol])[:100]!r}")
            size = int(m.group(1), 16)
            pos = eol + 2
            if size == 0:
                break
            if len(buf) < pos + size + 2:
                return None
            body += buf[pos:pos + size]
            if buf[pos + size:pos + size + 2] != b"\r\n":
                raise MalformedResponse("chunk data not followed by CRLF")
            pos += size + 2
        while True:  # trailer section
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            if eol == pos:
                r.body = bytes(body)
                return eol + 2
            if _HEADER.fullmatch(bytes(buf[pos:eol])) is None:
                raise MalformedResponse(f"bad trailer {bytes(buf[pos:eol])[:100]!r}")
            pos = eol + 2
