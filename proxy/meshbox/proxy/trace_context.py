"""Trace context propagation as pure functions: W3C Trace Context (``traceparent``, ``tracestate``) and
B3 (``x-b3-*`` and the single ``b3`` header).

:func:`incoming` reads the context a request carries (W3C first, then single ``b3``, then ``x-b3-*``);
an invalid header counts as absent (the proxy then starts a new trace, as the W3C spec asks).
:func:`outgoing` replaces every trace header with the context of the proxy's own span, in W3C and B3
multi-header form (plus the single ``b3`` header when the request came with one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

Headers = list[tuple[bytes, bytes]]

# Final: compiled code reads these as C statics, not from the module's dict per header.
_HEX_DIGITS: Final = b"0123456789abcdef"
_ODD_HEX_DIGITS: Final = b"13579bdf"
_DASH: Final = ord("-")
_ZERO_TRACE: Final = b"0" * 32
_ZERO_SPAN: Final = b"0" * 16
TRACE_HEADERS: Final = frozenset((b"traceparent", b"tracestate", b"b3", b"x-b3-traceid", b"x-b3-spanid",
                           b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags"))


class TraceContext:
    """A trace id (32 lowercase hex), the sender's span id (16 hex), the sampling decision the sender
    made (None: deferred to us) and the W3C tracestate to pass on."""

    __slots__ = ("sampled", "single_b3", "span_id", "trace_id", "tracestate")

    def __init__(self, trace_id: bytes, span_id: bytes, sampled: bool | None, tracestate: bytes | None = None,
                 single_b3: bool = False) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.tracestate = tracestate
        self.single_b3 = single_b3


def _is_hex(value: bytes, length: int) -> bool:
    # One C pass deleting the lowercase hex digits, rather than a set test per byte.
    return len(value) == length and not value.translate(None, _HEX_DIGITS)


def parse_traceparent(value: bytes) -> TraceContext | None:
    """A W3C ``traceparent`` (version-format-id "-" trace-id "-" parent-id "-" flags), or None when invalid:
    version ``ff``, uppercase or non-hex digits, an all-zero trace or parent id, a version 00 header of
    another length; a future version may be longer only after a ``-``."""
    value = value.strip(b" \t")
    if len(value) < 55:
        return None
    head = value if len(value) == 55 else value[:55]
    # One C pass: without its lowercase hex digits, the head must be exactly its three separators.
    if head.translate(None, _HEX_DIGITS) != b"---" or head[2] != _DASH or head[35] != _DASH or head[52] != _DASH:
        return None
    version, trace_id, span_id = value[:2], value[3:35], value[36:52]
    if version == b"ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if len(value) > 55 and (version == b"00" or value[55] != _DASH):
        return None
    # Sampled is bit 0 of the flags: the low bit of their second hex digit.
    return TraceContext(trace_id, span_id, value[54] in _ODD_HEX_DIGITS)


def _b3_trace_id(value: bytes) -> bytes | None:
    value = value.lower()
    if _is_hex(value, 16):
        value = b"0" * 16 + value
    return value if _is_hex(value, 32) and value != _ZERO_TRACE else None


def _b3_sampled(value: bytes | None) -> bool | None:
    if value is None:
        return None
    value = value.lower()
    if value in (b"1", b"true", b"d"):
        return True
    if value in (b"0", b"false"):
        return False
    return None


def parse_b3_single(value: bytes) -> TraceContext | None:
    """The single ``b3`` header: ``traceid-spanid[-sampled[-parentspanid]]``; a lone sampling state
    (``0``, ``1``, ``d``) carries no ids and is returned with empty ids."""
    parts = value.strip(b" \t").split(b"-")
    if len(parts) == 1:
        sampled = _b3_sampled(parts[0])
        return TraceContext(b"", b"", sampled, single_b3=True) if sampled is not None else None
    if len(parts) > 4:
        return None
    trace_id = _b3_trace_id(parts[0])
    span_id = parts[1].lower()
    if trace_id is None or not _is_hex(span_id, 16) or span_id == _ZERO_SPAN:
        return None
    sampled = _b3_sampled(parts[2]) if len(parts) > 2 else None
    if len(parts) > 2 and sampled is None:
        return None
    return TraceContext(trace_id, span_id, sampled, single_b3=True)


def incoming(headers: Sequence[tuple[bytes, bytes]]) -> TraceContext | None:
    """The trace context of a request's headers; None when it has no trace header at all. A context
    with empty ids carries at most a sampling decision (``b3: 0`` or ``x-b3-sampled`` alone, or only
    invalid trace headers: their sampling decision is None)."""
    traceparent: bytes | None = None
    tracestate: list[bytes] | None = None  # a list only when there is one (most requests have none)
    single: bytes | None = None
    b3_trace: bytes | None = None
    b3_span: bytes | None = None
    b3_sampled: bytes | None = None
    b3_flags: bytes | None = None
    seen = False
    for name, value in headers:
        if name not in TRACE_HEADERS:
            continue
        seen = True
        if name == b"traceparent":
            traceparent = value if traceparent is None else b""  # two traceparents: invalid
        elif name == b"tracestate":
            if tracestate is None:
                tracestate = [value]
            else:
                tracestate.append(value)
        elif name == b"b3":
            single = value
        elif name == b"x-b3-traceid":
            b3_trace = value
        elif name == b"x-b3-spanid":
            b3_span = value
        elif name == b"x-b3-sampled":
            b3_sampled = value
        elif name == b"x-b3-flags":
            b3_flags = value
    if traceparent:
        context = parse_traceparent(traceparent)
        if context is not None:
            if tracestate:
                context.tracestate = b",".join(tracestate)
            return context
    if single is not None:
        context = parse_b3_single(single)
        if context is not None:
            return context
    sampled = True if b3_flags == b"1" else _b3_sampled(b3_sampled)
    if b3_trace is not None and b3_span is not None:
        trace_id = _b3_trace_id(b3_trace)
        span_id = b3_span.lower()
        if trace_id is not None and _is_hex(span_id, 16) and span_id != _ZERO_SPAN:
            return TraceContext(trace_id, span_id, sampled)
    return TraceContext(b"", b"", sampled) if seen else None


def outgoing(headers: Headers, trace_id: bytes, span_id: bytes, parent_id: bytes, sampled: bool,
             tracestate: bytes | None, single_b3: bool, strip: bool = True) -> Headers:
    """``headers`` without their trace headers (kept as they are, and extended, when ``strip`` is False:
    the caller knows there are none), plus the context of span ``span_id`` (child of ``parent_id``,
    empty for a root span) in W3C and B3 form."""
    flag = b"1" if sampled else b"0"
    kept = [h for h in headers if h[0] not in TRACE_HEADERS] if strip else headers
    kept.append((b"traceparent", b"00-%s-%s-%s" % (trace_id, span_id, b"01" if sampled else b"00")))
    if tracestate:
        kept.append((b"tracestate", tracestate))
    kept.append((b"x-b3-traceid", trace_id))
    kept.append((b"x-b3-spanid", span_id))
    if parent_id:
        kept.append((b"x-b3-parentspanid", parent_id))
    kept.append((b"x-b3-sampled", flag))
    if single_b3:
        single = b"%s-%s-%s" % (trace_id, span_id, flag)
        kept.append((b"b3", single + b"-" + parent_id if parent_id else single))
    return kept
