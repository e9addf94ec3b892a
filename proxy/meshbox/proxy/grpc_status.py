"""gRPC over HTTP/2 as the proxy needs it, as pure functions: a call's status (from trailers, or from the
head of a trailers-only response), the ``grpc-timeout`` header, the HTTP status → gRPC status mapping
of the proxy's own answers, and the gRPC ``retryOn`` conditions (Istio's names), so that a retry
decision can test a response's ``grpc-status`` without knowing anything else of gRPC.
"""

from __future__ import annotations

from collections.abc import Sequence

OK = 0
CANCELLED = 1
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

# Envoy's %GRPC_STATUS% prints these by default (its CAMEL_STRING form; "Canceled" is Envoy's spelling).
CAMEL_NAMES = ("Ok", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound", "AlreadyExists",
               "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted", "OutOfRange",
               "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated")
# grpc-timeout units (gRPC over HTTP/2: "TimeoutValue TimeoutUnit", at most 8 digits) in seconds.
_TIMEOUT_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}


def is_grpc(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """The message is gRPC: its content-type is application/grpc (optionally +proto, +json, ...)."""
    for name, value in headers:
        if name == b"content-type":
            return value[:16].lower() == b"application/grpc"
    return False


def status_of(headers: Sequence[tuple[bytes, bytes]] | None) -> int | None:
    """The ``grpc-status`` value in ``headers`` (trailers, or a trailers-only head), None if absent or bad."""
    if headers:
        for name, value in headers:
            if name == b"grpc-status":
                return int(value) if value.isdigit() and len(value) <= 3 else None
    return None


def status_name(code: int | None) -> str:
    """The Envoy ``%GRPC_STATUS%`` text of a status ("-" for none; the number for one without a name)."""
    if code is None:
        return "-"
    return CAMEL_NAMES[code] if 0 <= code < len(CAMEL_NAMES) else str(code)


def parse_timeout(value: bytes) -> float | None:
    """Seconds of a ``grpc-timeout`` value (``100m``, ``5S``), None when malformed (then it is ignored)."""
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


def timeout_of(headers: Sequence[tuple[bytes, bytes]]) -> float | None:
    """The deadline a gRPC request carries, in seconds from now (None without a valid grpc-timeout)."""
    for name, value in headers:
        if name == b"grpc-timeout":
            return parse_timeout(value)
    return None


def from_http(status: int, flag: str) -> int:
    """The gRPC status of an answer the proxy makes itself (HTTP status + response flag), as a gRPC
    client should see it: Envoy's HTTP → gRPC mapping, with a route timeout as DEADLINE_EXCEEDED."""
    if flag == "UT":
        return DEADLINE_EXCEEDED
    if status == 400:
        return INTERNAL
    if status == 401:
        return UNAUTHENTICATED
    if status == 403:
        return PERMISSION_DENIED
    if status == 404:
        return UNIMPLEMENTED
    if status in (429, 502, 503, 504):
        return UNAVAILABLE
    return UNKNOWN


def percent_encode_message(text: bytes) -> bytes:
    """A ``grpc-message`` value: bytes outside printable ASCII and ``%`` percent-encoded (gRPC over HTTP/2)."""
    return b"".join(bytes((c,)) if 0x20 <= c <= 0x7E and c != 0x25 else b"%%%02X" % c for c in text)
