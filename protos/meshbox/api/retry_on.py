"""The retry conditions of a RetryPolicy (``retry_on``), by Envoy's and Istio's names.

One list, read by validation, the Istio translation and the proxy's compiler (which maps each name
to what the proxy tests: meshbox.proxy.retry_policy). Plain Python: no protobuf.
"""

from __future__ import annotations

from meshbox.api.grpc_codes import RETRY_ON as GRPC_RETRY_ON

# HTTP conditions: what each retries is described in docs/traffic.md.
HTTP_RETRY_ON = (
    "5xx", "gateway-error", "reset", "connect-failure", "refused-stream", "retriable-4xx",
    "retriable-status-codes",
)
# With the gRPC conditions (a response's grpc-status, meshbox.api.grpc_codes).
RETRY_ON = (*HTTP_RETRY_ON, *GRPC_RETRY_ON)


def unknown_conditions(conditions: list[str]) -> list[str]:
    """The names in ``conditions`` that are no retry condition meshbox knows."""
    return [c for c in conditions if c not in RETRY_ON]
