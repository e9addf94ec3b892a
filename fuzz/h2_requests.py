"""Seeded HTTP/2 request streams: a request before serialization (``H2Template``), its frames, and the
well-formed variants (GET/POST with bodies, trailers, gRPC-shaped calls, CONTINUATION, padding,
priority, frames a server must ignore, early resets), each naming the feature it exercises."""

from __future__ import annotations

import itertools
import random
import struct
from dataclasses import dataclass, field, replace

from . import h2_frames as f
from .hostile_h2 import HOSTILE_H2
from .wire import Expect, Request

AUTHORITY = b"svc"
# "hang" holds its whole connection's script until the route timeout fires: rare, or the run idles.
HOSTILE_KINDS = sorted(k for k in HOSTILE_H2 if k != "hang")
HANG_SHARE = 0.03
Headers = list[tuple[bytes, bytes]]


@dataclass
class H2Template:
    """One request stream before serialization; mutators edit a copy of it."""

    sid: int
    headers: Headers
    body: list[bytes] = field(default_factory=list)  # one DATA frame each
    trailers: Headers | None = None
    end_on_headers: bool = True  # END_STREAM on the HEADERS frame (only when there is no body or trailers)
    huffman: bool = False
    block_splits: int = 0  # CONTINUATION frames the header block is cut into
    pad: int = -1  # >= 0: PADDED HEADERS and DATA with this many padding octets
    priority: bool = False  # PRIORITY flag on the HEADERS frame
    extra_before: list[bytes] = field(default_factory=list)  # frames written before the HEADERS
    extra_after: list[bytes] = field(default_factory=list)  # frames written after the last frame

    def copy(self) -> H2Template:
        return replace(self, headers=list(self.headers), body=list(self.body),
                       trailers=None if self.trailers is None else list(self.trailers),
                       extra_before=list(self.extra_before), extra_after=list(self.extra_after))

    def block_frames(self, block: bytes, end_stream: bool, priority: bool = False) -> list[bytes]:
        """HEADERS (plus CONTINUATION) frames carrying one header block, kept as one unit: nothing may
        come between them (RFC 9113 §6.10)."""
        # Cut points from the block itself: the same template always gives the same frames.
        cutter = random.Random(len(block) * 31 + self.sid)
        cuts = sorted(cutter.sample(range(1, len(block)), min(self.block_splits, len(block) - 1))) \
            if self.block_splits and len(block) > 1 else []
        edges = [0, *cuts, len(block)]
        pieces = [block[a:b] for a, b in itertools.pairwise(edges)]
        flags = (f.END_STREAM if end_stream else 0) | (f.END_HEADERS if len(pieces) == 1 else 0)
        first = pieces[0]
        if priority:
            flags |= f.PRIORITY_FLAG
            first = struct.pack(">IB", 0, 200) + first
        if self.pad >= 0:
            flags |= f.PADDED
            first = f.padded(first, self.pad)
        out = [f.frame(f.HEADERS, flags, self.sid, first)]
        for i, piece in enumerate(pieces[1:], 2):
            out.append(f.frame(f.CONTINUATION, f.END_HEADERS if i == len(pieces) else 0, self.sid, piece))
        return [b"".join(out)]

    def frames(self) -> list[bytes]:
        """The stream's frames in order, each header block as one unit."""
        ends_here = self.end_on_headers and not self.body and self.trailers is None
        out = list(self.extra_before)
        out += self.block_frames(f.header_block(self.headers, self.huffman), ends_here, self.priority)
        for i, chunk in enumerate(self.body):
            last = i == len(self.body) - 1 and self.trailers is None
            payload = f.padded(chunk, self.pad) if self.pad >= 0 else chunk
            out.append(f.frame(f.DATA, (f.END_STREAM if last else 0) | (f.PADDED if self.pad >= 0 else 0),
                               self.sid, payload))
        if self.trailers is not None:
            out += self.block_frames(f.header_block(self.trailers, self.huffman), True)
        elif not ends_here and not self.body:
            out.append(f.frame(f.DATA, f.END_STREAM, self.sid))
        return out + self.extra_after

    def request(self, rid: str, expect: Expect, mutation: str, **kw: object) -> Request:
        frames = tuple(self.frames())
        return Request(rid, b"".join(frames), expect, mutation, sid=self.sid, frames=frames, **kw)  # type: ignore[arg-type]


def grpc_message(payload: bytes) -> bytes:
    """One length-prefixed gRPC message (uncompressed)."""
    return b"\0" + struct.pack(">I", len(payload)) + payload


def base_headers(rid: str, method: bytes = b"GET", path: bytes | None = None) -> Headers:
    return [(b":method", method), (b":scheme", b"http"), (b":authority", AUTHORITY),
            (b":path", path if path is not None else b"/v/%s" % rid.encode()), (b"x-request-id", rid.encode())]


def _cut(rng: random.Random, body: bytes) -> list[bytes]:
    """A body in DATA frames of at most the default frame size, sometimes with empty frames between."""
    out = []
    while body:
        n = min(len(body), f.DEFAULT_MAX_FRAME, rng.choice((f.DEFAULT_MAX_FRAME, rng.randint(1, len(body)))))
        out.append(body[:n])
        body = body[n:]
        if rng.random() < 0.05:
            out.append(b"")
    return out


VALID_WEIGHTS = {
    "get": 20, "get_empty_data": 4, "post_length": 12, "post_no_length": 6, "post_trailers": 6, "grpc_unary": 12,
    "grpc_stream": 5, "head": 3, "continuation": 6, "padded": 5, "priority": 4, "many_headers": 3,
    "big_header": 2, "huffman": 8, "cookies": 2, "obs_text": 2, "query": 3, "authority_port": 2, "host_only": 2,
    "unknown_host": 2, "hostile": 6, "unknown_frame": 3, "ping_between": 3, "window_update": 3,
    "settings_between": 2, "empty_value": 2, "early_reset": 3, "big_body": 1,
}
VALID_VARIANTS = list(VALID_WEIGHTS)


def valid_stream(rng: random.Random, rid: str, sid: int, body_budget: int) -> tuple[H2Template, Request]:
    """A well-formed request stream with one randomly chosen variant, and what the client may demand.
    Its body stays under ``body_budget`` bytes (the connection's flow-control window is shared)."""
    variant = rng.choices(VALID_VARIANTS, list(VALID_WEIGHTS.values()))[0]
    body_budget = max(0, body_budget - 5 * 4)  # (a gRPC stream's message prefixes come on top)
    if variant == "big_body" and body_budget < 40_000:
        variant = "post_length"
    t = H2Template(sid, base_headers(rid))
    expect, head_only, opens = Expect.BACKEND, False, True
    small = min(body_budget, rng.choice((0, 1, 10, 100, 1000, 3000)))
    if variant in ("post_length", "post_no_length", "post_trailers", "padded", "big_body"):
        t.headers[0] = (b":method", rng.choice((b"POST", b"PUT", b"PATCH", b"DELETE")))
        body = rng.randbytes(rng.randint(20_000, min(body_budget, 40_000)) if variant == "big_body" else small)
        t.body = _cut(rng, body)
        if variant != "post_no_length":
            t.headers.append((b"content-length", b"%d" % len(body)))
        if variant == "post_trailers":
            t.trailers = [(b"x-fz-trailer", rid.encode()), (b"x-checksum", b"%d" % sum(body))]
        if variant == "padded":
            t.pad = rng.choice((0, 1, 7, 200))
    elif variant == "get_empty_data":
        t.end_on_headers = False
    elif variant in ("grpc_unary", "grpc_stream"):
        t.headers[0] = (b":method", b"POST")
        t.headers[3] = (b":path", b"/fuzz.Echo/%s" % (b"Say" if variant == "grpc_unary" else b"Chat"))
        t.headers += [(b"content-type", rng.choice((b"application/grpc", b"application/grpc+proto"))),
                      (b"te", b"trailers")]
        if rng.random() < 0.3:
            t.headers.append((b"grpc-timeout", b"5S"))
        messages = [grpc_message(rng.randbytes(min(body_budget // 4, rng.choice((0, 5, 100, 1000)))))
                    for _ in range(1 if variant == "grpc_unary" else rng.randint(2, 4))]
        t.body = messages if variant == "grpc_stream" else [b"".join(messages)]
    elif variant == "head":
        t.headers[0] = (b":method", b"HEAD")
        head_only = True
    elif variant == "continuation":
        t.headers += [(b"x-fz-%d" % i, b"v" * 30) for i in range(rng.randint(1, 20))]
        t.block_splits = rng.randint(1, 5)
    elif variant == "priority":
        if rng.random() < 0.5:
            t.priority = True
        else:
            t.extra_before.append(f.priority(sid, 0, rng.randrange(256)))
    elif variant == "many_headers":
        t.headers += [(b"x-fz-many-%d" % i, b"%d" % i) for i in range(rng.randint(20, 90))]
    elif variant == "big_header":
        t.headers.append((b"x-fz-big", b"b" * rng.choice((4000, 8000, 12000))))
        t.block_splits = rng.choice((0, 1, 2))
    elif variant == "huffman":
        t.huffman = True
        t.headers.append((b"user-agent", b"fuzz/h2 huffman"))
    elif variant == "cookies":
        t.headers += [(b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"cookie", b"c=3")]
    elif variant == "obs_text":
        t.headers.append((b"x-fz-obs", b"caf\xe9 \xff"))
    elif variant == "query":
        t.headers[3] = (b":path", b"/v/%s?x=1&y=%%20z" % rid.encode())
    elif variant == "authority_port":
        t.headers[2] = (b":authority", AUTHORITY + b":80")
    elif variant == "host_only":
        del t.headers[2]
        t.headers.append((b"host", AUTHORITY))
        expect = Expect.RESPONSE  # RFC 9113 §8.3.1 wants :authority; a Host-only request may be refused
    elif variant == "unknown_host":
        t.headers[2] = (b":authority", b"nowhere.example")
        expect = Expect.LOCAL
    elif variant == "hostile":
        kind = "hang" if rng.random() < HANG_SHARE else rng.choice(HOSTILE_KINDS)
        t.headers[3] = (b":path", b"/h/%s/%s" % (kind.encode(), rid.encode()))
        expect = Expect.HOSTILE
    elif variant == "unknown_frame":
        # A frame type nobody registered (not ALTSVC 0xa, ORIGIN 0xc, PRIORITY_UPDATE 0x10, which h2
        # parses): a server must ignore it (RFC 9113 §5.5).
        unknown = rng.randint(0x20, 0xEF)
        t.extra_before.append(f.frame(unknown, rng.randrange(256), rng.choice((0, sid)), rng.randbytes(20)))
    elif variant == "ping_between":
        t.extra_before.append(f.ping(rng.randbytes(8)))
    elif variant == "window_update":
        t.end_on_headers = False
        t.body = [b"x"]
        t.extra_before.append(f.window_update(0, rng.randint(1, 1 << 20)))
    elif variant == "settings_between":
        t.extra_before.append(f.settings((f.ENABLE_PUSH, 0), (f.MAX_FRAME_SIZE, rng.choice((16384, 65536))),
                                         (0xF0, rng.randrange(1 << 32))))  # unknown settings are ignored
    elif variant == "empty_value":
        t.headers.append((b"x-fz-empty", b""))
    elif variant == "early_reset":
        t.end_on_headers = False
        t.extra_after.append(f.rst_stream(sid, f.CANCEL))
        expect, opens = Expect.ANY, False  # the client gave up on it: any answer, or none
    else:
        t.headers.append((b"user-agent", b"fuzz/h2"))
    return t, t.request(rid, expect, f"valid:{variant}", head_only=head_only, opens=opens)
