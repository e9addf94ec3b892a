"""The protocols the fuzz speaks to the proxy, one ``Dialect`` each. HTTP/1.1 is the only one today.

Extension point for HTTP/2 (issue #14): the proxy handles h2c at L7 now; an ``h2`` dialect (a
module beside ``http1_dialect``, not written yet) that builds scripts of HTTP/2 frames (with the ``h2`` package for the
well-formed parts, raw frames for the hostile ones: rapid reset, CONTINUATION flood, HPACK bomb, SETTINGS
and PING floods, zero windows), runs them over a socket and judges each stream, then register it in
``DIALECTS``. The capture backend, the proxy process and the whole-run oracle (crashes, stderr,
smuggling by x-request-id) are protocol-neutral and stay as they are. Until it exists asking for ``h2``
is an error saying so (the attack shapes are covered by proxy/tests/test_h2_attacks.py meanwhile).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

from .response_reader import Response
from .wire import Request


@dataclass
class Script:
    """One client connection: its requests in order and how their bytes are put on the wire."""

    seed: int
    index: int
    protocol: str
    requests: list[Request]
    pieces: list[bytes]  # one write call each
    half_close: bool = False  # shutdown(SHUT_WR) after the last piece
    sequential: bool = False  # wait for each answer before sending the next request (else pipelined)
    slow_pieces: bool = False  # pause a few milliseconds between pieces

    @property
    def data(self) -> bytes:
        return b"".join(self.pieces)


@dataclass
class Outcome:
    """What the client saw on one connection."""

    script: Script
    responses: list[Response] = field(default_factory=list)
    closed: bool = False  # the proxy closed (EOF or reset)
    reset: bool = False
    partial: bytes = b""  # bytes of a response that never completed
    malformed: str | None = None  # the reader's complaint about what the proxy sent
    stuck: bool = False  # neither answered nor closed when the settle time ran out
    sent: int = 0  # bytes the client managed to write
    sending: float = 0.0  # seconds from the first write to the last
    waited: float = 0.0  # seconds from the last byte sent to the end


@dataclass
class Finding:
    """One violation of the oracle; ``conn`` is the script index that shows it (None: not tied to one)."""

    kind: str
    detail: str
    conn: int | None = None


class Dialect(Protocol):
    """A protocol the fuzz can speak: it makes connection scripts, runs them, and judges each outcome."""

    name: str

    def script(self, seed: int, index: int) -> Script: ...

    async def run(self, script: Script, port: int) -> Outcome: ...

    def judge(self, outcome: Outcome) -> list[Finding]: ...


def script_rng(seed: int, index: int) -> random.Random:
    """The random source of one script: a script can be rebuilt alone from (seed, index)."""
    return random.Random(f"meshbox-fuzz/{seed}/{index}")


def dialect(name: str) -> Dialect:
    """The dialect called ``name``; a clear error for protocols the proxy does not handle at L7 yet."""
    from .http1_dialect import Http1

    dialects: dict[str, Dialect] = {"http/1.1": Http1()}
    if name in dialects:
        return dialects[name]
    if name in ("h2", "h2c", "http/2"):
        raise NotImplementedError("HTTP/2 fuzzing is not implemented yet: the proxy speaks h2c at L7 (issue #14) "
                                  "but no h2 dialect is written; add one here (see this module's docstring)")
    raise ValueError(f"unknown protocol {name!r} (known: {', '.join(dialects)})")
