"""The protocols the fuzz speaks to the proxy, one ``Dialect`` each: HTTP/1.1 (``http1_dialect``) and
HTTP/2 with prior knowledge (``h2_dialect``: frames and HPACK built by hand). The capture backend, the
proxy process and the whole-run oracle (crashes, stderr, smuggling by x-request-id, what reached the
backend) are shared by both."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

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
    wait_before: int = 0  # HTTP/2: before writing this piece, wait until the streams sent are settled

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
    answered: int = 0  # HTTP/2: streams that got a complete response
    detail: Any = None  # what the dialect's judge needs beyond this (HTTP/2: the client's session)


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

    def rebuild(self, script: Script, keep: list[int], half_close: bool, whole: bool) -> Script:
        """The script with only the requests at ``keep`` (for the minimiser); ``whole``: in one write."""
        ...

    def canary(self, seed: int, n: int) -> Script:
        """A connection with one well-formed request that must be answered (the run's n-th health check)."""
        ...


def script_rng(seed: int, index: int) -> random.Random:
    """The random source of one script: a script can be rebuilt alone from (seed, index)."""
    return random.Random(f"meshbox-fuzz/{seed}/{index}")


PROTOCOLS = ("http/1.1", "h2")
ALIASES = {"http1": "http/1.1", "h1": "http/1.1", "h2c": "h2", "http/2": "h2", "http2": "h2"}


def dialect(name: str) -> Dialect:
    """The dialect called ``name`` (``http/1.1`` or ``h2``, or an alias such as ``h2c``)."""
    from .h2_dialect import Http2
    from .http1_dialect import Http1

    name = ALIASES.get(name, name)
    if name == "http/1.1":
        return Http1()
    if name == "h2":
        return Http2()
    raise ValueError(f"unknown protocol {name!r} (known: {', '.join(PROTOCOLS)})")
