"""Seeded HTTP/1.1 requests: well-formed variants (each names the feature it exercises) and breaking
mutations of them (line, header, framing, chunk, smuggling and raw byte mutations)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

from .hostile_responses import HOSTILE
from .wire import Expect, Request, Template

HOST = b"svc"
HOSTILE_KINDS = sorted(HOSTILE)
# Header names a client may list in Connection; the mesh must keep framing, Host and its own headers.
CONNECTION_TOKENS = [b"keep-alive", b"te", b"upgrade", b"x-fz-a", b"content-length", b"transfer-encoding",
                     b"host", b"x-request-id", b"traceparent", b"close"]
INTERESTING = [b"\x00", b"\r", b"\n", b" ", b":", b"\t", b"\x7f", b"\xff", b"A", b"\x0b", b";", b","]
TOKENS = [b"\r\n", b"\n", b"\r", b" ", b":", b"\r\n\r\n", b"0\r\n\r\n", b"transfer-encoding: chunked\r\n",
          b"content-length: 5\r\n", b"\r\nhost: svc\r\n"]


def bait(rid: str) -> bytes:
    """A complete request hidden in a body: if the backend ever receives it as a request of its own
    that the proxy did not handle as one, it was smuggled."""
    return b"GET /v/bait HTTP/1.1\r\nhost: svc\r\nx-request-id: %s\r\n\r\n" % rid.encode()


def _body(rng: random.Random, rid: str, embedded: list[str]) -> bytes:
    roll = rng.random()
    if roll < 0.25:
        embedded.append(rid + "s")
        return bait(rid + "s")
    if roll < 0.3:
        return b""
    return rng.randbytes(rng.choice((1, 10, 100, 1000, 3000)))


def _chunks(rng: random.Random, body: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(body)), min(len(body) - 1, rng.randint(0, 4)))) if len(body) > 1 else []
    edges = [0, *cuts, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges)]


def valid_request(rng: random.Random, rid: str) -> tuple[Template, Request]:
    """A well-formed request with one randomly chosen variant, and what the client may demand for it."""
    t = Template(target=b"/v/%s" % rid.encode(), headers=[(b"host", HOST), (b"x-request-id", rid.encode())])
    expect, head_only, may_close, last = Expect.BACKEND, False, False, False
    embedded: list[str] = []
    variant = rng.choices(VALID_VARIANTS, VALID_WEIGHTS)[0]
    if variant == "get":
        t.headers.append((b"user-agent", b"fz"))
    elif variant == "head":
        t.method, head_only = b"HEAD", True
    elif variant in ("post_length", "post_chunked", "expect_continue"):
        t.method = rng.choice((b"POST", b"PUT", b"PATCH", b"DELETE"))
        t.body = _body(rng, rid, embedded)
        t.framing = "chunked" if variant == "post_chunked" else "length"
        if t.framing == "chunked":
            t.chunks = _chunks(rng, t.body)
            if rng.random() < 0.3:
                t.trailers = [(b"x-trailer", b"1")]
        if variant == "expect_continue":
            t.headers.append((b"expect", b"100-continue"))
    elif variant == "big_body":  # more than the proxy's head limit in one read (issue #18 D4)
        t.method, t.framing, t.body = b"POST", "length", b"b" * rng.choice((61_500, 102_400))
    elif variant == "connection_tokens":
        t.method = b"POST"
        t.body = _body(rng, rid, embedded)
        t.framing = rng.choice(("length", "chunked"))
        t.chunks = _chunks(rng, t.body)
        names = rng.sample(CONNECTION_TOKENS, rng.randint(1, 3))
        t.headers.append((b"connection", b", ".join(names)))
        t.headers += [(b"x-fz-a", b"1"), (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
        expect = Expect.RESPONSE  # refusing a Connection that names a framing header is allowed
        may_close = last = b"close" in names
    elif variant == "host_port":
        t.headers[0] = (b"host", b"svc:80")
    elif variant == "unknown_host":
        t.headers[0] = (b"host", b"unknown.example")
        expect = Expect.LOCAL
    elif variant == "asterisk":  # issue #18 D6
        t.method = rng.choice((b"GET", b"OPTIONS"))
        t.target = b"*"
        expect = Expect.LOCAL if t.method == b"GET" else Expect.RESPONSE
    elif variant == "absolute_form":
        t.target = b"http://svc/v/%s" % rid.encode()
        expect = Expect.RESPONSE
    elif variant == "http10":
        t.version = b"HTTP/1.0"
        if rng.random() < 0.5:
            t.headers.append((b"connection", b"keep-alive"))
        else:
            may_close = last = True
    elif variant == "close":
        t.headers.append((b"connection", b"close"))
        may_close = last = True
    elif variant == "hostile":
        t.target = b"/h/%s/%s" % (rng.choice(HOSTILE_KINDS).encode(), rid.encode())
        expect, may_close = Expect.HOSTILE, True
    elif variant == "many_headers":
        t.headers += [(b"x-fz-%d" % i, b"v" * rng.randint(0, 40)) for i in range(rng.randint(20, 90))]
    elif variant == "big_head":
        t.headers.append((b"x-big", b"h" * rng.randint(8_000, 30_000)))
    elif variant == "odd_spacing":
        t.headers += [(b"X-Fz-Mixed", b"\t v \t"), (b"x-empty", b""), (b"x-obs-text", b"caf\xe9")]
    elif variant == "long_target":
        t.target += b"?" + b"q=%25%00x&" * rng.randint(10, 400)
    elif variant == "upgrade_refused":  # the backend answers 200, so the connection stays HTTP
        t.headers += [(b"connection", b"upgrade"), (b"upgrade", b"fz-proto")]
        expect = Expect.RESPONSE
    if expect is Expect.BACKEND and rng.random() < 0.02:
        t.headers.append((b"connection", b"keep-alive"))
    data = t.serialize()
    return t, Request(rid, data, expect, "valid:" + variant, head_only=head_only, may_close=may_close, last=last,
                      embedded=tuple(embedded))


VALID_VARIANTS_WEIGHTED = {
    "get": 30, "head": 4, "post_length": 12, "post_chunked": 8, "expect_continue": 2, "big_body": 0.5,
    "connection_tokens": 4, "host_port": 2, "unknown_host": 2, "asterisk": 1.5, "absolute_form": 1.5,
    "http10": 2, "close": 2, "hostile": 6, "many_headers": 2, "big_head": 1, "odd_spacing": 2, "long_target": 1,
    "upgrade_refused": 1,
}
VALID_VARIANTS = list(VALID_VARIANTS_WEIGHTED)
VALID_WEIGHTS = list(VALID_VARIANTS_WEIGHTED.values())


# -- breaking mutations: each takes a copy of a valid template and returns bytes for the wire ---------
Mutation = Callable[[random.Random, Template], bytes]


def _line(method: bytes | None = None, target: bytes | None = None, version: bytes | None = None) -> Mutation:
    def mutate(rng: random.Random, t: Template) -> bytes:
        t.method = t.method if method is None else method
        t.target = t.target if target is None else target
        t.version = t.version if version is None else version
        return t.serialize()
    return mutate


def _line_ends(end: bytes) -> Mutation:
    return lambda rng, t: t.head(end) + t.payload()


def _header(name: bytes, value: bytes, *, replace_host: bool = False) -> Mutation:
    def mutate(rng: random.Random, t: Template) -> bytes:
        if replace_host:
            t.headers = [(n, v) for n, v in t.headers if n != b"host"]
        t.headers.insert(rng.randint(0, len(t.headers)), (name, value))
        return t.serialize()
    return mutate


def _raw_header(line: bytes) -> Mutation:
    def mutate(rng: random.Random, t: Template) -> bytes:
        head = t.head()
        at = head.index(b"\r\n") + 2
        return head[:at] + line + b"\r\n" + head[at:] + t.payload()
    return mutate


def _framed(headers: list[bytes], body: bytes | None = None) -> Mutation:
    """Replace the framing with the given header lines; the body defaults to bait behind a small chunk."""
    def mutate(rng: random.Random, t: Template) -> bytes:
        t.framing = "none"
        t.method = b"POST"
        payload = body if body is not None else b"0\r\n\r\n" + bait(_rid(t) + "s")
        return t.head()[:-2] + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + payload
    return mutate


def _chunked_payload(payload: bytes) -> Mutation:
    def mutate(rng: random.Random, t: Template) -> bytes:
        t.method, t.framing = b"POST", "none"
        return t.head()[:-2] + b"transfer-encoding: chunked\r\n\r\n" + payload
    return mutate


def _rid(t: Template) -> str:
    return next((v.decode("latin-1") for n, v in t.headers if n == b"x-request-id"), "fz-none")


def _flip(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        out[rng.randrange(len(out))] = rng.choice(INTERESTING)[0]
    return bytes(out)


def _insert(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.choice(TOKENS) + data[at:]


def _delete(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + data[at + rng.randint(1, 8):]


def _truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(1, len(data))]


def _duplicate(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + data[at:at + rng.randint(1, 30)] + data[at:]


RawMutation = Callable[[random.Random, bytes], bytes]
RAW_MUTATIONS: dict[str, RawMutation] = {
    "flip": _flip, "insert": _insert, "delete": _delete, "truncate": _truncate, "duplicate_span": _duplicate,
}


def _on_bytes(raw: RawMutation) -> Mutation:
    return lambda rng, t: raw(rng, t.serialize())


def _missing_host(rng: random.Random, t: Template) -> bytes:
    t.headers = [(n, v) for n, v in t.headers if n != b"host"]
    return t.serialize()


def _connection_cl(rng: random.Random, t: Template) -> bytes:
    """Issue #18 D1: Connection names Content-Length, and the body is a complete request."""
    hidden = bait(_rid(t) + "s")
    return _framed([b"connection: content-length", b"content-length: %d" % len(hidden)], hidden)(rng, t)


MUTATIONS: dict[str, Mutation] = {
    # request line
    "method_lower": _line(method=b"get"),
    "method_unknown": _line(method=b"FROB"),
    "method_empty": _line(method=b""),
    "method_long": _line(method=b"A" * 1000),
    "method_connect": _line(method=b"CONNECT", target=b"svc:443"),
    "target_space": _line(target=b"/a b"),
    "target_ctl": _line(target=b"/a\x01b"),
    "target_empty": _line(target=b""),
    "target_double_slash": _line(target=b"//1.1"),
    "target_oversize": _line(target=b"/" + b"t" * 70_000),
    "target_fragment": _line(target=b"/v/a#frag"),
    "version_12": _line(version=b"HTTP/1.2"),
    "version_20": _line(version=b"HTTP/2.0"),
    "version_lower": _line(version=b"http/1.1"),
    "version_space": _line(version=b"HTTP/1.1 "),
    "version_short": _line(version=b"HTTP/1"),
    "version_long": _line(version=b"HTTP/11.1"),
    "version_09": _line(version=b"HTTP/0.9"),
    "version_missing": lambda rng, t: b"GET /\r\n\r\n",
    "bare_lf": _line_ends(b"\n"),
    "bare_cr": _line_ends(b"\r"),
    "cr_cr_lf": _line_ends(b"\r\r\n"),
    "leading_garbage": lambda rng, t: b"\x00\x01" + t.serialize(),
    "tls_hello": lambda rng, t: b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + rng.randbytes(32),
    # headers
    "space_before_colon": _raw_header(b"x-a : b"),
    "no_colon": _raw_header(b"x-a b"),
    "empty_name": _raw_header(b": b"),
    "space_in_name": _raw_header(b"x a: b"),
    "colon_in_name": _raw_header(b"x:a: b"),
    "nul_in_value": _raw_header(b"x-a: b\x00c"),
    "ctl_in_value": _raw_header(b"x-a: b\x01c"),
    "cr_in_value": _raw_header(b"x-a: b\rc"),
    "lf_in_value": _raw_header(b"x-a: b\nc"),
    "obs_fold": _raw_header(b"x-a: b\r\n c"),
    "non_ascii_name": _raw_header(b"x-\xc3\xa9: b"),
    "duplicate_host": _header(b"host", b"other"),
    "missing_host": _missing_host,
    "host_space": _header(b"host", b"s vc", replace_host=True),
    "host_userinfo": _header(b"host", b"svc@evil", replace_host=True),
    "host_empty": _header(b"host", b"", replace_host=True),
    "header_oversize": _header(b"x-big", b"a" * 70_000),
    "too_many_headers": lambda rng, t: t.head()[:-2] + b"".join(b"x-%d: 1\r\n" % i for i in range(150)) + b"\r\n",
    # framing and smuggling shapes (the body hides a bait request where a parser could see one)
    "cl_te": _framed([b"content-length: 5", b"transfer-encoding: chunked"]),
    "te_cl": _framed([b"transfer-encoding: chunked", b"content-length: 5"]),
    "cl_dup_same": _framed([b"content-length: 5", b"content-length: 5"], b"hello"),
    "cl_dup_differ": _framed([b"content-length: 5", b"content-length: 50"], b"hello"),
    "cl_list": _framed([b"content-length: 5, 5"], b"hello"),
    "cl_plus": _framed([b"content-length: +5"], b"hello"),
    "cl_negative": _framed([b"content-length: -5"], b"hello"),
    "cl_hex": _framed([b"content-length: 0x5"], b"hello"),
    "cl_inner_space": _framed([b"content-length: 1 0"], b"helloworld"),
    "cl_leading_zeros": _framed([b"content-length: 0005"], b"hello"),
    "cl_overflow": _framed([b"content-length: 99999999999999999999999"], b"hello"),
    "cl_too_long": _framed([b"content-length: 50"], b"hello"),
    "cl_too_short": _framed([b"content-length: 1"], b"hello"),
    "cl_zero_with_bait": _framed([b"content-length: 0"]),
    "te_identity": _framed([b"transfer-encoding: identity"], b"hello"),
    "te_chunked_gzip": _framed([b"transfer-encoding: chunked, gzip"]),
    "te_gzip_chunked": _framed([b"transfer-encoding: gzip, chunked"]),
    "te_twice": _framed([b"transfer-encoding: chunked", b"transfer-encoding: chunked"]),
    "te_space_before_colon": _framed([b"transfer-encoding : chunked"]),
    "te_capital": _framed([b"Transfer-Encoding: Chunked"]),
    "te_padded": _framed([b"transfer-encoding:  chunked  "]),
    "te_vtab": _framed([b"transfer-encoding: \x0bchunked"]),
    "te_xchunked": _framed([b"transfer-encoding: xchunked"]),
    "te_quoted": _framed([b'transfer-encoding: "chunked"']),
    "te_obs_fold": _framed([b"transfer-encoding:\r\n chunked"]),
    "te_http10": lambda rng, t: _framed([b"transfer-encoding: chunked"])(rng, _with_version(t, b"HTTP/1.0")),
    "connection_cl": _connection_cl,
    "connection_te": _framed([b"connection: transfer-encoding", b"transfer-encoding: chunked"]),
    # chunk framing
    "chunk_bad_size": _chunked_payload(b"zz\r\nabc\r\n0\r\n\r\n"),
    "chunk_size_overflow": _chunked_payload(b"fffffffffffffffffff\r\nabc\r\n0\r\n\r\n"),
    "chunk_negative": _chunked_payload(b"-3\r\nabc\r\n0\r\n\r\n"),
    "chunk_size_space": _chunked_payload(b"3 \r\nabc\r\n0\r\n\r\n"),
    "chunk_extension": _chunked_payload(b"3;name=value\r\nabc\r\n0\r\n\r\n"),
    "chunk_extension_bad": _chunked_payload(b"3;\x00\r\nabc\r\n0\r\n\r\n"),
    "chunk_missing_crlf": _chunked_payload(b"3\r\nabc0\r\n\r\n"),
    "chunk_bare_lf": _chunked_payload(b"3\nabc\n0\n\n"),
    "chunk_overrun": _chunked_payload(b"3\r\nabcXX\r\n0\r\n\r\n"),
    "chunk_leading_zeros": _chunked_payload(b"0003\r\nabc\r\n0\r\n\r\n"),
    "chunk_no_last": _chunked_payload(b"3\r\nabc\r\n"),
    "trailer_no_colon": _chunked_payload(b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n"),
    "trailer_framing": _chunked_payload(b"3\r\nabc\r\n0\r\ncontent-length: 40\r\n\r\n"),
    "chunk_bait": lambda rng, t: _chunked_payload(b"%x\r\n%s\r\n0\r\n\r\n" % (
        len(bait(_rid(t) + "s")), bait(_rid(t) + "s")))(rng, t),
    # raw bytes
    **{name: _on_bytes(raw) for name, raw in RAW_MUTATIONS.items()},
}
MUTATION_NAMES = sorted(MUTATIONS)
BAITED = {"cl_te", "te_cl", "cl_zero_with_bait", "te_chunked_gzip", "te_gzip_chunked", "te_twice",
          "te_space_before_colon", "te_capital", "te_padded", "te_vtab", "te_xchunked", "te_quoted", "te_obs_fold",
          "te_http10", "connection_cl", "connection_te", "chunk_bait"}


def _with_version(t: Template, version: bytes) -> Template:
    t.version = version
    return t


def mutated_request(rng: random.Random, rid: str) -> Request:
    """A request broken by one mutation (sometimes two), which the client must never see answered
    as another request, nor forwarded in pieces the proxy did not parse as requests."""
    template, _ = valid_request(rng, rid)
    name = rng.choice(MUTATION_NAMES)
    data = MUTATIONS[name](rng, template.copy())
    if rng.random() < 0.1 and data:
        second = rng.choice(sorted(RAW_MUTATIONS))
        name += "+" + second
        data = RAW_MUTATIONS[second](rng, data) or data
    embedded = (rid + "s",) if name.split("+")[0] in BAITED or b"x-request-id: %ss" % rid.encode() in data else ()
    return Request(rid, data, Expect.ANY, name, head_only=data.startswith(b"HEAD "), may_close=True,
                   embedded=embedded)
