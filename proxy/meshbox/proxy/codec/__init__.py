"""Sans-I/O HTTP/1.1 codecs behind one small interface: bytes → events, events → bytes.

``httptools`` (llhttp, the default) and ``h11`` (the pure-Python reference) parse; both apply the
same head rules (``heads``) and serialize through ``writer``, so they reach the same verdict on the
same bytes. Parsers raise :class:`ProtocolError` carrying the status to answer with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from meshbox.proxy.codec.events import Event
from meshbox.proxy.codec.httptools_codec import HttptoolsRequestParser, HttptoolsResponseParser


class RequestParser(Protocol):
    def feed(self, data: bytes) -> list[Event]: ...

    @property
    def partial_head(self) -> bool: ...


class ResponseParser(Protocol):
    def expect(self, request_method: bytes, upgrade: bool = False) -> None: ...

    def feed(self, data: bytes) -> list[Event]: ...

    def feed_eof(self) -> list[Event]: ...


@dataclass(frozen=True)
class Codec:
    """A named pair of parser factories."""

    name: str
    request_parser: Callable[[], RequestParser]
    # (request method, request was an upgrade) → parser for that request's response
    response_parser: Callable[[bytes, bool], ResponseParser]


def _h11_request_parser() -> RequestParser:
    # h11 is imported only by a proxy that uses it: the default codec's process never pays its memory.
    from meshbox.proxy.codec.h11_codec import H11RequestParser

    return H11RequestParser()


def _h11_response_parser(request_method: bytes, upgrade: bool) -> ResponseParser:
    from meshbox.proxy.codec.h11_codec import H11ResponseParser

    return H11ResponseParser(request_method, upgrade)


CODECS = {
    "httptools": Codec("httptools", HttptoolsRequestParser, HttptoolsResponseParser),
    "h11": Codec("h11", _h11_request_parser, _h11_response_parser),
}


def get_codec(name: str) -> Codec:
    """The codec called ``name``; ValueError naming the choices otherwise."""
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r} (choose from {', '.join(CODECS)})") from None
