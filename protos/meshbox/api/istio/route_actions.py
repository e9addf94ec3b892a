"""The route actions of an Istio HTTPRoute besides its destinations: `headers` (per route and per
destination), `rewrite`, `redirect`, and `mirror` / `mirrorPercentage` / `mirrors`, read into the
fields of meshbox's RouteRuleSpec and RouteDestination (see docs/traffic.md for what is refused)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshbox.api.istio.fields import PROXY_TODO, Reader
from meshbox.api.istio.objects import check_host, qualify_host
from meshbox.api.route_actions_validation import REDIRECT_CODES, RouteActionError, check_header_name, check_rewrite
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.v1 import routing_pb2

# HTTPRoute fields this module reads.
ACTION_FIELDS = ("headers", "rewrite", "redirect", "mirror", "mirrorPercentage", "mirrorPercent", "mirrors")
# v1alpha3's header fields before `headers` (deprecated, still served): field → (side, operation).
DEPRECATED_HEADER_FIELDS = {
    "appendHeaders": ("request", "add"), "appendRequestHeaders": ("request", "add"),
    "appendResponseHeaders": ("response", "add"), "removeRequestHeaders": ("request", "remove"),
    "removeResponseHeaders": ("response", "remove"),
}


@dataclass(frozen=True)
class Destination:
    """An Istio Destination: its qualified host (None after a finding), port (0: unset) and subset."""

    host: str | None
    port: int
    subset: str


@dataclass(frozen=True)
class MirrorTarget:
    """One mirror of a route: where to, which share (``all``: every request) and its field path."""

    destination: Destination
    percent: float
    all: bool
    path: str


def parse_destination(r: Reader, data: Any, path: str, namespace: str) -> Destination:
    """An Istio Destination (host, subset, port.number)."""
    d = r.fields(data, path, "Destination", ("host", "subset", "port"), {})
    host = r.string(d.get("host"), f"{path}.host", required=True)
    qualified = qualify_host(host, namespace) if host and check_host(r, host, f"{path}.host") else None
    port = 0
    if "port" in d:
        p = r.fields(d["port"], f"{path}.port", "PortSelector", ("number",), {})
        port = r.integer(p.get("number"), f"{path}.port.number", low=1, high=65535) or 0
    return Destination(qualified, port, r.string(d.get("subset"), f"{path}.subset"))


def header_operations(r: Reader, data: Any, path: str, out_request: pc.HeaderOperations,
                      out_response: pc.HeaderOperations, deprecated: str = "") -> None:
    """Istio's Headers (`request` / `response`, each with `set`, `add`, `remove`); ``deprecated``: the
    v1alpha3 field these operations were written as (findings then name it)."""
    f = r.fields(data, path, "Headers", ("request", "response"), {})
    for side, out in (("request", out_request), ("response", out_response)):
        if side not in f:
            continue
        where = f"{path}.{deprecated}" if deprecated else f"{path}.{side}"
        ops = r.fields(f[side], where, "HeaderOperations", ("set", "add", "remove"), {})
        for kind in ("set", "add"):
            for name, value in r.mapping(ops.get(kind), f"{where}.{kind}" if not deprecated else where).items():
                at = f"{where}.{kind}.{name}" if not deprecated else f"{where}.{name}"
                if not isinstance(value, str):
                    r.invalid(at, f"expected a string, got {value!r}")
                elif any(c in value for c in "\r\n\0"):
                    r.invalid(at, "control characters are not allowed in a header value")
                elif _header_name(r, str(name), at):
                    getattr(out, kind).append(pc.HeaderValue(name=str(name).lower(), value=value))
        removes = f"{where}.remove" if not deprecated else where
        for i, name in enumerate(r.strings(ops.get("remove"), removes)):
            if _header_name(r, name, f"{removes}[{i}]"):
                out.remove.append(name.lower())


def deprecated_header_fields(r: Reader, f: Mapping[str, Any], path: str,
                             out_request: pc.HeaderOperations, out_response: pc.HeaderOperations) -> None:
    """v1alpha3's appendHeaders / appendRequestHeaders / appendResponseHeaders (maps of headers to add)
    and removeRequestHeaders / removeResponseHeaders (lists of names), as `headers` would say them."""
    for field, (side, operation) in DEPRECATED_HEADER_FIELDS.items():
        if field in f:
            header_operations(r, {side: {operation: f[field]}}, path, out_request, out_response, field)


def _header_name(r: Reader, name: str, path: str) -> bool:
    try:
        check_header_name(name, path)
    except RouteActionError as exc:
        r.invalid(path, exc.reason)
        return False
    return True


def rewrite(r: Reader, data: Any, path: str, out: pc.RouteRewrite) -> None:
    """Istio's HTTPRewrite: `uri` replaces the matched prefix, `uriRegexRewrite` rewrites the path by a
    regular expression, `authority` replaces the Host."""
    f = r.fields(data, path, "HTTPRewrite", ("uri", "authority", "uriRegexRewrite"), {})
    out.prefix = r.string(f.get("uri"), f"{path}.uri")
    out.authority = r.string(f.get("authority"), f"{path}.authority")
    if "uriRegexRewrite" in f:
        where = f"{path}.uriRegexRewrite"
        g = r.fields(f["uriRegexRewrite"], where, "RegexRewrite", ("match", "rewrite"), {})
        out.regex = r.string(g.get("match"), f"{where}.match", required=True)
        out.regex_substitution = r.string(g.get("rewrite"), f"{where}.rewrite")
        if out.prefix:
            r.invalid(where, "uri and uriRegexRewrite cannot both be set")
        elif out.regex:
            try:
                check_rewrite(out)
            except RouteActionError as exc:
                r.invalid(where, exc.reason)
    if not out.prefix and not out.authority and not out.regex:
        r.invalid(path, "uri, uriRegexRewrite or authority is required")


def redirect(r: Reader, data: Any, path: str, out: pc.RouteRedirect) -> None:
    """Istio's HTTPRedirect, answered by the proxy."""
    f = r.fields(data, path, "HTTPRedirect", ("uri", "authority", "port", "scheme", "redirectCode"),
                 {"derivePort": PROXY_TODO})
    out.path = r.string(f.get("uri"), f"{path}.uri")
    if out.path and not out.path.startswith("/"):
        r.invalid(f"{path}.uri", f"a path starts with '/', got {out.path!r}")
    out.authority = r.string(f.get("authority"), f"{path}.authority")
    if "port" in f:
        out.port = r.integer(f["port"], f"{path}.port", low=1, high=65535) or 0
    out.scheme = r.string(f.get("scheme"), f"{path}.scheme")
    if out.scheme not in ("", "http", "https"):
        r.invalid(f"{path}.scheme", f"http or https, got {out.scheme!r}")
    if "redirectCode" in f:
        code = r.integer(f["redirectCode"], f"{path}.redirectCode", low=300, high=399) or 0
        if code and code not in REDIRECT_CODES:
            r.invalid(f"{path}.redirectCode", f"one of {', '.join(map(str, REDIRECT_CODES))}, got {code}")
        out.code = code


def mirrors(r: Reader, f: Mapping[str, Any], path: str, namespace: str) -> list[MirrorTarget]:
    """`mirror` with `mirrorPercentage` (or the deprecated integer `mirrorPercent`), and `mirrors`; no
    percentage means every request, as in Istio."""
    out = []
    if "mirror" in f:
        if "mirrors" in f:
            r.invalid(f"{path}.mirrors", "use either mirror or mirrors, not both")
        share = _share(r, f, "mirrorPercentage", "mirrorPercent", path)
        out.append(MirrorTarget(parse_destination(r, f["mirror"], f"{path}.mirror", namespace),
                                share or 0.0, share is None, f"{path}.mirror"))
    elif "mirrorPercentage" in f or "mirrorPercent" in f:
        r.invalid(f"{path}.mirrorPercentage", "needs mirror")
    for i, item in enumerate(r.items(f.get("mirrors"), f"{path}.mirrors")):
        where = f"{path}.mirrors[{i}]"
        m = r.fields(item, where, "HTTPMirrorPolicy", ("destination", "percentage"), {})
        share = _share(r, m, "percentage", "", where)
        out.append(MirrorTarget(parse_destination(r, m.get("destination"), f"{where}.destination", namespace),
                                share or 0.0, share is None, f"{where}.destination"))
    return out


def _share(r: Reader, f: Mapping[str, Any], percentage: str, percent: str, path: str) -> float | None:
    if percentage in f:
        p = r.fields(f[percentage], f"{path}.{percentage}", "Percent", ("value",), {})
        return r.number(p.get("value", 0), f"{path}.{percentage}.value", low=0, high=100) or 0.0
    if percent and percent in f:
        return float(r.integer(f[percent], f"{path}.{percent}", low=0, high=100) or 0)
    return None


def mirror_spec(target: MirrorTarget, host: str) -> routing_pb2.RouteMirrorSpec:
    """The mirror of a route translated for ``host`` (a mirror on that host names its subset only)."""
    d = target.destination
    dest = routing_pb2.RouteDestination(subset=d.subset)
    if d.host is not None and d.host != host:
        dest.host, dest.port = d.host, d.port
    return routing_pb2.RouteMirrorSpec(destination=dest, percent=target.percent, all=target.all)
