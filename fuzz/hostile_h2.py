"""What the capture backend answers on HTTP/2: the echo (plain, HEAD or gRPC-shaped), or a hostile shape
picked by a request path ``/h/<kind>/...``. Only shapes that hurt one stream: the proxy shares upstream
connections between clients, so a shape that ended the upstream connection would fail other scripts'
requests through no fault of the proxy."""

from __future__ import annotations

from dataclasses import dataclass

from .h2_frames import INTERNAL_ERROR, REFUSED_STREAM

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class H2Answer:
    """The backend's reaction to one HTTP/2 request."""

    headers: Headers | None = None  # None: no response head
    body: bytes = b""
    trailers: Headers | None = None
    reset: int | None = None  # RST_STREAM with this code after what is above
    delay: float = 0.0
    hang: bool = False  # never answer (the route timeout must fire)


def grpc_message(payload: bytes) -> bytes:
    return b"\0" + len(payload).to_bytes(4, "big") + payload


def echo(rid: bytes, head_only: bool, grpc: bool) -> H2Answer:
    """The normal answer: 200 echoing the id in a header and the body (a gRPC call: one message and
    ``grpc-status: 0`` in the trailers)."""
    if grpc:
        return H2Answer([(b":status", b"200"), (b"content-type", b"application/grpc"), (b"x-fuzz-echo", rid)],
                        grpc_message(b"ok " + rid), [(b"grpc-status", b"0"), (b"x-fuzz-echo-trailer", rid)])
    body = b"ok " + rid
    return H2Answer([(b":status", b"200"), (b"content-length", b"%d" % len(body)), (b"x-fuzz-echo", rid)],
                    b"" if head_only else body)


HOSTILE_H2 = {
    "reset_before": lambda rid: H2Answer(reset=REFUSED_STREAM),
    "reset_after": lambda rid: H2Answer([(b":status", b"200"), (b"x-fuzz-echo", rid)], b"par", reset=INTERNAL_ERROR),
    "trailers_only": lambda rid: H2Answer([(b":status", b"200"), (b"content-type", b"application/grpc"),
                                           (b"grpc-status", b"14"), (b"x-fuzz-echo", rid)]),
    "big": lambda rid: H2Answer([(b":status", b"200"), (b"x-fuzz-echo", rid)], b"B" * 300_000),
    "no_length": lambda rid: H2Answer([(b":status", b"204"), (b"x-fuzz-echo", rid)]),
    "slow": lambda rid: H2Answer([(b":status", b"200"), (b"x-fuzz-echo", rid)], b"ok " + rid, delay=0.05),
    "hang": lambda rid: H2Answer(hang=True),
}


def answer_h2(path: bytes, rid: bytes, head_only: bool, grpc: bool) -> H2Answer:
    """The answer to a request for ``path``: the hostile shape it names, else the echo."""
    if path.startswith(b"/h/"):
        make = HOSTILE_H2.get(path[3:].split(b"/", 1)[0].decode("latin-1"))
        if make is not None:
            return make(rid)
    return echo(rid, head_only, grpc)
