"""gRPC status codes by name (grpc/doc/statuscodes.md) and the gRPC ``retryOn`` conditions Istio names:
what the Istio translator reads from a VirtualService and the proxy prints and tests."""

from __future__ import annotations

# Index = code.
NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
         "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
         "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
# Istio's (and Envoy's) gRPC retryOn conditions and the status each one retries.
RETRY_ON = {
    "cancelled": NAMES.index("CANCELLED"),
    "deadline-exceeded": NAMES.index("DEADLINE_EXCEEDED"),
    "internal": NAMES.index("INTERNAL"),
    "resource-exhausted": NAMES.index("RESOURCE_EXHAUSTED"),
    "unavailable": NAMES.index("UNAVAILABLE"),
}


def code_of(name: str) -> int:
    """The code of a status named as Istio's ``grpcStatus`` wants it (``UNAVAILABLE``; a number and
    ``CANCELED`` are also taken); ValueError naming the accepted names otherwise."""
    text = name.strip()
    if text.isdigit() and int(text) < len(NAMES):
        return int(text)
    upper = text.upper()
    if upper == "CANCELED":
        return NAMES.index("CANCELLED")
    if upper in NAMES:
        return NAMES.index(upper)
    raise ValueError(f"unknown gRPC status {name!r} (one of {', '.join(NAMES)})")
