"""What the capture backend answers: a well-formed echo, or one of the hostile shapes a broken or
malicious upstream could send (request paths ``/h/<kind>/...`` pick a shape)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# A response the proxy must never deliver as an answer of its own: it hides inside another response's
# bytes, so a client that reads it as a response has been desynchronised (response splitting).
FORGED_ID = b"fz-forged"
FORGED = b"HTTP/1.1 200 OK\r\nx-fuzz-echo: " + FORGED_ID + b"\r\ncontent-length: 0\r\n\r\n"


@dataclass(frozen=True)
class Answer:
    """The backend's reaction to one request."""

    data: bytes = b""
    close: bool = False  # close the connection after writing
    delay: float = 0.0  # seconds to wait before writing
    hang: bool = False  # never answer (the route timeout must fire)


def echo_head(rid: bytes, length: int, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-fuzz-echo: %s\r\n%s\r\n" % (length, rid, extra)


def well_formed(rid: bytes, head_only: bool) -> Answer:
    """The normal answer: 200, the request's id echoed in a header and in the body."""
    body = b"ok " + rid
    return Answer(echo_head(rid, len(body)) + (b"" if head_only else body))


def _chunked(rid: bytes) -> Answer:
    return Answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-fuzz-echo: %s\r\n\r\n"
                  b"3\r\nok \r\n%x\r\n%s\r\n0\r\nx-trailer: t\r\n\r\n" % (rid, len(rid), rid))


def _close_delimited(rid: bytes) -> Answer:
    return Answer(b"HTTP/1.1 200 OK\r\nx-fuzz-echo: %s\r\n\r\nok until close" % rid, close=True)


def _split_by_connection_cl(rid: bytes) -> Answer:
    # Issue #18 D2: Connection names Content-Length, and the body looks like a second response.
    return Answer(b"HTTP/1.1 200 OK\r\nconnection: content-length\r\ncontent-length: %d\r\nx-fuzz-echo: %s\r\n"
                  b"\r\n%s" % (len(FORGED), rid, FORGED))


def _split_by_connection_te(rid: bytes) -> Answer:
    return Answer(b"HTTP/1.1 200 OK\r\nconnection: transfer-encoding\r\ntransfer-encoding: chunked\r\n"
                  b"x-fuzz-echo: %s\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (rid, len(FORGED), FORGED))


def _extra_bytes(rid: bytes) -> Answer:
    # More bytes than Content-Length: they must never reach the next request on this upstream connection.
    return Answer(echo_head(rid, 2) + b"ok" + FORGED)


def _no_content_with_body(rid: bytes) -> Answer:
    return Answer(b"HTTP/1.1 204 No Content\r\ncontent-length: %d\r\nx-fuzz-echo: %s\r\n\r\n%s"
                  % (len(FORGED), rid, FORGED))


def _interim_then_final(rid: bytes) -> Answer:
    return Answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
                  + well_formed(rid, False).data)


def _hop_by_hop_names(rid: bytes) -> Answer:
    return Answer(echo_head(rid, 2, b"connection: x-fuzz-echo, keep-alive, x-drop\r\nx-drop: 1\r\n"
                                    b"keep-alive: timeout=5\r\n") + b"ok")


def _fixed(data: bytes, close: bool = False) -> Callable[[bytes], Answer]:
    return lambda rid: Answer(data, close=close)


HOSTILE: dict[str, Callable[[bytes], Answer]] = {
    "chunked": _chunked,
    "close_delimited": _close_delimited,
    "split_cl": _split_by_connection_cl,
    "split_te": _split_by_connection_te,
    "extra_bytes": _extra_bytes,
    "204_body": _no_content_with_body,
    "interim": _interim_then_final,
    "hop_by_hop": _hop_by_hop_names,
    "dup_cl": _fixed(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!"),
    "cl_and_te": _fixed(b"HTTP/1.1 200 OK\r\ncontent-length: 40\r\ntransfer-encoding: chunked\r\n\r\n"
                        b"2\r\nok\r\n0\r\n\r\n" + FORGED),
    "bad_status": _fixed(b"HTTP/1.1 2000 OK\r\ncontent-length: 2\r\n\r\nok"),
    "bad_version": _fixed(b"HTTQ/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    "bare_lf": _fixed(b"HTTP/1.1 200 OK\ncontent-length: 2\n\nok"),
    "obs_fold": _fixed(b"HTTP/1.1 200 OK\r\nx-a: b\r\n c\r\ncontent-length: 2\r\n\r\nok"),
    "nul_header": _fixed(b"HTTP/1.1 200 OK\r\nx-a: b\x00c\r\ncontent-length: 2\r\n\r\nok"),
    "huge_head": _fixed(b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 70_000 + b"\r\ncontent-length: 2\r\n\r\nok"),
    "bad_chunk": _fixed(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n"),
    "no_answer": _fixed(b"", close=True),
    "garbage": _fixed(b"\x16\x03\x01\x00\x05hello", close=True),
    "half_head": _fixed(b"HTTP/1.1 200 OK\r\ncontent-le", close=True),
    "half_body": _fixed(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b", close=True),
    "slow": lambda rid: Answer(well_formed(rid, False).data, delay=0.05),
    "hang": lambda rid: Answer(hang=True),
}


def answer_for(target: bytes, rid: bytes, head_only: bool) -> Answer:
    """The answer to a request for ``target``: the hostile shape it names, else the well-formed echo."""
    if target.startswith(b"/h/"):
        kind = target[3:].split(b"/", 1)[0].decode("latin-1")
        make = HOSTILE.get(kind)
        if make is not None:
            return make(rid)
    return well_formed(rid, head_only)
