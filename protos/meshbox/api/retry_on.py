"""The retry conditions of a RetryPolicy (``retry_on``), by Envoy's and Istio's names.

One list, read by validation, the Istio translation and the proxy's compiler (which maps each name
to what the proxy tests: meshbox.proxy.retry_policy). Plain Python: no protobuf.
"""

from __future__ import annotations

# HTTP conditions: what each retries is described in docs/traffic.md.
HTTP_RETRY_ON = (
    "5xx", "gateway-error", "reset", "connect-failure", "refused-stream", "retriable-4xx",
    "retriable-status-codes",
)
# gRPC conditions: the response's grpc-status (code by name, as Envoy's retry_on names them).
GRPC_RETRY_ON: dict[str, int] = {
    "cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8, "internal": 13, "unavailable": 14,
}
RETRY_ON = (*HTTP_RETRY_ON, *GRPC_RETRY_ON)


def unknown_conditions(conditions: list[str]) -> list[str]:
    """The names in ``conditions`` that are no retry condition meshbox knows."""
    return [c for c in conditions if c not in RETRY_ON]
