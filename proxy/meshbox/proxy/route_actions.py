"""What a route does to a request besides picking a cluster: header operations, URI and authority
rewrites, redirects, mirrors and its local rate limit.

A route without any of them has no RouteActions at all (``RouteRuntime.actions`` is None), so the
exchange core pays a single attribute test per request for this module. Everything here is plain data
built by config_compiler and pickled with the snapshot; nothing is changed once it serves, except the
token bucket's level (meshbox.proxy.rate_limit).
"""

from __future__ import annotations

import random
import re
from typing import Any

from meshbox.proxy.attempt_outcomes import MIRROR_BODY_LIMIT
from meshbox.proxy.codec.events import Headers, ResponseHead
from meshbox.proxy.header_policy import request_head_out
from meshbox.proxy.rate_limit import TokenBucket

# Envoy's suffix on the host of a mirrored request, so the mirror can tell shadow traffic apart.
SHADOW_SUFFIX = b"-shadow"


class HeaderOps:
    """Remove, then set (replacing every value), then add (appending) header fields; names lower-case."""

    __slots__ = ("add", "drop", "set")

    def __init__(self, set_: Headers, add: Headers, remove: list[bytes]) -> None:
        self.set = set_
        self.add = add
        # Removed first: every name that is removed or set.
        self.drop = frozenset(remove) | frozenset(name for name, _ in set_)

    def apply(self, headers: Headers) -> Headers:
        """``headers`` edited (a new list; the input is left alone)."""
        drop = self.drop
        out = [h for h in headers if h[0] not in drop] if drop else list(headers)
        out += self.set
        out += self.add
        return out


class Redirect:
    """A redirect answered by the proxy: each part left empty keeps the request's own."""

    __slots__ = ("authority", "code", "path", "port", "scheme")

    def __init__(self, path: bytes, authority: bytes, scheme: bytes, port: int, code: int) -> None:
        self.path = path
        self.authority = authority
        self.scheme = scheme
        self.port = port
        self.code = code

    def location(self, authority: bytes, target: bytes, scheme: bytes) -> bytes:
        """The Location of the redirect for a request to ``authority`` (its Host) and ``target``, that
        came with ``scheme``."""
        host, port = split_authority(authority)
        scheme = self.scheme or scheme
        if self.authority:
            host, port = split_authority(self.authority)
        if self.port:
            port = b"%d" % self.port
        elif self.scheme and not self.authority:
            # Envoy drops the port when only the scheme changes (http://a:80 → https://a).
            port = b""
        default = b"443" if scheme == b"https" else b"80"
        netloc = host if not port or port == default else host + b":" + port
        path = self.path or target
        return scheme + b"://" + netloc + path


def _original_path(headers: Headers, target: bytes) -> Headers:
    """``headers`` with x-envoy-original-path set to the path before a rewrite (one the client sent is
    replaced, as Envoy does)."""
    return [*(h for h in headers if h[0] != b"x-envoy-original-path"), (b"x-envoy-original-path", target)]


def split_authority(authority: bytes) -> tuple[bytes, bytes]:
    """(host, port) of a Host header value; port empty when absent (IPv6 literals keep their brackets)."""
    colon = authority.rfind(b":")
    if colon > 0 and authority[colon + 1:].isdigit() and not authority.endswith(b"]"):
        return authority[:colon], authority[colon + 1:]
    return authority, b""


def shadow_host(authority: bytes) -> bytes:
    """The Host of a mirrored request: ``-shadow`` after the host name, before any port."""
    host, port = split_authority(authority)
    return host + SHADOW_SUFFIX + (b":" + port if port else b"")


class Mirror:
    """A copy of ``percent`` of the route's requests (all of them when ``all``) to ``cluster``."""

    __slots__ = ("all", "cluster", "percent")

    def __init__(self, cluster: object, percent: float, all_: bool) -> None:
        # A ClusterRuntime (typed loosely: snapshot imports this module).
        self.cluster = cluster
        self.percent = percent
        self.all = all_


class RouteActions:
    """The actions of one route (any of them may be absent)."""

    __slots__ = ("by_cluster", "limiter", "matched_prefix", "mirrors", "redirect", "request_ops", "response_ops",
                 "rewrite_authority", "rewrite_prefix", "rewrite_regex", "rewrite_substitution")

    def __init__(self, *, request_ops: HeaderOps | None = None, response_ops: HeaderOps | None = None,
                 by_cluster: dict[str, tuple[HeaderOps | None, HeaderOps | None]] | None = None,
                 matched_prefix: bytes = b"/", rewrite_prefix: bytes | None = None,
                 rewrite_authority: bytes | None = None, redirect: Redirect | None = None,
                 mirrors: list[Mirror] | None = None, limiter: TokenBucket | None = None,
                 rewrite_regex: re.Pattern[bytes] | None = None, rewrite_substitution: bytes = b"") -> None:
        self.request_ops = request_ops
        self.response_ops = response_ops
        # Cluster name → (request, response) operations of that weighted destination.
        self.by_cluster = by_cluster or {}
        self.matched_prefix = matched_prefix
        self.rewrite_prefix = rewrite_prefix
        self.rewrite_authority = rewrite_authority
        # Matches in the path (not the query) replaced by the substitution (Envoy's regex_rewrite).
        self.rewrite_regex = rewrite_regex
        self.rewrite_substitution = rewrite_substitution
        self.redirect = redirect
        self.mirrors = mirrors or []
        self.limiter = limiter

    def edit_request(self, cluster: str, headers: Headers, target: bytes) -> tuple[Headers, bytes]:
        """The request's headers and target after the rewrites and header operations (route first,
        then the picked destination's), as Envoy orders them."""
        if self.rewrite_prefix is not None and target.startswith(self.matched_prefix):
            headers = _original_path(headers, target)
            target = self.rewrite_prefix + target[len(self.matched_prefix):]
            if not target.startswith(b"/"):
                target = b"/" + target
        elif self.rewrite_regex is not None:
            path, mark, query = target.partition(b"?")
            rewritten = self.rewrite_regex.sub(self.rewrite_substitution, path)
            if rewritten != path:
                headers = _original_path(headers, target)
                target = rewritten + mark + query
        if self.rewrite_authority is not None:
            headers = [h for h in headers if h[0] != b"host"]
            headers.append((b"host", self.rewrite_authority))
        if self.request_ops is not None:
            headers = self.request_ops.apply(headers)
        ops = self.by_cluster.get(cluster)
        if ops is not None and ops[0] is not None:
            headers = ops[0].apply(headers)
        return headers, target

    def edit_response(self, cluster: str, head: ResponseHead) -> ResponseHead:
        """The response head with the destination's, then the route's header operations."""
        headers = head.headers
        ops = self.by_cluster.get(cluster)
        if ops is not None and ops[1] is not None:
            headers = ops[1].apply(headers)
        if self.response_ops is not None:
            headers = self.response_ops.apply(headers)
        if headers is head.headers:
            return head
        return ResponseHead(head.status, head.reason, head.version, headers, head.keep_alive, head.content_length,
                            head.chunked, head.has_body)


def chosen_mirrors(mirrors: list[Mirror]) -> list[Any]:
    """The clusters of the mirrors that copy this request (each by its own share)."""
    return [m.cluster for m in mirrors if m.all or (m.percent and random.random() * 100 < m.percent)]


def mirror_copy(method: bytes, target: bytes, headers: Headers, body: bytes | None) -> bytes:
    """The bytes of a mirror's copy: Host with ``-shadow``, ``connection: close`` (the copy's connection
    is used once) and, with a body, its length (the body was collected de-chunked)."""
    dropped = (b"connection", b"keep-alive", b"content-length") if body is not None else (b"connection",
                                                                                          b"keep-alive")
    shadow: Headers = [(name, shadow_host(value)) if name == b"host" else (name, value)
                       for name, value in headers if name not in dropped]
    shadow.append((b"connection", b"close"))
    if body is None:
        return request_head_out(method, target, shadow)
    shadow.append((b"content-length", b"%d" % len(body)))
    return request_head_out(method, target, shadow) + body


class PendingMirror:
    """A copy waiting for its request's body (bounded by MIRROR_BODY_LIMIT: beyond it the copy is dropped)."""

    __slots__ = ("chunks", "clusters", "exchange", "headers", "method", "size", "target", "timeout")

    def __init__(self, exchange: object, clusters: list[Any], method: bytes, target: bytes, headers: Headers,
                 timeout: float) -> None:
        self.exchange = exchange
        self.clusters = clusters
        self.method = method
        self.target = target
        # A copy: the upstream request's framing is appended to the list it came from.
        self.headers = list(headers)
        self.timeout = timeout
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> bool:
        """Keep a piece of the body; False once the body is over the limit (the copy is given up)."""
        self.size += len(data)
        if self.size > MIRROR_BODY_LIMIT:
            self.chunks = []
            return False
        self.chunks.append(data)
        return True

    def copy(self) -> bytes:
        return mirror_copy(self.method, self.target, self.headers, b"".join(self.chunks))
