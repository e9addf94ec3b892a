"""A route's retry policy as the proxy applies it: which failures are retried (Envoy's ``retry_on``
conditions, as bits), how long to back off before each retry, and how much request body is kept to
send again. Pure: no I/O, no clock (the caller passes the random draw)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from meshbox.proxy.attempt_outcomes import CONNECT_FAILURE, REFUSED_STREAM, RESET, TRY_TIMEOUT

# What went wrong with an attempt (CONNECT_FAILURE, RESET, TRY_TIMEOUT, REFUSED_STREAM: attempt_outcomes),
# and what a response says, as bits a policy retries.
STATUS_5XX: Final = 8
GATEWAY_ERROR: Final = 16
RETRIABLE_4XX: Final = 32
RETRIABLE_STATUS: Final = 64
# Bits that test the response head (status or grpc-status), as opposed to a failed attempt.
RESPONSE_BITS: Final = STATUS_5XX | GATEWAY_ERROR | RETRIABLE_4XX | RETRIABLE_STATUS

# Envoy's conditions → bits. 5xx and gateway-error also retry attempts that got no answer at all
# (failed connect, reset, per-try timeout), as in Envoy.
_NO_ANSWER = CONNECT_FAILURE | RESET | TRY_TIMEOUT | REFUSED_STREAM
CONDITION_BITS: Mapping[str, int] = {
    "5xx": STATUS_5XX | _NO_ANSWER,
    "gateway-error": GATEWAY_ERROR | _NO_ANSWER,
    "reset": RESET | TRY_TIMEOUT,
    "connect-failure": CONNECT_FAILURE,
    "refused-stream": REFUSED_STREAM,
    "retriable-4xx": RETRIABLE_4XX,
    "retriable-status-codes": RETRIABLE_STATUS,
}
# No condition given: failed connects and expired per-try timeouts (meshbox's retries before retry_on).
DEFAULT_BITS: Final = CONNECT_FAILURE | TRY_TIMEOUT
GATEWAY_STATUSES = frozenset({502, 503, 504})
# Envoy's default backoff: 25 ms base interval, at most 10 times that.
DEFAULT_BASE_INTERVAL = 0.025
GRPC_STATUS = b"grpc-status"


class RetryPolicy:
    """What a route retries (``bits``, status codes, grpc-status codes) and its backoff."""

    __slots__ = ("base_interval", "bits", "grpc_codes", "max_interval", "on_response", "status_codes")

    def __init__(self, bits: int, status_codes: Iterable[int] = (), grpc_codes: Iterable[int] = (),
                 base_interval: float = DEFAULT_BASE_INTERVAL, max_interval: float = 0.0) -> None:
        self.bits = bits
        self.status_codes = frozenset(status_codes)
        self.grpc_codes = frozenset(b"%d" % code for code in grpc_codes)
        # Whether response heads must be looked at (the exchange core tests this one attribute).
        self.on_response = bool(bits & RESPONSE_BITS or self.grpc_codes)
        self.base_interval = base_interval
        self.max_interval = max_interval or 10 * base_interval

    def retries(self, failure: int) -> bool:
        """Whether an attempt that failed with ``failure`` (CONNECT_FAILURE, RESET, ...) is retried."""
        return bool(self.bits & failure)

    def retries_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether a response head with ``status`` (and a grpc-status header) asks for a retry."""
        bits = self.bits
        if status >= 500 and bits & STATUS_5XX:
            return True
        if bits & GATEWAY_ERROR and status in GATEWAY_STATUSES:
            return True
        if bits & RETRIABLE_4XX and status == 409:
            return True
        if bits & RETRIABLE_STATUS and status in self.status_codes:
            return True
        if self.grpc_codes:
            for name, value in headers:
                if name == GRPC_STATUS:
                    return value.strip() in self.grpc_codes
        return False

    def backoff(self, retry: int, draw: float) -> float:
        """Seconds to wait before retry number ``retry`` (1, 2, ...): full jitter, ``draw`` in [0, 1)."""
        ceiling = min(self.base_interval * (1 << min(retry - 1, 30)), self.max_interval)
        return ceiling * draw


def compile_retry_policy(conditions: Iterable[str], status_codes: Iterable[int], grpc_names: Mapping[str, int],
                         base_interval: float, max_interval: float) -> RetryPolicy:
    """A policy from condition names (validated by the caller: each is in CONDITION_BITS or grpc_names)."""
    bits = 0
    grpc_codes = []
    names = list(conditions)
    for name in names:
        if name in grpc_names:
            grpc_codes.append(grpc_names[name])
        else:
            bits |= CONDITION_BITS[name]
    if not names:
        bits = DEFAULT_BITS
    return RetryPolicy(bits, status_codes, grpc_codes, base_interval or DEFAULT_BASE_INTERVAL, max_interval)
