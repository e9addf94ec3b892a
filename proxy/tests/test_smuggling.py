"""Raw-socket request smuggling suite: each hostile shape is refused with the right status, the
connection is closed, and nothing reaches the backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CODECS = ["httptools", "h11"]
H = b"host: svc\r\n"
SHAPES: dict[str, tuple[bytes, int]] = {
    "cl_and_te": (b"POST / HTTP/1.1\r\n" + H + b"content-length: 4\r\ntransfer-encoding: chunked\r\n\r\n"
                  b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: svc\r\n\r\n", 400),
    "te_and_cl": (b"POST / HTTP/1.1\r\n" + H + b"transfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n"
                  b"0\r\n\r\n", 400),
    "duplicate_cl_same": (b"POST / HTTP/1.1\r\n" + H + b"content-length: 3\r\ncontent-length: 3\r\n\r\nabc", 400),
    "duplicate_cl_differ": (b"POST / HTTP/1.1\r\n" + H + b"content-length: 3\r\ncontent-length: 30\r\n\r\nabc", 400),
    "cl_list": (b"POST / HTTP/1.1\r\n" + H + b"content-length: 3, 3\r\n\r\nabc", 400),
    "cl_plus_sign": (b"POST / HTTP/1.1\r\n" + H + b"content-length: +3\r\n\r\nabc", 400),
    "cl_negative": (b"POST / HTTP/1.1\r\n" + H + b"content-length: -1\r\n\r\n", 400),
    "cl_hex": (b"POST / HTTP/1.1\r\n" + H + b"content-length: 0x3\r\n\r\nabc", 400),
    "te_identity": (b"POST / HTTP/1.1\r\n" + H + b"transfer-encoding: identity\r\n\r\nabc", 400),
    "te_chunked_then_gzip": (b"POST / HTTP/1.1\r\n" + H + b"transfer-encoding: chunked, gzip\r\n\r\n", 400),
    "te_duplicate": (b"POST / HTTP/1.1\r\n" + H + b"transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n"
                     b"0\r\n\r\n", 400),
    "te_space_before_colon": (b"POST / HTTP/1.1\r\n" + H + b"transfer-encoding : chunked\r\n\r\n0\r\n\r\n", 400),
    "te_in_http10": (b"POST / HTTP/1.0\r\n" + H + b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "bare_lf_request_line": (b"GET / HTTP/1.1\n" + H + b"\r\n", 400),
    "bare_lf_headers": (b"GET / HTTP/1.1\r\nhost: svc\nx-a: b\r\n\r\n", 400),
    "bare_cr": (b"GET / HTTP/1.1\r\nhost: svc\rx-a: b\r\n\r\n", 400),
    "obs_fold": (b"GET / HTTP/1.1\r\n" + H + b"x-a: b\r\n c\r\n\r\n", 400),
    "bad_chunk_size": (b"POST / HTTP/1.1\r\n" + H + b"transfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    "chunk_size_bare_lf": (b"POST / HTTP/1.1\r\n" + H + b"transfer-encoding: chunked\r\n\r\n3\nabc\n0\n\n", 400),
    "chunk_data_overrun": (b"POST / HTTP/1.1\r\n" + H + b"transfer-encoding: chunked\r\n\r\n3\r\nabcXX\r\n0\r\n\r\n",
                           400),
    "missing_host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two_hosts": (b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400),
    "nul_in_header": (b"GET / HTTP/1.1\r\n" + H + b"x-a: b\x00c\r\n\r\n", 400),
    "space_in_header_name": (b"GET / HTTP/1.1\r\n" + H + b"x a: b\r\n\r\n", 400),
    # RFC 9112: a well-formed version we don't speak is a 505; a request line without one is malformed.
    "http2_version": (b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    "http3_version": (b"GET / HTTP/3.0\r\n" + H + b"\r\n", 505),
    "http12_version": (b"GET / HTTP/1.2\r\n" + H + b"\r\n", 505),
    "no_version": (b"GET //1.1\r\n" + H + b"\r\n", 400),
    "http09_request_line": (b"GET /\r\n" + H + b"\r\n", 400),
    "version_bad_name": (b"GET / HTTPS/1.1\r\n" + H + b"\r\n", 400),
    "upgrade_with_body": (b"POST / HTTP/1.1\r\n" + H + b"connection: upgrade\r\nupgrade: x\r\ncontent-length: 9\r\n\r\n"
                          b"hello", 400),
    "upgrade_with_chunked_body": (b"POST / HTTP/1.1\r\n" + H + b"connection: upgrade\r\nupgrade: x\r\n"
                                  b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
    "absolute_form_no_authority": (b"GET http:///x HTTP/1.1\r\n" + H + b"\r\n", 400),
    "absolute_form_userinfo": (b"GET http://u@svc/x HTTP/1.1\r\n" + H + b"\r\n", 400),
    "unknown_method": (b"FROB / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "connect_method": (b"CONNECT svc:443 HTTP/1.1\r\n" + H + b"\r\n", 405),
    "oversized_header": (b"GET / HTTP/1.1\r\n" + H + b"x-big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    "too_many_headers": (b"GET / HTTP/1.1\r\n" + H + b"".join(b"x-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431),
    "absolute_garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_smuggling_shape_is_refused_and_closed(kit: Any, tmp_path: Path, codec: str, shape: str) -> None:
    data, status = SHAPES[shape]

    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path, codec=codec) as p:
            received, closed = await kit.raw_exchange(port, data)
            lines = await p.wait_log(1)
        assert received.startswith(b"HTTP/1.1 %d " % status), received[:200]
        assert b"connection: close" in received.lower()
        assert received.count(b"HTTP/1.") == 1
        assert closed
        assert backend.requests == []
        assert " DPE " in lines[-1]

    kit.run(main())


@pytest.mark.parametrize("codec", CODECS)
def test_valid_request_before_a_bad_one_is_still_answered(kit: Any, tmp_path: Path, codec: str) -> None:
    async def main() -> None:
        backend = await kit.Backend().start()
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [backend.port]}), tmp_path, codec=codec):
            received, closed = await kit.raw_exchange(
                port, b"GET /ok HTTP/1.1\r\nhost: svc\r\n\r\nGET /bad HTTP/1.1\r\nhost: svc\nx: y\r\n\r\n")
        assert received.startswith(b"HTTP/1.1 200 ")
        assert b"HTTP/1.1 400 " in received and closed
        assert [r.target for r in backend.requests] == [b"/ok"]

    kit.run(main())
