"""Metadata exchange for TCP between two meshbox sidecars, over mutual TLS only.

HTTP carries the peer's metadata in headers (peer_metadata); a TCP stream has no place for it, so the
two proxies add one, as Istio does with its ``istio-peer-exchange`` ALPN: the client sidecar's TCP
connections offer the ALPN protocol :data:`ALPN`, the inbound side accepts it, and only when the
handshake negotiated it does each side write a preamble before any byte of the app, and read and strip
the other's before passing bytes on. The preamble is ``MBPX``, a version byte (1), a 4-byte big-endian
length (at most :data:`MAX_STRUCT`) and that many bytes of the Struct peer_metadata writes (empty when
the sender does not know its own workload). Bytes of a connection that did not negotiate the ALPN are
never read as metadata. A preamble with another magic or version, too long, cut short, or whose Struct
does not decode ends the connection (counted as ``peer_exchange_malformed``) before anything of it is
forwarded.
"""

from __future__ import annotations

import asyncio
from typing import Any

from meshbox.proxy.peer_metadata import MalformedMetadata, Peer, parse_struct

ALPN = "meshbox-peer-exchange"
MAGIC = b"MBPX"
VERSION = 1
HEADER_SIZE = len(MAGIC) + 1 + 4
MAX_STRUCT = 4096


class MalformedPreamble(ValueError):
    """The peer's preamble is not one this proxy writes (the message says what is wrong)."""


def negotiated(transport: asyncio.BaseTransport) -> bool:
    """Whether ``transport`` is a TLS connection whose handshake chose :data:`ALPN`."""
    ssl_object: Any = transport.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == ALPN


def preamble(struct: bytes) -> bytes:
    """The preamble carrying ``struct`` (a serialized metadata Struct, possibly empty)."""
    if len(struct) > MAX_STRUCT:
        raise ValueError(f"metadata of {len(struct)} bytes is over {MAX_STRUCT}")
    return MAGIC + bytes((VERSION,)) + len(struct).to_bytes(4, "big") + struct


def peer_of_struct(struct: bytes) -> Peer | None:
    """The peer a preamble's Struct names (None: the sender did not know its workload)."""
    if not struct:
        return None
    try:
        return parse_struct(struct)
    except MalformedMetadata as exc:
        raise MalformedPreamble(f"metadata: {exc}") from None


class PreambleReader:
    """Collects the peer's preamble from the first bytes of a connection, refusing a bad one as early as
    its header shows it."""

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        """The preamble's Struct and the bytes after it once it is complete, else None (needs more)."""
        buffer = self.buffer + data
        self.buffer = buffer
        head = buffer[:len(MAGIC)]
        if head != MAGIC[:len(head)]:
            raise MalformedPreamble(f"bad magic {head!r}")
        if len(buffer) < HEADER_SIZE:
            return None
        if buffer[len(MAGIC)] != VERSION:
            raise MalformedPreamble(f"unknown version {buffer[len(MAGIC)]}")
        size = int.from_bytes(buffer[len(MAGIC) + 1:HEADER_SIZE], "big")
        if size > MAX_STRUCT:
            raise MalformedPreamble(f"metadata of {size} bytes is over the limit of {MAX_STRUCT}")
        end = HEADER_SIZE + size
        if len(buffer) < end:
            return None
        self.buffer = b""
        return buffer[HEADER_SIZE:end], buffer[end:]

    def read(self, data: bytes) -> tuple[Peer | None, bytes] | None:
        """The peer the completed preamble names and the bytes after it, else None (needs more);
        MalformedPreamble for a bad preamble or Struct."""
        done = self.feed(data)
        if done is None:
            return None
        struct, rest = done
        return peer_of_struct(struct), rest

    def truncated(self) -> MalformedPreamble:
        """The error for a connection that ended inside the preamble."""
        return MalformedPreamble(f"connection ended after {len(self.buffer)} bytes of the preamble")
