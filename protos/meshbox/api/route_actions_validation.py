"""Checks of a route's actions (header operations, rewrite, redirect, mirrors, local rate limit), the same
on a proxy Route and on a RouteRuleSpec (the fields have the same names and shapes), so a rule that
passes here compiles in the proxy."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from meshbox.api.v1 import proxy_config_pb2 as pc

REDIRECT_CODES = (301, 302, 303, 307, 308)
# Headers the proxy frames itself (hop-by-hop, lengths) and Host (rewrite.authority sets it): an
# operation on them would corrupt the message or bypass routing.
UNEDITABLE_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
                                "upgrade", "proxy-connection", "host"})
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


class RouteActionError(ValueError):
    """A route action that cannot be applied; ``path`` is the field below the route."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def check_header_name(name: str, path: str) -> None:
    if not _TOKEN.match(name):
        raise RouteActionError(path, f"not a header name: {name!r}")
    if name.lower() in UNEDITABLE_HEADERS:
        raise RouteActionError(path, f"cannot edit header {name!r} (the proxy frames messages itself; "
                                     "use rewrite.authority for Host)")


def check_header_operations(ops: pc.HeaderOperations, path: str) -> None:
    for kind, values in (("set", ops.set), ("add", ops.add)):
        for i, hv in enumerate(values):
            check_header_name(hv.name, f"{path}.{kind}[{i}].name")
            if any(c in hv.value for c in "\r\n\0"):
                raise RouteActionError(f"{path}.{kind}[{i}].value", "control characters are not allowed")
    for i, name in enumerate(ops.remove):
        check_header_name(name, f"{path}.remove[{i}]")


def check_rewrite(rewrite: pc.RouteRewrite) -> None:
    if rewrite.prefix and not rewrite.prefix.startswith("/"):
        raise RouteActionError("rewrite.prefix", f"must start with '/', got {rewrite.prefix!r}")
    if rewrite.regex_substitution and not rewrite.regex:
        raise RouteActionError("rewrite.regex_substitution", "needs rewrite.regex")
    if rewrite.regex:
        if rewrite.prefix:
            raise RouteActionError("rewrite.regex", "either prefix or regex, not both")
        try:
            pattern = re.compile(rewrite.regex)
        except re.error as exc:
            raise RouteActionError("rewrite.regex", f"not a regular expression: {exc}") from None
        try:
            # A match of the pattern's own groups, all empty, checks every reference of the substitution.
            names = {index: name for name, index in pattern.groupindex.items()}
            empty = "".join(f"(?P<{names[i]}>)" if i in names else "()" for i in range(1, pattern.groups + 1))
            match = re.fullmatch(empty, "")
            assert match is not None
            match.expand(rewrite.regex_substitution)
        except (re.error, IndexError) as exc:
            raise RouteActionError("rewrite.regex_substitution", f"{rewrite.regex_substitution!r}: {exc} "
                                                                 f"({rewrite.regex!r} has {pattern.groups} "
                                                                 "groups)") from None


def check_route_actions(route: Any, mirror_clusters: Iterable[str] | None = None) -> None:
    """A pc.Route or routing_pb2.RouteRuleSpec; ``mirror_clusters``: the names a proxy Route's mirrors
    may use (None for a RouteRuleSpec, whose mirrors name destinations)."""
    for side in ("request_headers", "response_headers"):
        if route.HasField(side):
            check_header_operations(getattr(route, side), side)
    dests = route.clusters if mirror_clusters is not None else route.route
    for i, dest in enumerate(dests):
        for side in ("request_headers", "response_headers"):
            if dest.HasField(side):
                check_header_operations(getattr(dest, side),
                                        f"{'clusters' if mirror_clusters is not None else 'route'}[{i}].{side}")
    if route.HasField("rewrite"):
        check_rewrite(route.rewrite)
    if route.HasField("redirect"):
        r = route.redirect
        if r.code and r.code not in REDIRECT_CODES:
            raise RouteActionError("redirect.code", f"must be one of {', '.join(map(str, REDIRECT_CODES))}, "
                                                    f"got {r.code}")
        if r.scheme not in ("", "http", "https"):
            raise RouteActionError("redirect.scheme", f"http or https, got {r.scheme!r}")
        if r.path and not r.path.startswith("/"):
            raise RouteActionError("redirect.path", f"must start with '/', got {r.path!r}")
        if r.port > 65535:
            raise RouteActionError("redirect.port", f"{r.port} is not a port")
    allowed = set(mirror_clusters) if mirror_clusters is not None else None
    for i, m in enumerate(route.mirrors):
        if not 0 <= m.percent <= 100:
            raise RouteActionError(f"mirrors[{i}].percent", f"must be 0..100, got {m.percent}")
        if allowed is not None and m.cluster not in allowed:
            raise RouteActionError(f"mirrors[{i}].cluster", f"unknown cluster {m.cluster!r}")
    if route.HasField("rate_limit"):
        limit = route.rate_limit
        if limit.max_tokens < 1:
            raise RouteActionError("rate_limit.max_tokens", "must be at least 1")
        if limit.fill_interval.seconds <= 0 and limit.fill_interval.nanos <= 0:
            raise RouteActionError("rate_limit.fill_interval", "must be positive")
