"""Random version-4 UUIDs for x-request-id without a syscall per request.

``uuid.uuid4()`` reads os.urandom each time; a request id needs uniqueness, not secrecy, so a
Mersenne Twister seeded once from os.urandom (and reseeded in each forked worker) is enough.
"""

from __future__ import annotations

import os
import random

_VERSION_BITS = 0x4000 << 64  # version 4 in bits 76..79
_VERSION_MASK = ~(0xF000 << 64)
_VARIANT_BITS = 0x8000 << 48  # RFC 4122 variant in bits 62..63
_VARIANT_MASK = ~(0xC000 << 48)
# Both fixed fields in one mask and one set of bits (two operations per id instead of four).
_FIXED_MASK = _VERSION_MASK & _VARIANT_MASK
_FIXED_BITS = _VERSION_BITS | _VARIANT_BITS


class RequestIds:
    """Makes request ids; call :meth:`reseed` after fork so workers don't repeat each other."""

    __slots__ = ("_bits",)

    def __init__(self) -> None:
        self._bits = random.Random(os.urandom(32)).getrandbits

    def reseed(self) -> None:
        self._bits = random.Random(os.urandom(32)).getrandbits

    def new(self) -> bytes:
        """A random UUID in its canonical 36-character form, as bytes."""
        h = b"%032x" % (self._bits(128) & _FIXED_MASK | _FIXED_BITS)
        return b"-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))
