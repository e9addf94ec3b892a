"""A RouteRule's actions besides its destinations → the proxy Route: header operations (per route and per
destination), rewrite, redirect, mirrors and local rate limit. The fields have the same shape on both
sides; mirrors name their destination like a route does, which the caller turns into a cluster."""

from __future__ import annotations

from collections.abc import Callable

from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.v1 import routing_pb2


def copy_route_actions(spec: routing_pb2.RouteRuleSpec, route: pc.Route,
                       target_of: Callable[[routing_pb2.RouteDestination], str]) -> None:
    """Fill ``route`` (whose clusters follow ``spec.route`` in order) with ``spec``'s actions;
    ``target_of`` names the cluster of a destination (and registers its subset)."""
    if spec.HasField("request_headers"):
        route.request_headers.CopyFrom(spec.request_headers)
    if spec.HasField("response_headers"):
        route.response_headers.CopyFrom(spec.response_headers)
    if spec.HasField("rewrite"):
        route.rewrite.CopyFrom(spec.rewrite)
    if spec.HasField("redirect"):
        route.redirect.CopyFrom(spec.redirect)
    if spec.HasField("rate_limit"):
        route.rate_limit.CopyFrom(spec.rate_limit)
    for dest, weighted in zip(spec.route, route.clusters, strict=False):
        if dest.HasField("request_headers"):
            weighted.request_headers.CopyFrom(dest.request_headers)
        if dest.HasField("response_headers"):
            weighted.response_headers.CopyFrom(dest.response_headers)
    for mirror in spec.mirrors:
        route.mirrors.append(pc.RouteMirror(cluster=target_of(mirror.destination), percent=mirror.percent,
                                            all=mirror.all))
