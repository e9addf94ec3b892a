"""HPACK (RFC 7541): header blocks decoded into ``(name, value)`` byte pairs, and encoded from them.

The decoder keeps the peer's dynamic table and refuses, as a connection error, anything that could make
its state disagree with the peer's: an index out of range, a bad Huffman string, an integer past 2^32,
a table size update that is too large or not at the start of a block. It also stops, mid-block, at a
decoded header list larger than the limit the proxy advertised (the HPACK bomb).

The encoder never inserts into the dynamic table: a field is sent as a static-table index when the
static table holds it whole, else as a literal (with the static name index when there is one). That
costs some bytes on the wire and saves the proxy the table bookkeeping; the peer's decoder state stays
empty. Credentials go "never indexed" so that an intermediary after the proxy does not index them.
"""

from __future__ import annotations

from typing import Final

from meshbox.proxy.hpack_huffman import HuffmanError, huffman_decode

Header = tuple[bytes, bytes]

STATIC_TABLE: Final[tuple[Header, ...]] = (
    (b":authority", b""), (b":method", b"GET"), (b":method", b"POST"),
    (b":path", b"/"), (b":path", b"/index.html"), (b":scheme", b"http"),
    (b":scheme", b"https"), (b":status", b"200"), (b":status", b"204"),
    (b":status", b"206"), (b":status", b"304"), (b":status", b"400"),
    (b":status", b"404"), (b":status", b"500"), (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"), (b"accept-language", b""), (b"accept-ranges", b""),
    (b"accept", b""), (b"access-control-allow-origin", b""), (b"age", b""),
    (b"allow", b""), (b"authorization", b""), (b"cache-control", b""),
    (b"content-disposition", b""), (b"content-encoding", b""), (b"content-language", b""),
    (b"content-length", b""), (b"content-location", b""), (b"content-range", b""),
    (b"content-type", b""), (b"cookie", b""), (b"date", b""),
    (b"etag", b""), (b"expect", b""), (b"expires", b""),
    (b"from", b""), (b"host", b""), (b"if-match", b""),
    (b"if-modified-since", b""), (b"if-none-match", b""), (b"if-range", b""),
    (b"if-unmodified-since", b""), (b"last-modified", b""), (b"link", b""),
    (b"location", b""), (b"max-forwards", b""), (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""), (b"range", b""), (b"referer", b""),
    (b"refresh", b""), (b"retry-after", b""), (b"server", b""),
    (b"set-cookie", b""), (b"strict-transport-security", b""), (b"transfer-encoding", b""),
    (b"user-agent", b""), (b"vary", b""), (b"via", b""),
    (b"www-authenticate", b""),
)
_STATIC_COUNT: Final = 61
# The dynamic table size HPACK starts with (SETTINGS_HEADER_TABLE_SIZE's default).
DEFAULT_TABLE_SIZE: Final = 4096
# Per entry, on top of name and value (RFC 7541 4.1); the same overhead counts in the header list size.
ENTRY_OVERHEAD: Final = 32
# Integers past this are refused (no legitimate length, index or size comes near it).
_MAX_INTEGER: Final = 1 << 32


def _name_indexes() -> dict[bytes, int]:
    first: dict[bytes, int] = {}
    for index, (name, _) in enumerate(STATIC_TABLE, 1):
        first.setdefault(name, index)
    return first


def _full_indexes() -> dict[bytes, dict[bytes, int]]:
    by_name: dict[bytes, dict[bytes, int]] = {}
    for index, (name, value) in enumerate(STATIC_TABLE, 1):
        if value:
            by_name.setdefault(name, {})[value] = index
    return by_name


_NAME_INDEX: Final = _name_indexes()
_FULL_INDEX: Final = _full_indexes()
_NEVER_INDEXED: Final = frozenset((b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"))
# Huffman-coded strings already decoded (clients send the same authority, path, content-type ... on every
# request); emptied when full.
_DECODED: Final[dict[bytes, bytes]] = {}
_DECODED_KEPT: Final = 256
# Per field name, the encoded start of a literal field (representation, then the name or its index).
_NAME_PREFIX: Final[dict[bytes, bytes]] = {}
_NAMES_KEPT: Final = 512
# The length byte of a raw string shorter than 127 bytes.
_SHORT_LENGTHS: Final = tuple(bytes((size,)) for size in range(127))
# An indexed field of the static table.
_INDEXED: Final = tuple(bytes((0x80 | index,)) for index in range(_STATIC_COUNT + 1))


class HpackError(ValueError):
    """A header block that cannot be decoded; ``limit`` when it broke the header list size limit."""

    def __init__(self, message: str, limit: bool = False) -> None:
        super().__init__(message)
        self.limit = limit


class HpackDecoder:
    """The receiving side of one connection's header compression."""

    def __init__(self, max_header_list_size: int, max_table_size: int = DEFAULT_TABLE_SIZE) -> None:
        self.max_header_list_size = max_header_list_size
        # The most the peer may make the table (what the proxy advertised), and what it currently allows.
        self.max_table_size = max_table_size
        self.table_size_limit = max_table_size
        # Newest entry last: dynamic index 62 is entries[-1].
        self.entries: list[Header] = []
        self.table_size = 0
        self.pos = 0

    def decode(self, block: bytes) -> list[Header]:
        """The header list in ``block``; HpackError when the block is malformed or over the limit."""
        out: list[Header] = []
        self.pos = 0
        end = len(block)
        total = 0
        limit = self.max_header_list_size
        while self.pos < end:
            first = block[self.pos]
            if first & 0x80:
                field = self._entry(self._integer(block, 7))
            elif first & 0x40:
                index = self._integer(block, 6)
                name = self._entry(index)[0] if index else self._string(block)
                field = (name, self._string(block))
                self._insert(field)
            elif first & 0x20:
                if out:
                    raise HpackError("dynamic table size update after the first field of a block")
                size = self._integer(block, 5)
                if size > self.max_table_size:
                    raise HpackError(f"dynamic table size update to {size}, over the {self.max_table_size} allowed")
                self.table_size_limit = size
                self._evict(0)
                continue
            else:
                index = self._integer(block, 4)
                name = self._entry(index)[0] if index else self._string(block)
                field = (name, self._string(block))
            total += len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
            if total > limit:
                raise HpackError(f"header list larger than {limit} bytes", limit=True)
            out.append(field)
        return out

    def _integer(self, block: bytes, prefix: int) -> int:
        pos = self.pos
        mask = (1 << prefix) - 1
        value = block[pos] & mask
        pos += 1
        if value == mask:
            shift = 0
            while True:
                if pos >= len(block):
                    raise HpackError("integer cut off at the end of the block")
                byte = block[pos]
                pos += 1
                value += (byte & 0x7F) << shift
                if value >= _MAX_INTEGER:
                    raise HpackError("integer too large")
                if not byte & 0x80:
                    break
                shift += 7
        self.pos = pos
        return value

    def _string(self, block: bytes) -> bytes:
        if self.pos >= len(block):
            raise HpackError("string missing at the end of the block")
        huffman = block[self.pos] & 0x80
        length = self._integer(block, 7)
        start = self.pos
        stop = start + length
        if stop > len(block):
            raise HpackError("string longer than the rest of the block")
        self.pos = stop
        coded = block[start:stop]
        if not huffman:
            return coded
        decoded = _DECODED.get(coded)
        if decoded is None:
            try:
                decoded = huffman_decode(coded)
            except HuffmanError as exc:
                raise HpackError(str(exc)) from None
            if len(_DECODED) >= _DECODED_KEPT:
                _DECODED.clear()
            _DECODED[coded] = decoded
        return decoded

    def _entry(self, index: int) -> Header:
        if 0 < index <= _STATIC_COUNT:
            return STATIC_TABLE[index - 1]
        dynamic = index - _STATIC_COUNT
        if index == 0 or dynamic > len(self.entries):
            raise HpackError(f"index {index} is not in the table")
        return self.entries[-dynamic]

    def _insert(self, field: Header) -> None:
        size = len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
        if size > self.table_size_limit:
            # Larger than the whole table: the table empties and the field is not kept (RFC 7541 4.4).
            self.entries.clear()
            self.table_size = 0
            return
        self._evict(size)
        self.entries.append(field)
        self.table_size += size

    def _evict(self, room: int) -> None:
        """Drop the oldest entries until ``room`` more bytes fit under the current size limit."""
        entries = self.entries
        while entries and self.table_size + room > self.table_size_limit:
            name, value = entries.pop(0)
            self.table_size -= len(name) + len(value) + ENTRY_OVERHEAD


def _integer_bytes(first: int, prefix: int, value: int) -> bytes:
    """``value`` as an HPACK integer with a ``prefix``-bit prefix, ``first`` holding the pattern bits."""
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes((first | value,))
    out = bytearray((first | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class HpackEncoder:
    """The sending side: static indexes and raw literals, no dynamic table (see the module's docstring)."""

    def __init__(self) -> None:
        self.size_update_due = False

    def table_size_changed(self) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE changed: the next block starts by sizing the table to 0,
        which every limit allows (RFC 7541 4.2); it stays empty since nothing is inserted."""
        self.size_update_due = True

    def encode(self, headers: list[Header]) -> bytes:
        """One header block for ``headers``."""
        out: list[bytes] = []
        if self.size_update_due:
            self.size_update_due = False
            out.append(b"\x20")
        for name, value in headers:
            values = _FULL_INDEX.get(name)
            if values is not None:
                index = values.get(value, 0)
                if index:
                    out.append(_INDEXED[index])
                    continue
            prefix = _NAME_PREFIX.get(name)
            if prefix is None:
                prefix = _literal_prefix(name)
                if len(_NAME_PREFIX) < _NAMES_KEPT:
                    _NAME_PREFIX[name] = prefix
            out.append(prefix)
            size = len(value)
            out.append(_SHORT_LENGTHS[size] if size < 127 else _integer_bytes(0, 7, size))
            out.append(value)
        return b"".join(out)


def _literal_prefix(name: bytes) -> bytes:
    """The start of a literal field named ``name``: never indexed for credentials, else without indexing;
    the static table's index of the name when it has one, else the name as a raw string."""
    index = _NAME_INDEX.get(name, 0)
    pattern = 0x10 if name in _NEVER_INDEXED else 0
    if index:
        return bytes((pattern | index,)) if index < 15 else bytes((pattern | 15, index - 15))
    return bytes((pattern,)) + _integer_bytes(0, 7, len(name)) + name
