"""The span datagrams a proxy sends its agent: finished spans in a compact text form, no protobuf.

One datagram holds whole spans, one per line (``\\n``). A span is tab-separated: the format version
``1``, the kind (``client`` / ``server``), trace id (32 hex), span id (16 hex), parent span id (16 hex
or empty), start and end (Unix nanoseconds), the name, then attribute name / value pairs. Tabs and
newlines inside values are replaced by spaces when encoding. Written by meshbox-proxy (``encode``),
read by meshbox-agent (``decode``), which turns them into OTLP spans.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

VERSION = b"1"
KINDS = (b"client", b"server")
# Datagrams stay well under the default Unix socket send buffer.
MAX_DATAGRAM = 32768


@dataclass(frozen=True)
class WireSpan:
    """One decoded span."""

    kind: str
    trace_id: bytes
    span_id: bytes
    parent_id: bytes
    start_ns: int
    end_ns: int
    name: str
    attributes: tuple[tuple[str, str], ...]


class SpanWireError(ValueError):
    """A span line that is not in this format (the line, shortened, is in the message)."""


def clean(value: bytes) -> bytes:
    """``value`` with tabs and newlines replaced by spaces."""
    if b"\t" in value or b"\n" in value:
        return value.replace(b"\t", b" ").replace(b"\n", b" ")
    return value


def line_pieces(constants: Sequence[tuple[bytes, bytes]], values: Sequence[tuple[bytes, bytes]],
                name: bytes = b"%s") -> tuple[bytes, ...]:
    """The fixed bytes of a span line, for a writer that sends the same attributes every time: the line is
    ``pieces[0] + v0 + pieces[1] + v1 + ... + v(n-1) + pieces[n]`` (one ``b"".join``), the values ``v``
    being, in order: kind, trace id, span id, parent id, start, end (decimal), the ``%s`` of ``name``
    (e.g. ``%s/*``), then those of ``values`` (key, a pattern with ``%s`` where a value goes, e.g.
    ``%s`` or ``http://%s%s``); the ``constants`` (key, value) are written in. What fills a ``%s`` must
    be free of tabs and newlines (see ``clean``). Same line as ``encode``."""
    pieces = [VERSION + b"\t", b"\t", b"\t", b"\t", b"\t", b"\t"]
    # The bytes since the last value (here: end's tab); every %s closes a piece.
    current = b"\t"
    for literal, last in _split(name):
        current += literal
        if not last:
            pieces.append(current)
            current = b""
    current += b"".join(b"\t%s\t%s" % (k, clean(v)) for k, v in constants)
    for key, pattern in values:
        current += b"\t" + key + b"\t"
        for literal, last in _split(pattern):
            current += literal
            if not last:
                pieces.append(current)
                current = b""
    pieces.append(current + b"\n")
    return tuple(pieces)


def _split(pattern: bytes) -> list[tuple[bytes, bool]]:
    """The literals of ``pattern`` around its ``%s``, each with whether it is the last one."""
    literals = pattern.split(b"%s")
    return [(literal, i == len(literals) - 1) for i, literal in enumerate(literals)]


def encode(kind: bytes, trace_id: bytes, span_id: bytes, parent_id: bytes, start_ns: int, end_ns: int,
           name: bytes, attributes: Sequence[tuple[bytes, bytes]]) -> bytes:
    """One span line (with its ``\\n``)."""
    fields = [VERSION, kind, trace_id, span_id, parent_id, b"%d" % start_ns, b"%d" % end_ns, clean(name)]
    for key, value in attributes:
        fields.append(key)
        fields.append(clean(value))
    return b"\t".join(fields) + b"\n"


def decode(datagram: bytes) -> Iterator[WireSpan]:
    """The spans of one datagram; raises SpanWireError on a line not in this format."""
    for line in datagram.split(b"\n"):
        if not line:
            continue
        fields = line.split(b"\t")
        if len(fields) < 8 or fields[0] != VERSION or fields[1] not in KINDS or len(fields) % 2:
            raise SpanWireError(f"not a version-1 span line: {line[:80]!r}")
        try:
            start_ns, end_ns = int(fields[5]), int(fields[6])
            trace_id, span_id = bytes.fromhex(fields[2].decode()), bytes.fromhex(fields[3].decode())
            parent_id = bytes.fromhex(fields[4].decode())
        except ValueError:
            raise SpanWireError(f"bad id or time in span line: {line[:80]!r}") from None
        if len(trace_id) != 16 or len(span_id) != 8 or len(parent_id) not in (0, 8):
            raise SpanWireError(f"bad id length in span line: {line[:80]!r}")
        rest = fields[8:]
        attributes = tuple((rest[i].decode("latin-1"), rest[i + 1].decode("latin-1")) for i in range(0, len(rest), 2))
        yield WireSpan(fields[1].decode(), trace_id, span_id, parent_id, start_ns, end_ns,
                       fields[7].decode("latin-1"), attributes)
