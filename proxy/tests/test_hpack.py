"""The proxy's HPACK (``meshbox.proxy.hpack``, ``hpack_huffman``) without a network: the RFC 7541
Appendix C examples byte for byte (with the dynamic table after each block), Huffman and whole header
blocks against the ``hpack`` package (the reference peer), and every malformed block it must refuse."""

from __future__ import annotations

import random

import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshbox.proxy.hpack import STATIC_TABLE, HpackDecoder, HpackEncoder, HpackError
from meshbox.proxy.hpack_huffman import HuffmanError, huffman_decode, huffman_encode

Fields = list[tuple[bytes, bytes]]


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def fields(text: str) -> Fields:
    """``name: value`` lines (the name may start with ':') as header fields."""
    out = []
    for line in text.strip().splitlines():
        name, value = line.strip()[1:].split(": ", 1)
        out.append(((line.strip()[0] + name).encode(), value.encode()))
    return out


def table(decoder: HpackDecoder) -> Fields:
    """The decoder's dynamic table, newest entry first (the order RFC 7541 Appendix C prints)."""
    return list(reversed(decoder.entries))


# -- RFC 7541 Appendix C ---------------------------------------------------------------------------

REQUEST_1 = fields("""
    :method: GET
    :scheme: http
    :path: /
    :authority: www.example.com
""")
REQUEST_2 = [*REQUEST_1, (b"cache-control", b"no-cache")]
REQUEST_3 = fields("""
    :method: GET
    :scheme: https
    :path: /index.html
    :authority: www.example.com
    custom-key: custom-value
""")
TABLE_AFTER_REQUEST_1 = [(b":authority", b"www.example.com")]
TABLE_AFTER_REQUEST_2 = [(b"cache-control", b"no-cache"), *TABLE_AFTER_REQUEST_1]
TABLE_AFTER_REQUEST_3 = [(b"custom-key", b"custom-value"), *TABLE_AFTER_REQUEST_2]

RESPONSE_1 = fields("""
    :status: 302
    cache-control: private
    date: Mon, 21 Oct 2013 20:13:21 GMT
    location: https://www.example.com
""")
RESPONSE_2 = [(b":status", b"307"), *RESPONSE_1[1:]]
RESPONSE_3 = fields("""
    :status: 200
    cache-control: private
    date: Mon, 21 Oct 2013 20:13:22 GMT
    location: https://www.example.com
    content-encoding: gzip
    set-cookie: foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1
""")
TABLE_AFTER_RESPONSE_1 = list(reversed(RESPONSE_1))
# :status 307 goes in; the oldest entry (:status 302) goes out to stay within 256 bytes.
TABLE_AFTER_RESPONSE_2 = [(b":status", b"307"), *TABLE_AFTER_RESPONSE_1[:3]]
TABLE_AFTER_RESPONSE_3 = [RESPONSE_3[5], RESPONSE_3[4], RESPONSE_3[2]]

REQUESTS_PLAIN = [
    ("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", REQUEST_1, TABLE_AFTER_REQUEST_1, 57),
    ("8286 84be 5808 6e6f 2d63 6163 6865", REQUEST_2, TABLE_AFTER_REQUEST_2, 110),
    ("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
     REQUEST_3, TABLE_AFTER_REQUEST_3, 164),
]
REQUESTS_HUFFMAN = [
    ("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", REQUEST_1, TABLE_AFTER_REQUEST_1, 57),
    ("8286 84be 5886 a8eb 1064 9cbf", REQUEST_2, TABLE_AFTER_REQUEST_2, 110),
    ("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf", REQUEST_3, TABLE_AFTER_REQUEST_3, 164),
]
RESPONSES_PLAIN = [
    ("4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32"
     "3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
     RESPONSE_1, TABLE_AFTER_RESPONSE_1, 222),
    ("4803 3330 37c1 c0bf", RESPONSE_2, TABLE_AFTER_RESPONSE_2, 222),
    ("88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970"
     "7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61"
     "6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
     RESPONSE_3, TABLE_AFTER_RESPONSE_3, 215),
]
RESPONSES_HUFFMAN = [
    ("4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad"
     "1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
     RESPONSE_1, TABLE_AFTER_RESPONSE_1, 222),
    ("4883 640e ffc1 c0bf", RESPONSE_2, TABLE_AFTER_RESPONSE_2, 222),
    ("88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2"
     "e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
     RESPONSE_3, TABLE_AFTER_RESPONSE_3, 215),
]


@pytest.mark.parametrize(("block", "expected", "dynamic"), [
    ("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
     [(b"custom-key", b"custom-header")], [(b"custom-key", b"custom-header")]),
    ("040c 2f73 616d 706c 652f 7061 7468", [(b":path", b"/sample/path")], []),
    ("1008 7061 7373 776f 7264 0673 6563 7265 74", [(b"password", b"secret")], []),
    ("82", [(b":method", b"GET")], []),
], ids=["C.2.1-with-indexing", "C.2.2-without-indexing", "C.2.3-never-indexed", "C.2.4-indexed"])
def test_rfc7541_c2_single_fields(block: str, expected: Fields, dynamic: Fields) -> None:
    decoder = HpackDecoder(65536)
    assert decoder.decode(unhex(block)) == expected
    assert table(decoder) == dynamic
    assert decoder.table_size == sum(len(n) + len(v) + 32 for n, v in dynamic)


@pytest.mark.parametrize(("examples", "table_size"), [
    (REQUESTS_PLAIN, 4096), (REQUESTS_HUFFMAN, 4096), (RESPONSES_PLAIN, 256), (RESPONSES_HUFFMAN, 256),
], ids=["C.3-requests", "C.4-requests-huffman", "C.5-responses-256", "C.6-responses-huffman-256"])
def test_rfc7541_block_sequences(examples: list[tuple[str, Fields, Fields, int]], table_size: int) -> None:
    """Each sequence on one decoder: the fields, then the dynamic table and its size after each block
    (C.5 and C.6 evict with their 256-byte table)."""
    decoder = HpackDecoder(65536, max_table_size=table_size)
    for block, expected, dynamic, size in examples:
        assert decoder.decode(unhex(block)) == expected
        assert table(decoder) == dynamic
        assert decoder.table_size == size


def test_rfc7541_huffman_strings() -> None:
    """The Huffman strings of Appendix C, both ways."""
    for coded, text in [("f1e3 c2e5 f23a 6ba0 ab90 f4ff", b"www.example.com"), ("a8eb 1064 9cbf", b"no-cache"),
                        ("25a8 49e9 5ba9 7d7f", b"custom-key"), ("6402", b"302"), ("aec3 771a 4b", b"private"),
                        ("9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3", b"https://www.example.com")]:
        assert huffman_decode(unhex(coded)) == text
        assert huffman_encode(text) == unhex(coded)


# -- Huffman against the reference ---------------------------------------------------------------

def test_huffman_round_trip_against_hpack() -> None:
    """Random byte strings (every byte value, lengths 0..300): our code and hpack's give the same bits,
    and each side decodes the other's."""
    reference = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
    rng = random.Random(7541)
    samples = [bytes(range(256)), b""] + [rng.randbytes(rng.randrange(300)) for _ in range(500)]
    for data in samples:
        ours = huffman_encode(data)
        assert ours == reference.encode(data)
        assert huffman_decode(ours) == data
        assert decode_huffman(ours) == data


# -- whole blocks against the reference ----------------------------------------------------------

_NAMES = st.one_of(
    st.sampled_from(sorted({name for name, _ in STATIC_TABLE})),
    st.binary(min_size=1, max_size=20).map(lambda b: bytes(0x61 + c % 26 for c in b)),
)
_VALUES = st.one_of(
    st.sampled_from(sorted({value for _, value in STATIC_TABLE})),
    st.binary(max_size=60),
    st.binary(min_size=120, max_size=300),
)
_FIELD = st.tuples(_NAMES, _VALUES, st.booleans())
_BLOCKS = st.lists(st.lists(_FIELD, max_size=12), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=_BLOCKS, sizes=st.lists(st.sampled_from([None, 0, 64, 256, 1024, 4096]), min_size=6, max_size=6),
       huffman=st.booleans())
def test_reference_encoder_to_our_decoder(blocks: list[list[tuple[bytes, bytes, bool]]], sizes: list[int | None],
                                          huffman: bool) -> None:
    """hpack.Encoder (Huffman or not, inserting into its dynamic table, never-indexed fields, its table
    resized between blocks) → our decoder, block after block: the same fields, the same table."""
    encoder = hpack.Encoder()
    reference = hpack.Decoder()
    ours = HpackDecoder(1 << 20)
    for block_fields, size in zip(blocks, sizes, strict=False):
        if size is not None:
            encoder.header_table_size = size
        block = encoder.encode(block_fields, huffman=huffman)
        assert ours.decode(block) == [(name, value) for name, value, _ in block_fields]
        reference.decode(block, raw=True)
        assert table(ours) == list(reference.header_table.dynamic_entries)
        assert ours.table_size == sum(len(n) + len(v) + 32 for n, v in reference.header_table.dynamic_entries)


_OUR_FIELD = st.one_of(
    st.sampled_from(STATIC_TABLE),
    st.tuples(st.sampled_from([b"authorization", b"cookie", b"set-cookie", b"proxy-authorization"]), _VALUES),
    st.tuples(_NAMES, _VALUES),
)


@settings(max_examples=150, deadline=None)
@given(blocks=st.lists(st.lists(_OUR_FIELD, max_size=12), min_size=1, max_size=5),
       resize=st.lists(st.booleans(), min_size=5, max_size=5))
def test_our_encoder_to_reference_decoder(blocks: list[Fields], resize: list[bool]) -> None:
    """Our encoder → hpack.Decoder: the same fields, whatever static entries, credentials and long values
    they hold; after table_size_changed() the next block starts with a size update hpack accepts."""
    encoder = HpackEncoder()
    reference = hpack.Decoder()
    for block_fields, changed in zip(blocks, resize, strict=False):
        if changed:
            encoder.table_size_changed()
        block = encoder.encode(block_fields)
        if changed:
            assert block[:1] == b"\x20"
        assert [tuple(f) for f in reference.decode(block, raw=True)] == block_fields
        # Nothing is ever inserted: the peer's table stays empty.
        assert len(reference.header_table.dynamic_entries) == 0


def test_our_encoder_marks_credentials_never_indexed() -> None:
    decoded = hpack.Decoder().decode(HpackEncoder().encode([(b"authorization", b"Bearer x"), (b"x-y", b"z"),
                                                            (b"cookie", b"a=b")]), raw=True)
    assert [f.indexable for f in decoded] == [False, True, False]


def test_table_size_update_is_applied_before_the_fields() -> None:
    """A size update to 0 at the start of a block empties our table; 0 then back up is allowed too."""
    decoder = HpackDecoder(65536)
    decoder.decode(unhex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"))
    assert decoder.table_size == 55
    assert decoder.decode(b"\x20\x3f\xe1\x1f\x82") == [(b":method", b"GET")]
    assert decoder.entries == []
    assert decoder.table_size_limit == 4096


# -- refusals ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("block", "message"), [
    (b"\x80", "index 0 is not in the table"),
    (b"\xbe", "index 62 is not in the table"),
    (b"\x7f\x00", "index 63 is not in the table"),
    (b"\x0f\x32\x00", "index 65 is not in the table"),
    (b"\xff\xff\xff\xff\xff\x0f", "integer too large"),
    (b"\x3f\xff\xff\xff\xff\xff\xff\x7f", "integer too large"),
    (b"\xff\x80", "integer cut off"),
    (b"\x1f", "integer cut off"),
    (b"\x00", "string missing"),
    (b"\x00\x01a", "string missing"),
    (b"\x00\x05ab", "string longer than the rest"),
    (b"\x40\x7f\x10abc", "string longer than the rest"),
    (b"\x3f\xe2\x1f", "size update to 4097, over the 4096 allowed"),
    (b"\x82\x20", "size update after the first field"),
    (b"\x00\x81\x00\x00", "bad padding"),
    (b"\x00\x81\xff\x00", "bad padding"),
    (b"\x00\x84\xff\xff\xff\xff\x00", "EOS inside"),
])
def test_malformed_blocks_are_refused(block: bytes, message: str) -> None:
    """Each malformed block raises HpackError saying what is wrong (a COMPRESSION_ERROR, not a limit)."""
    with pytest.raises(HpackError, match=message) as info:
        HpackDecoder(65536).decode(block)
    assert not info.value.limit


def test_size_update_under_a_smaller_maximum() -> None:
    with pytest.raises(HpackError, match="size update to 257, over the 256 allowed"):
        HpackDecoder(65536, max_table_size=256).decode(b"\x3f\xe2\x01")


def test_huffman_errors_name_the_problem() -> None:
    with pytest.raises(HuffmanError, match="EOS"):
        huffman_decode(b"\xff\xff\xff\xfc")
    with pytest.raises(HuffmanError, match="padding"):
        huffman_decode(huffman_encode(b"a") + b"\xff")


def test_header_list_over_the_limit() -> None:
    """The decoded list is counted as RFC 9113 counts it (name + value + 32 per field): at the limit it
    passes, one byte over it is refused with ``limit`` set — even when the block itself is tiny."""
    block = HpackEncoder().encode([(b"x-a", b"1" * 65)])
    assert HpackDecoder(100).decode(block) == [(b"x-a", b"1" * 65)]
    with pytest.raises(HpackError, match="header list larger than 99 bytes") as info:
        HpackDecoder(99).decode(block)
    assert info.value.limit
    # The bomb: one 4000-byte entry inserted, then indexed 50 times in a 100-byte block.
    decoder = HpackDecoder(64 * 1024)
    bomb = hpack.Encoder().encode([(b"x-bomb", b"b" * 4000)], huffman=False) + b"\xbe" * 50
    with pytest.raises(HpackError, match="header list larger than 65536 bytes") as info:
        decoder.decode(bomb)
    assert info.value.limit
