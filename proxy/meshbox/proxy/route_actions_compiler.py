"""meshbox.api.v1 Route fields → RouteActions (header operations, rewrite, redirect, mirrors, rate limit).

Run by config_compiler for each route; a route that sets none of them gets None (no per-request cost).
Values that cannot be applied raise ValueError naming the field (config_compiler rejects the config).
"""

from __future__ import annotations

from typing import Any

from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.proxy.header_policy import HOP_BY_HOP
from meshbox.proxy.rate_limit import TokenBucket
from meshbox.proxy.route_actions import REDIRECT_CODES, HeaderOps, Mirror, Redirect, RouteActions

# Headers the proxy frames itself: a header operation on them would corrupt the message.
FRAMING = HOP_BY_HOP | {b"content-length"}


def compile_route_actions(route: pc.Route, clusters: dict[str, Any], path: str) -> RouteActions | None:
    """The route's actions, or None when it has none. ``clusters``: name → ClusterRuntime."""
    has = route.HasField
    by_cluster = {}
    for i, wc in enumerate(route.clusters):
        if wc.HasField("request_headers") or wc.HasField("response_headers"):
            by_cluster[wc.cluster] = (
                _ops(wc.request_headers, f"{path}.clusters[{i}].request_headers") if wc.HasField("request_headers")
                else None,
                _ops(wc.response_headers, f"{path}.clusters[{i}].response_headers")
                if wc.HasField("response_headers") else None)
    if not (by_cluster or route.mirrors or any(has(f) for f in ("request_headers", "response_headers", "rewrite",
                                                                  "redirect", "rate_limit"))):
        return None
    rewrite = route.rewrite
    return RouteActions(
        request_ops=_ops(route.request_headers, f"{path}.request_headers") if has("request_headers") else None,
        response_ops=_ops(route.response_headers, f"{path}.response_headers") if has("response_headers") else None,
        by_cluster=by_cluster,
        matched_prefix=(route.match.prefix or "/").encode(),
        rewrite_prefix=rewrite.prefix.encode() if rewrite.prefix else None,
        rewrite_authority=rewrite.authority.encode() if rewrite.authority else None,
        redirect=_redirect(route.redirect, f"{path}.redirect") if has("redirect") else None,
        mirrors=[_mirror(m, clusters, f"{path}.mirrors[{i}]") for i, m in enumerate(route.mirrors)],
        limiter=_bucket(route.rate_limit, f"{path}.rate_limit") if has("rate_limit") else None,
    )


def _ops(ops: pc.HeaderOperations, path: str) -> HeaderOps:
    def name(value: str, where: str) -> bytes:
        n = value.lower().encode()
        if not n or n in FRAMING or n.startswith(b":") or any(c in n for c in b" \t\r\n:"):
            raise ValueError(f"{where}: cannot edit header {value!r}")
        return n

    def pairs(values: Any, kind: str) -> list[tuple[bytes, bytes]]:
        out = []
        for i, hv in enumerate(values):
            if any(c in hv.value for c in "\r\n\0"):
                raise ValueError(f"{path}.{kind}[{i}].value: control characters are not allowed")
            out.append((name(hv.name, f"{path}.{kind}[{i}].name"), hv.value.encode()))
        return out

    return HeaderOps(pairs(ops.set, "set"), pairs(ops.add, "add"),
                     [name(n, f"{path}.remove[{i}]") for i, n in enumerate(ops.remove)])


def _redirect(redirect: pc.RouteRedirect, path: str) -> Redirect:
    code = redirect.code or 301
    if code not in REDIRECT_CODES:
        raise ValueError(f"{path}.code: must be one of {', '.join(map(str, REDIRECT_CODES))}, got {code}")
    if redirect.scheme not in ("", "http", "https"):
        raise ValueError(f"{path}.scheme: http or https, got {redirect.scheme!r}")
    if redirect.path and not redirect.path.startswith("/"):
        raise ValueError(f"{path}.path: must start with '/', got {redirect.path!r}")
    if redirect.port > 65535:
        raise ValueError(f"{path}.port: {redirect.port} is not a port")
    return Redirect(redirect.path.encode(), redirect.authority.encode(), redirect.scheme.encode(), redirect.port,
                    code)


def _mirror(mirror: pc.RouteMirror, clusters: dict[str, Any], path: str) -> Mirror:
    if mirror.cluster not in clusters:
        raise ValueError(f"{path}.cluster: unknown cluster {mirror.cluster!r}")
    if not 0 <= mirror.percent <= 100:
        raise ValueError(f"{path}.percent: must be 0..100, got {mirror.percent}")
    return Mirror(clusters[mirror.cluster], mirror.percent, mirror.all)


def _bucket(limit: pc.LocalRateLimit, path: str) -> TokenBucket:
    interval = limit.fill_interval.seconds + limit.fill_interval.nanos / 1e9
    if limit.max_tokens < 1:
        raise ValueError(f"{path}.max_tokens: at least 1")
    if interval <= 0:
        raise ValueError(f"{path}.fill_interval: must be positive")
    return TokenBucket(limit.max_tokens, limit.tokens_per_fill, interval)
