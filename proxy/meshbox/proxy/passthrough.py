"""Requests an egress listener has no virtual host for (ServiceEntries without addresses, issue #15).

An outbound HTTP listener on a wildcard address (``pass_unknown_hosts``) serves every captured
connection to its port that no address-specific listener takes, so it sees requests for hosts the
mesh does not know. Under the mesh's ALLOW_ANY they go to the connection's original destination, as
Envoy's PassthroughCluster sends them; under REGISTRY_ONLY, or when there is no captured destination
(a bound listener's own address is the proxy itself), the exchange core answers them 502 with flag NR.
"""

from __future__ import annotations

from meshbox.proxy.snapshot import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_ROUTE_TIMEOUT,
    ClusterRuntime,
    RouteRuntime,
    Workload,
)
from meshbox.proxy.upstream_hosts import UpstreamHost

# The name access log lines and /clusters-like views give the original destination, as Envoy's.
PASSTHROUGH_CLUSTER = "PassthroughCluster"


def passthrough_route(workload: Workload, address: str, port: int) -> RouteRuntime:
    """A route to ``address:port`` alone, with an unset route's timeout and connect timeout, no retries.

    The host is the connection's own (not the shared registry's): its kept-alive upstream connections
    serve this client connection's later requests and go when it goes.
    """
    cluster = ClusterRuntime(PASSTHROUGH_CLUSTER, "", DEFAULT_CONNECT_TIMEOUT, "ROUND_ROBIN",
                             [UpstreamHost(address, port)], [1], workload)
    return RouteRuntime(prefix=b"/", headers=[], clusters=[cluster], weights=[1], timeout=DEFAULT_ROUTE_TIMEOUT,
                        retries=0, per_try_timeout=None, abort_percent=0.0, abort_status=0, delay_percent=0.0,
                        delay=0.0)
