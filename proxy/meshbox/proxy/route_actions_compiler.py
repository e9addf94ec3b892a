"""meshbox.api.v1 Route fields → RouteActions (header operations, rewrite, redirect, mirrors, rate limit).

Run by config_compiler for each route, after meshbox.api.validation checked the values (see
meshbox.api.route_actions_validation); a route that sets none of them gets None (no per-request cost).
"""

from __future__ import annotations

import re
from typing import Any

from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.proxy.rate_limit import TokenBucket
from meshbox.proxy.route_actions import HeaderOps, Mirror, Redirect, RouteActions


def compile_route_actions(route: pc.Route, clusters: dict[str, Any]) -> RouteActions | None:
    """The route's actions, or None when it has none. ``clusters``: name → ClusterRuntime."""
    has = route.HasField
    by_cluster = {}
    for wc in route.clusters:
        if wc.HasField("request_headers") or wc.HasField("response_headers"):
            by_cluster[wc.cluster] = (
                _ops(wc.request_headers) if wc.HasField("request_headers") else None,
                _ops(wc.response_headers) if wc.HasField("response_headers") else None)
    if not (by_cluster or route.mirrors or any(has(f) for f in ("request_headers", "response_headers", "rewrite",
                                                                  "redirect", "rate_limit"))):
        return None
    rewrite = route.rewrite
    return RouteActions(
        request_ops=_ops(route.request_headers) if has("request_headers") else None,
        response_ops=_ops(route.response_headers) if has("response_headers") else None,
        by_cluster=by_cluster,
        matched_prefix=(route.match.prefix or "/").encode(),
        rewrite_prefix=rewrite.prefix.encode() if rewrite.prefix else None,
        rewrite_authority=rewrite.authority.encode() if rewrite.authority else None,
        rewrite_regex=re.compile(rewrite.regex.encode()) if rewrite.regex else None,
        rewrite_substitution=rewrite.regex_substitution.encode(),
        redirect=_redirect(route.redirect) if has("redirect") else None,
        mirrors=[Mirror(clusters[m.cluster], m.percent, m.all) for m in route.mirrors],
        limiter=_bucket(route.rate_limit) if has("rate_limit") else None,
    )


def _ops(ops: pc.HeaderOperations) -> HeaderOps:
    return HeaderOps([(hv.name.lower().encode(), hv.value.encode()) for hv in ops.set],
                     [(hv.name.lower().encode(), hv.value.encode()) for hv in ops.add],
                     [name.lower().encode() for name in ops.remove])


def _redirect(redirect: pc.RouteRedirect) -> Redirect:
    return Redirect(redirect.path.encode(), redirect.authority.encode(), redirect.scheme.encode(), redirect.port,
                    redirect.code or 301)


def _bucket(limit: pc.LocalRateLimit) -> TokenBucket:
    return TokenBucket(limit.max_tokens, limit.tokens_per_fill,
                       limit.fill_interval.seconds + limit.fill_interval.nanos / 1e9)
