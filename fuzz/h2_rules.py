"""What makes an HTTP/2 message well-formed (RFC 9113 §8.1.1, §8.2, §8.3): the oracle applies these to
every request the proxy forwards to the backend and every response it sends a client, so whatever a
fuzzed client sent, nothing the proxy emits means something an HTTP/2 peer could not legally say."""

from __future__ import annotations

import re

Headers = list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...]

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9a-z]+$")  # lowercase tchar (RFC 9110 §5.6.2, RFC 9113 §8.2.1)
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
CONNECTION_SPECIFIC = {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
REQUEST_PSEUDO = {b":method", b":scheme", b":authority", b":path", b":protocol"}


def field_problems(headers: Headers, pseudo: set[bytes], trailers: bool = False) -> list[str]:
    """Field-level violations: names, values, connection-specific fields, pseudo-header placement."""
    out = []
    regular_seen = False
    for name, value in headers:
        if name.startswith(b":"):
            if trailers:
                out.append(f"pseudo-header {name!r} in trailers")
            elif name not in pseudo:
                out.append(f"unknown pseudo-header {name!r}")
            elif regular_seen:
                out.append(f"pseudo-header {name!r} after a regular field")
            continue
        regular_seen = True
        if not _TOKEN.match(name):
            out.append(f"field name {name!r} is not a lowercase token")
        if _BAD_VALUE.search(value):
            out.append(f"field {name!r} has a value with CR, LF, NUL or surrounding whitespace: {value[:80]!r}")
        if name in CONNECTION_SPECIFIC:
            out.append(f"connection-specific field {name!r}")
        if name == b"te" and value.lower() != b"trailers":
            out.append(f"te: {value!r} (only 'trailers' is allowed)")
    return out


def content_length_problem(headers: Headers, body_len: int, head_only: bool = False) -> str | None:
    lengths = {v for n, v in headers if n == b"content-length"}
    if not lengths:
        return None
    if len(lengths) > 1:
        return f"conflicting content-length values {sorted(lengths)!r}"
    value = lengths.pop()
    if not value.isdigit():
        return f"content-length {value!r} is not a number"
    if not head_only and int(value) != body_len:
        return f"content-length {value.decode()} but {body_len} bytes of DATA"
    return None


def request_problems(headers: Headers, body_len: int, trailers: Headers | None) -> list[str]:
    """Why a received request is malformed (empty: it is one an HTTP/2 client may send)."""
    out = field_problems(headers, REQUEST_PSEUDO)
    counts: dict[bytes, int] = {}
    for name, _ in headers:
        if name.startswith(b":"):
            counts[name] = counts.get(name, 0) + 1
    out += [f"{n!r} appears {c} times" for n, c in counts.items() if c > 1]
    fields = dict(headers)
    method = fields.get(b":method")
    if method is None:
        out.append("no :method")
    elif method != b"CONNECT":
        for need in (b":scheme", b":path"):
            if need not in fields:
                out.append(f"no {need.decode()}")
        path = fields.get(b":path", b"/")
        if not (path.startswith(b"/") or (path == b"*" and method == b"OPTIONS")):
            out.append(f":path {path[:80]!r} is neither origin-form nor '*' for OPTIONS")
    if not _TOKEN.match((method or b"GET").lower()):
        out.append(f":method {method!r} is not a token")
    if any(c < 0x21 or c == 0x7F for c in fields.get(b":path", b"")):
        out.append(f":path with control or space octets: {fields[b':path'][:80]!r}")
    if b":authority" in fields and b"host" in fields and fields[b":authority"] != fields[b"host"]:
        out.append(f":authority {fields[b':authority']!r} differs from host {fields[b'host']!r}")
    problem = content_length_problem(headers, body_len)
    if problem:
        out.append(problem)
    if trailers is not None:
        out += field_problems(trailers, set(), trailers=True)
    return out


def response_problems(headers: Headers, trailers: Headers | None, body_len: int, head_only: bool) -> list[str]:
    """Why a response the proxy sent a client is malformed."""
    out = field_problems(headers, {b":status"})
    statuses = [v for n, v in headers if n == b":status"]
    if len(statuses) != 1 or not re.fullmatch(rb"[1-5]\d\d", statuses[0]):
        out.append(f":status fields {statuses!r} (one three-digit status needed)")
    elif not head_only and statuses[0] not in (b"204", b"304"):
        problem = content_length_problem(headers, body_len)
        if problem:
            out.append(problem)
    if trailers is not None:
        out += field_problems(trailers, set(), trailers=True)
    return out
