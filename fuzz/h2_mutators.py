"""Seeded HTTP/2 mutations: a request stream broken on purpose at the message level (RFC 9113 §8.1.1,
§8.2: pseudo-headers, names, connection-specific fields, CR/LF/NUL, content-length), at the frame level
(§4-§6: stream ids, stream 0, sizes, padding, windows, SETTINGS, CONTINUATION, RST_STREAM, DATA after
END_STREAM, too many streams) or in its HPACK bytes (RFC 7541: bad indexes, bad Huffman, oversized
integers, random bytes). Each names itself; a request carrying one expects any answer, or none."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

from . import h2_frames as f
from .h2_requests import H2Template, base_headers
from .wire import Expect, Request


@dataclass
class Broken:
    """What a mutation wrote. ``swallows``: the proxy may read what follows as part of a frame."""

    frames: list[bytes]
    swallows: bool = False
    opens: bool = True  # the proxy must settle the stream (answer, reset, GOAWAY)


Mutation = Callable[[random.Random, H2Template], Broken]


def _headers_edit(edit: Callable[[random.Random, H2Template], None]) -> Mutation:
    def run(rng: random.Random, t: H2Template) -> Broken:
        edit(rng, t)
        return Broken(t.frames())
    return run


def _set(t: H2Template, name: bytes, value: bytes) -> None:
    t.headers = [(n, value if n == name else v) for n, v in t.headers]


def _drop(name: bytes) -> Callable[[random.Random, H2Template], None]:
    return lambda rng, t: setattr(t, "headers", [(n, v) for n, v in t.headers if n != name])


def _append(name: bytes, value: bytes) -> Callable[[random.Random, H2Template], None]:
    return lambda rng, t: t.headers.append((name, value))


def _pseudo_after_regular(rng: random.Random, t: H2Template) -> None:
    t.headers = [h for h in t.headers if h[0] != b":path"] + [(b":path", b"/v/late")]


def _inject(rng: random.Random, t: H2Template) -> None:
    """CR/LF/NUL in a value or name: smuggling bait if a proxy pasted it into an HTTP/1.1 head."""
    rid = dict(t.headers)[b"x-request-id"]
    bait = b"x\r\n\r\nGET /v/bait HTTP/1.1\r\nhost: svc\r\nx-request-id: " + rid + b"s\r\n\r\n"
    where = rng.choice(("value", "value_nul", "value_lf", "name", "path", "authority", "method"))
    if where == "value":
        t.headers.append((b"x-fz-inject", bait))
    elif where == "value_nul":
        t.headers.append((b"x-fz-inject", b"a\x00b"))
    elif where == "value_lf":
        t.headers.append((b"x-fz-inject", b"a\nx-fz-smuggled: 1"))
    elif where == "name":
        t.headers.append((b"x-fz\r\nx-fz-smuggled", b"1"))
    elif where == "path":
        _set(t, b":path", b"/v/x HTTP/1.1\r\nx-fz-smuggled: 1\r\nx: y")
    elif where == "authority":
        _set(t, b":authority", b"svc\r\nx-fz-smuggled: 1")
    else:
        _set(t, b":method", b"GET /v/bait HTTP/1.1\r\n")


def _content_length(rng: random.Random, t: H2Template) -> None:
    body = rng.randbytes(rng.randint(1, 200))
    t.headers[0] = (b":method", b"POST")
    t.body = [body]
    claimed = rng.choice((len(body) + 1, len(body) - 1, 0, len(body) * 2, 1 << 40))
    t.headers.append((b"content-length", rng.choice((b"%d" % claimed, b"%d, %d" % (len(body), len(body) + 1),
                                                     b"-1", b"0x10", b" %d" % len(body)))))


def _whitespace_value(rng: random.Random, t: H2Template) -> None:
    t.headers.append((b"x-fz-ws", rng.choice((b" lead", b"trail ", b"\tx", b"x\t"))))


def _connection_specific(rng: random.Random, t: H2Template) -> None:
    t.headers.append(rng.choice(((b"connection", b"keep-alive"), (b"keep-alive", b"timeout=5"),
                                 (b"proxy-connection", b"close"), (b"transfer-encoding", b"chunked"),
                                 (b"upgrade", b"websocket"), (b"te", b"gzip"), (b"connection", b"x-request-id"))))


def _bad_name(rng: random.Random, t: H2Template) -> None:
    t.headers.append((rng.choice((b"X-Fz-Upper", b"Content-Length", b"x fz", b"x:fz", b"", b"x\x7f", b"\xff")), b"1"))


HEADER_MUTATIONS: dict[str, Mutation] = {
    "no_method": _headers_edit(_drop(b":method")),
    "no_path": _headers_edit(_drop(b":path")),
    "no_scheme": _headers_edit(_drop(b":scheme")),
    "empty_path": _headers_edit(lambda rng, t: _set(t, b":path", b"")),
    "relative_path": _headers_edit(lambda rng, t: _set(t, b":path", rng.choice((b"v/x", b"http://svc/v", b"*")))),
    "duplicate_path": _headers_edit(_append(b":path", b"/v/second")),
    "duplicate_method": _headers_edit(_append(b":method", b"DELETE")),
    "unknown_pseudo": _headers_edit(_append(b":foo", b"bar")),
    "status_in_request": _headers_edit(_append(b":status", b"200")),
    "pseudo_after_regular": _headers_edit(_pseudo_after_regular),
    "pseudo_in_trailers": _headers_edit(lambda rng, t: setattr(t, "trailers", [(b":path", b"/v/trailer")])),
    "bad_name": _headers_edit(_bad_name),
    "connection_specific": _headers_edit(_connection_specific),
    "inject_crlf_nul": _headers_edit(_inject),
    "whitespace_value": _headers_edit(_whitespace_value),
    "content_length": _headers_edit(_content_length),
    "host_differs": _headers_edit(_append(b"host", b"other.example")),
    "bad_method": _headers_edit(lambda rng, t: _set(t, b":method", rng.choice((b"G T", b"", b"GET\x00")))),
    "space_in_path": _headers_edit(lambda rng, t: _set(t, b":path", b"/v/a b")),
    "connect_no_authority": _headers_edit(lambda rng, t: setattr(t, "headers", [(b":method", b"CONNECT")])),
}


def _hpack_block(rng: random.Random, t: H2Template, block: bytes) -> Broken:
    return Broken(t.block_frames(block, True))


def _bad_hpack(rng: random.Random, t: H2Template) -> Broken:
    good = f.header_block(t.headers)
    kind = rng.choice(("index_zero", "index_past", "bad_huffman", "huffman_eos", "big_int", "size_update",
                       "late_size_update", "string_past_end", "random", "flip"))
    if kind == "index_zero":
        bad = good + b"\x80"
    elif kind == "index_past":
        bad = good + f.hpack_int(rng.choice((62, 70, 500, 4096)), 7, 0x80)
    elif kind == "bad_huffman":  # a Huffman string whose padding is not the EOS prefix (all ones)
        bad = good + b"\x00\x81\x00" + f.hpack_string(b"v")
    elif kind == "huffman_eos":  # the EOS symbol itself (30 ones) inside a string
        bad = good + b"\x00" + f.hpack_string(b"n") + b"\x84\xff\xff\xff\xff"
    elif kind == "big_int":  # an integer that never ends or overflows 2^62
        bad = good + b"\xff" + b"\xff" * rng.choice((10, 20, 100)) + rng.choice((b"\x01", b""))
    elif kind == "size_update":  # a dynamic table size update above the proxy's SETTINGS
        bad = f.hpack_int(rng.choice((4097, 1 << 20, 1 << 30)), 5, 0x20) + good
    elif kind == "late_size_update":  # a size update after a field (RFC 7541 §4.2)
        bad = good + f.hpack_int(0, 5, 0x20)
    elif kind == "string_past_end":
        bad = good + b"\x00\x7f\x10abc"
    elif kind == "random":
        bad = rng.randbytes(rng.randint(1, 60))
    else:
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        bad = bytes(data)
    return _hpack_block(rng, t, bad)


def _on_stream_zero(rng: random.Random, t: H2Template) -> Broken:
    kind = rng.choice((f.DATA, f.HEADERS, f.RST_STREAM, f.CONTINUATION, f.PRIORITY))
    payload = {f.RST_STREAM: struct.pack(">I", 8), f.PRIORITY: struct.pack(">IB", 1, 1),
               f.HEADERS: f.header_block(t.headers)}.get(kind, b"x")
    return Broken([f.frame(kind, f.END_HEADERS if kind == f.HEADERS else 0, 0, payload), *t.frames()])


def _control_on_stream(rng: random.Random, t: H2Template) -> Broken:
    bad = rng.choice((f.frame(f.SETTINGS, 0, t.sid, b""), f.frame(f.PING, 0, t.sid, b"12345678"),
                      f.frame(f.GOAWAY, 0, t.sid, b"\0" * 8)))
    return Broken([*t.frames(), bad])


def _stream_ids(rng: random.Random, t: H2Template) -> Broken:
    kind = rng.choice(("even", "decreasing", "reuse", "max", "data_idle", "window_idle"))
    if kind in ("data_idle", "window_idle"):  # frames for a stream nobody opened yet (RFC 9113 §5.1)
        idle = t.sid + 2 * rng.randint(1, 4)
        bad = f.frame(f.DATA, 0, idle, b"idle") if kind == "data_idle" else f.window_update(idle, 100)
        return Broken([bad, *t.frames()])
    if kind == "even":
        t.sid += 1
    elif kind == "max":
        unused, t.sid = t.sid, (1 << 31) - 1  # legal; then any new stream id is too low
        return Broken([*t.frames(), f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, unused,
                                            f.header_block(base_headers("fz-after-max")))])
    elif kind == "decreasing":  # a higher stream first, then this never-used lower one
        higher = f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, t.sid + 2,
                         f.header_block(base_headers(f"fz-higher-{t.sid}")))
        frames = [higher, *t.frames()]
        t.sid += 2  # the highest stream it opened (the proxy may answer it)
        return Broken(frames)
    else:
        return Broken([*t.frames(), *t.frames()])  # the same stream id opened twice
    return Broken(t.frames())


def _oversized(rng: random.Random, t: H2Template) -> Broken:
    size = rng.choice((f.DEFAULT_MAX_FRAME + 1, 70_000))
    kind = rng.choice((f.DATA, f.HEADERS, f.PING, f.SETTINGS))
    if kind == f.DATA:
        t.end_on_headers = False
        return Broken([*t.frames()[:1], f.frame(f.DATA, f.END_STREAM, t.sid, b"d" * size)])
    return Broken([f.frame(kind, f.END_HEADERS if kind == f.HEADERS else 0, t.sid if kind == f.HEADERS else 0,
                           b"\0" * size), *t.frames()])


def _bad_padding(rng: random.Random, t: H2Template) -> Broken:
    body = b"padme"
    pad = rng.choice((len(body) + 1, 255, len(body) + 5))
    if rng.random() < 0.5:
        t.end_on_headers = False
        return Broken([*t.frames()[:1], f.frame(f.DATA, f.PADDED | f.END_STREAM, t.sid, bytes((pad,)) + body)])
    block = f.header_block(t.headers)
    return Broken([f.frame(f.HEADERS, f.PADDED | f.END_HEADERS | f.END_STREAM, t.sid,
                           bytes((min(255, len(block) + rng.randint(1, 4)),)) + block)])


def _truncated(rng: random.Random, t: H2Template) -> Broken:
    data = b"".join(t.frames())
    return Broken([data[:rng.randrange(1, len(data))]], swallows=True, opens=False)


def _window(rng: random.Random, t: H2Template) -> Broken:
    t.end_on_headers = False
    kind = rng.choice(("zero_stream", "zero_conn", "overflow_stream", "overflow_conn", "bad_length"))
    head = t.frames()[:1]
    rest = [f.frame(f.DATA, f.END_STREAM, t.sid, b"w")]
    if kind == "zero_stream":
        bad = [f.window_update(t.sid, 0)]
    elif kind == "zero_conn":
        bad = [f.window_update(0, 0)]
    elif kind == "overflow_stream":
        bad = [f.window_update(t.sid, f.MAX_WINDOW), f.window_update(t.sid, f.MAX_WINDOW)]
    elif kind == "overflow_conn":
        bad = [f.window_update(0, f.MAX_WINDOW)] * 2
    else:
        bad = [f.frame(f.WINDOW_UPDATE, 0, t.sid, b"\0\0\1")]
    return Broken([*head, *bad, *rest])


def _bad_settings(rng: random.Random, t: H2Template) -> Broken:
    bad = rng.choice((f.settings((f.ENABLE_PUSH, 2)), f.settings((f.INITIAL_WINDOW_SIZE, 1 << 31)),
                      f.settings((f.MAX_FRAME_SIZE, 100)), f.settings((f.MAX_FRAME_SIZE, 1 << 24)),
                      f.frame(f.SETTINGS, 0, 0, b"\0\1\0\0"), f.frame(f.SETTINGS, f.ACK, 0, b"\0\1\0\0\0\0"),
                      f.settings((f.INITIAL_WINDOW_SIZE, 0)), f.settings((f.HEADER_TABLE_SIZE, 1 << 31))))
    return Broken([bad, *t.frames()])


def _continuation(rng: random.Random, t: H2Template) -> Broken:
    block = f.header_block(t.headers)
    half = len(block) // 2
    head = f.frame(f.HEADERS, f.END_STREAM, t.sid, block[:half])
    kind = rng.choice(("data", "other_stream", "ping", "orphan", "wrong_stream", "flood"))
    if kind == "data":
        tail = [f.frame(f.DATA, f.END_STREAM, t.sid, b"x")]
    elif kind == "other_stream":
        tail = [f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, t.sid + 2, block)]
    elif kind == "ping":
        tail = [f.ping()]
    elif kind == "orphan":
        return Broken([f.frame(f.CONTINUATION, f.END_HEADERS, t.sid, block)])
    elif kind == "wrong_stream":
        tail = [f.frame(f.CONTINUATION, f.END_HEADERS, t.sid + 2, block[half:])]
    else:  # many empty CONTINUATION frames, never ending the block
        tail = [f.frame(f.CONTINUATION, 0, t.sid, b"")] * rng.choice((70, 200))
    return Broken([head, *tail])


def _rst_idle(rng: random.Random, t: H2Template) -> Broken:
    bad = rng.choice((f.rst_stream(t.sid + 2 * rng.randint(1, 5), f.CANCEL), f.frame(f.RST_STREAM, 0, t.sid, b"\0\0")))
    return Broken([bad, *t.frames()])


def _after_end(rng: random.Random, t: H2Template) -> Broken:
    late = rng.choice((f.frame(f.DATA, 0, t.sid, b"late"), f.frame(f.DATA, f.END_STREAM, t.sid, b"late"),
                       f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, t.sid, f.header_block([(b"x-late", b"1")]))))
    return Broken([*t.frames(), late])


def _trailers_without_end(rng: random.Random, t: H2Template) -> Broken:
    t.end_on_headers = False
    return Broken([*t.frames()[:1], f.frame(f.HEADERS, f.END_HEADERS, t.sid, f.header_block([(b"x-t", b"1")])),
                   f.frame(f.DATA, f.END_STREAM, t.sid, b"after trailers")])


def _many_streams(rng: random.Random, t: H2Template) -> Broken:
    """More streams than the proxy's MAX_CONCURRENT_STREAMS (100), none finished."""
    out = []
    for i in range(rng.choice((101, 130))):
        sid = t.sid + 2 * i
        out.append(f.frame(f.HEADERS, f.END_HEADERS, sid, f.header_block(base_headers(f"fz-many-{i}", b"POST"))))
    t.sid += 2 * (len(out) - 1)
    return Broken(out)


def _rapid_reset(rng: random.Random, t: H2Template) -> Broken:
    out = []
    count = rng.choice((20, 120))
    for i in range(count):
        sid = t.sid + 2 * i
        out += [f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid, f.header_block(base_headers(f"fz-rr-{i}"))),
                f.rst_stream(sid, f.CANCEL)]
    t.sid += 2 * (count - 1)
    return Broken(out, opens=False)


def _self_dependency(rng: random.Random, t: H2Template) -> Broken:
    return Broken([rng.choice((f.priority(t.sid, t.sid), f.frame(f.PRIORITY, 0, t.sid, b"\0\0"))), *t.frames()])


def _bad_preface_frame(rng: random.Random, t: H2Template) -> Broken:
    return Broken([rng.choice((f.frame(f.PUSH_PROMISE, f.END_HEADERS, t.sid, b"\0\0\0\2" + f.header_block(t.headers)),
                               f.frame(f.PING, 0, 0, b"short"), f.goaway(0, f.PROTOCOL_ERROR))), *t.frames()])


def _byte_noise(rng: random.Random, t: H2Template) -> Broken:
    data = bytearray(b"".join(t.frames()))
    for _ in range(rng.randint(1, 6)):
        op, at = rng.random(), rng.randrange(len(data))
        if op < 0.5:
            data[at] = rng.randrange(256)
        elif op < 0.75:
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        else:
            del data[at:at + rng.randint(1, 8)]
    return Broken([bytes(data)], swallows=True, opens=False)


FRAME_MUTATIONS: dict[str, Mutation] = {
    "hpack": _bad_hpack, "stream_zero": _on_stream_zero, "control_on_stream": _control_on_stream,
    "stream_ids": _stream_ids, "oversized_frame": _oversized, "bad_padding": _bad_padding,
    "truncated_frame": _truncated, "window_update": _window, "bad_settings": _bad_settings,
    "continuation": _continuation, "rst_idle": _rst_idle, "after_end_stream": _after_end,
    "trailers_without_end": _trailers_without_end, "many_streams": _many_streams, "rapid_reset": _rapid_reset,
    "priority": _self_dependency, "bad_frame": _bad_preface_frame, "byte_noise": _byte_noise,
}
MUTATIONS = {**HEADER_MUTATIONS, **FRAME_MUTATIONS}
MUTATION_NAMES = sorted(MUTATIONS)


def mutated_stream(rng: random.Random, rid: str, sid: int) -> tuple[Request, bool, int]:
    """A broken request stream: the request, whether what follows may be swallowed, and the last
    stream id it may have touched (a mutation may use a few above its own)."""
    name = rng.choice(MUTATION_NAMES)
    t = H2Template(sid, base_headers(rid))
    broken = MUTATIONS[name](rng, t)
    frames = tuple(broken.frames)
    req = Request(rid, b"".join(frames), Expect.ANY, name, sid=t.sid, frames=frames, opens=broken.opens)
    return req, broken.swallows, max(sid, t.sid) + 2 * 6
