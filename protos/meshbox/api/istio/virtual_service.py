"""Istio VirtualService (networking.istio.io v1, v1beta1, v1alpha3) → meshbox RouteRuleSpecs.

Each HTTP route becomes one RouteRuleSpec per host and per match alternative, in order, so the
first matching route wins as in Istio. Subsets are kept by name here; their labels come from the
host's DestinationRule when the registry resolves references (meshbox.api.istio.references).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshbox.api.grpc_codes import code_of as grpc_code_of
from meshbox.api.istio.fields import MESH_TODO, PROXY_TODO, Reader
from meshbox.api.istio.findings import ERROR, Finding
from meshbox.api.istio.objects import check_host, metadata, qualify_host, resource_label
from meshbox.api.istio.route_actions import (
    ACTION_FIELDS,
    DEPRECATED_HEADER_FIELDS,
    deprecated_header_fields,
    header_operations,
    mirror_spec,
    mirrors,
    parse_destination,
    redirect,
    rewrite,
)
from meshbox.api.retry_on import RETRY_ON
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.v1 import routing_pb2

# Envoy retry conditions meshbox's proxy does not implement (refused by name; others are typos).
RETRY_ON_REFUSED = ("retriable-headers", "envoy-ratelimited", "http3-post-connect-failure", "reset-before-request")
MESH_GATEWAY = "mesh"

_SPEC_REFUSED = {
    "tcp": f"TCP routes: {MESH_TODO} (non-HTTP ports are proxied at L4 to the whole Service)",
    "tls": f"TLS routes: {MESH_TODO}",
    "exportTo": f"exportTo: {MESH_TODO} (every route applies mesh-wide)",
}
_HTTP_REFUSED = {
    "directResponse": PROXY_TODO, "delegate": MESH_TODO, "corsPolicy": PROXY_TODO, "websocketUpgrade": PROXY_TODO,
}
_MATCH_REFUSED = {
    "scheme": PROXY_TODO, "method": PROXY_TODO, "authority": PROXY_TODO, "queryParams": PROXY_TODO,
    "ignoreUriCase": PROXY_TODO, "withoutHeaders": PROXY_TODO, "sourceLabels": MESH_TODO,
    "sourceNamespace": MESH_TODO, "statPrefix": PROXY_TODO,
}
_RETRY_REFUSED = {"retryRemoteLocalities": PROXY_TODO, "retryIgnorePreviousHosts": PROXY_TODO}
_HEADER_NAME = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")


@dataclass(frozen=True)
class HostRule:
    """One translated route for one host; ``path`` is where it came from (for findings)."""

    path: str
    spec: routing_pb2.RouteRuleSpec  # destination = the host's FQDN; route[].subset by name, labels unresolved
    # Where each of spec.mirrors came from (``...mirror`` or ``...mirrors[i].destination``).
    mirror_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class VirtualService:
    name: str
    namespace: str
    source: str
    hosts: tuple[str, ...]  # fully qualified, in order, without duplicates
    rules: tuple[HostRule, ...]

    @property
    def resource(self) -> str:
        return f"VirtualService {self.namespace}/{self.name}"


def translate_virtual_service(doc: Mapping[str, Any], *, source: str) -> tuple[VirtualService | None, list[Finding]]:
    """The object's routes, or None with the findings that keep it out (never a partial translation)."""
    r = Reader(source, resource_label(doc))
    name, namespace = metadata(r, doc)
    spec = r.fields(doc.get("spec"), "spec", "VirtualService", ("hosts", "gateways", "http"), _SPEC_REFUSED)
    _gateways(r, spec.get("gateways"), "spec.gateways")
    hosts: list[str] = []
    for i, host in enumerate(r.strings(spec.get("hosts"), "spec.hosts")):
        if check_host(r, host, f"spec.hosts[{i}]") and qualify_host(host, namespace) not in hosts:
            hosts.append(qualify_host(host, namespace))
    if not hosts:
        r.invalid("spec.hosts", "at least one host is required")
    rules: list[HostRule] = []
    for i, item in enumerate(r.items(spec.get("http"), "spec.http")):
        rules.extend(_http_route(r, item, f"spec.http[{i}]", hosts, namespace))
    if any(f.severity == ERROR for f in r.findings):
        return None, r.findings
    return VirtualService(name, namespace, source, tuple(hosts), tuple(rules)), r.findings


def _gateways(r: Reader, value: Any, path: str) -> None:
    for i, gateway in enumerate(r.strings(value, path)):
        if gateway != MESH_GATEWAY:
            r.refuse(f"{path}[{i}]", f"gateways: {MESH_TODO} (only the sidecars' {MESH_GATEWAY!r})")


def _http_route(r: Reader, data: Any, path: str, hosts: list[str], namespace: str) -> list[HostRule]:
    f = r.fields(data, path, "HTTPRoute", ("name", "match", "route", "timeout", "retries", "fault", *ACTION_FIELDS,
                                           *DEPRECATED_HEADER_FIELDS), _HTTP_REFUSED)
    r.string(f.get("name"), f"{path}.name")
    action = routing_pb2.RouteRuleSpec()
    dest_headers: list[routing_pb2.RouteDestination] = []
    destinations = _destinations(r, f.get("route"), f"{path}.route", namespace, dest_headers)
    if "redirect" in f:
        if destinations:
            r.invalid(f"{path}.redirect", "a route has either destinations (route) or a redirect, not both")
        redirect(r, f["redirect"], f"{path}.redirect", action.redirect)
    elif not destinations:
        r.invalid(f"{path}.route", "at least one destination is required")
    if "headers" in f:
        header_operations(r, f["headers"], f"{path}.headers", action.request_headers, action.response_headers)
    deprecated_header_fields(r, f, path, action.request_headers, action.response_headers)
    if "rewrite" in f:
        rewrite(r, f["rewrite"], f"{path}.rewrite", action.rewrite)
    mirror_targets = mirrors(r, f, path, namespace)
    if "timeout" in f and (timeout := r.duration(f["timeout"], f"{path}.timeout")) is not None:
        if timeout.seconds == 0 and timeout.nanos == 0:
            r.refuse(f"{path}.timeout", f"0s (no timeout): {PROXY_TODO}; the proxy's default is 15s")
        action.timeout.CopyFrom(timeout)
    if "retries" in f:
        _retries(r, f["retries"], f"{path}.retries", action.retries)
    if "fault" in f:
        _fault(r, f["fault"], f"{path}.fault", action.fault)
    matches = [(f"{path}.match[{i}]", m) for i, m in enumerate(r.items(f.get("match"), f"{path}.match"))]
    rules = []
    for host in hosts:
        for where, match in matches or [(path, None)]:
            spec = routing_pb2.RouteRuleSpec()
            spec.CopyFrom(action)
            spec.destination = host
            _match(r, match, where, spec)
            # Destinations on the requested host may name its port: the route then applies to that port.
            ports = {p for h, p, _, _ in destinations if p and h == host}
            if len(ports) > 1:
                r.refuse(f"{path}.route", f"destinations on different ports of {host}: {MESH_TODO}")
            if ports and spec.port and spec.port not in ports:
                r.refuse(f"{path}.route", f"forwarding port {spec.port} to another port: {MESH_TODO}")
            spec.port = spec.port or next(iter(ports), 0)
            for (dest_host, port, subset, weight), headers in zip(destinations, dest_headers, strict=True):
                if dest_host is None or dest_host == host:
                    spec.route.append(routing_pb2.RouteDestination(subset=subset, weight=weight))
                else:  # another host's cluster; its port is resolved against the host's ports
                    spec.route.append(routing_pb2.RouteDestination(subset=subset, weight=weight, host=dest_host,
                                                                   port=port))
                spec.route[-1].MergeFrom(headers)
            spec.mirrors.extend(mirror_spec(m, host) for m in mirror_targets)
            rules.append(HostRule(where, spec, tuple(m.path for m in mirror_targets)))
    _check_weights(r, [w for *_, w in destinations], f"{path}.route")
    return rules


def _destinations(r: Reader, value: Any, path: str, namespace: str,
                  headers: list[routing_pb2.RouteDestination]) -> list[tuple[str | None, int, str, int]]:
    """(qualified host, port, subset, weight) of each destination; its header operations are appended to
    ``headers`` (one RouteDestination holding only them per destination)."""
    result = []
    items = r.items(value, path)
    for i, item in enumerate(items):
        where = f"{path}[{i}]"
        f = r.fields(item, where, "HTTPRouteDestination", ("destination", "weight", "headers"), {})
        d = parse_destination(r, f.get("destination"), f"{where}.destination", namespace)
        weight = 100 if len(items) == 1 and "weight" not in f else \
            r.integer(f.get("weight", 0), f"{where}.weight", low=0, high=100) or 0
        result.append((d.host, d.port, d.subset, weight))
        ops = routing_pb2.RouteDestination()
        if "headers" in f:
            header_operations(r, f["headers"], f"{where}.headers", ops.request_headers, ops.response_headers)
        headers.append(ops)
    return result


def _check_weights(r: Reader, weights: list[int], path: str) -> None:
    if len(weights) > 1 and sum(weights) != 100:
        r.invalid(path, f"destination weights must add up to 100, got {sum(weights)}")


def _match(r: Reader, data: Any, path: str, spec: routing_pb2.RouteRuleSpec) -> None:
    if data is None:
        return
    f = r.fields(data, path, "HTTPMatchRequest", ("name", "uri", "headers", "port", "gateways"), _MATCH_REFUSED)
    r.string(f.get("name"), f"{path}.name")
    _gateways(r, f.get("gateways"), f"{path}.gateways")
    if "port" in f:
        spec.port = r.integer(f["port"], f"{path}.port", low=1, high=65535) or 0
    if "uri" in f:
        kind, value = _string_match(r, f["uri"], f"{path}.uri")
        if kind == "prefix":
            if not value.startswith("/"):
                r.invalid(f"{path}.uri.prefix", f"a path prefix starts with '/', got {value!r}")
            spec.match.path_prefix = value
        elif kind:
            r.refuse(f"{path}.uri.{kind}", f"{PROXY_TODO} (it matches path prefixes)")
    for name, value in r.mapping(f.get("headers"), f"{path}.headers").items():
        where = f"{path}.headers.{name}"
        if not _HEADER_NAME.match(str(name)):
            r.invalid(where, "header names are lower-case tokens")
            continue
        kind, text = _string_match(r, value, where)
        if kind:
            spec.match.headers.append(pc.HeaderMatch(name=str(name), **{kind: text}))


def _string_match(r: Reader, data: Any, path: str) -> tuple[str, str]:
    """(exact|prefix|regex, value) of an Istio StringMatch; ('', '') after a finding."""
    f = r.fields(data, path, "StringMatch", ("exact", "prefix", "regex"), {})
    if len(f) != 1:
        r.invalid(path, "exactly one of exact, prefix, regex is required")
        return "", ""
    kind, value = next(iter(f.items()))
    if not isinstance(value, str):
        r.invalid(f"{path}.{kind}", f"expected a string, got {value!r}")
        return "", ""
    if kind == "regex":
        try:
            re.compile(value)
        except re.error as exc:
            r.invalid(f"{path}.regex", f"not a regular expression: {exc}")
            return "", ""
    return kind, value


def _retries(r: Reader, data: Any, path: str, out: pc.RetryPolicy) -> None:
    f = r.fields(data, path, "HTTPRetry", ("attempts", "perTryTimeout", "retryOn", "backoff"), _RETRY_REFUSED)
    out.attempts = r.integer(f.get("attempts", 0), f"{path}.attempts", low=0, high=100) or 0
    if "perTryTimeout" in f and (d := r.duration(f["perTryTimeout"], f"{path}.perTryTimeout")) is not None:
        out.per_try_timeout.CopyFrom(d)
    if "backoff" in f and (d := r.duration(f["backoff"], f"{path}.backoff")) is not None:
        # The base interval of Envoy's exponential backoff with full jitter (at most 10 times it).
        out.backoff_base_interval.CopyFrom(d)
    _retry_on(r, r.string(f.get("retryOn"), f"{path}.retryOn"), f"{path}.retryOn", out)


def _retry_on(r: Reader, text: str, path: str, out: pc.RetryPolicy) -> None:
    """Istio's comma-separated conditions; a number is a retriable status code (Istio's shorthand
    for retriable-status-codes with that code)."""
    for condition in (c.strip() for c in text.split(",")):
        if not condition:
            continue
        if condition.isdigit():
            code = int(condition)
            if not 100 <= code <= 599:
                r.invalid(path, f"status code {condition} is not 100..599")
            elif code not in out.retriable_status_codes:
                out.retriable_status_codes.append(code)
                if "retriable-status-codes" not in out.retry_on:
                    out.retry_on.append("retriable-status-codes")
        elif condition in RETRY_ON:
            if condition not in out.retry_on:
                out.retry_on.append(condition)
        elif condition in RETRY_ON_REFUSED:
            r.refuse(path, f"{condition}: {PROXY_TODO} (it has {', '.join(RETRY_ON)})")
        else:
            r.invalid(path, f"unknown retry condition {condition!r} (known: {', '.join(RETRY_ON)})")


def _percent(r: Reader, f: Mapping[str, Any], path: str) -> float:
    """Istio's `percentage.value` (or the deprecated integer `percent`); unset means none."""
    if "percentage" in f:
        p = r.fields(f["percentage"], f"{path}.percentage", "Percent", ("value",), {})
        return r.number(p.get("value", 0), f"{path}.percentage.value", low=0, high=100) or 0.0
    if "percent" in f:
        return float(r.integer(f["percent"], f"{path}.percent", low=0, high=100) or 0)
    return 0.0


def _fault(r: Reader, data: Any, path: str, out: pc.FaultInjection) -> None:
    f = r.fields(data, path, "HTTPFaultInjection", ("delay", "abort"), {})
    if "delay" in f:
        where = f"{path}.delay"
        d = r.fields(f["delay"], where, "HTTPFaultInjection.Delay", ("fixedDelay", "percentage", "percent"),
                     {"exponentialDelay": PROXY_TODO})
        out.delay.percent = _percent(r, d, where)
        if (fixed := r.duration(d.get("fixedDelay"), f"{where}.fixedDelay")) is not None:
            out.delay.fixed_delay.CopyFrom(fixed)
    if "abort" in f:
        where = f"{path}.abort"
        a = r.fields(f["abort"], where, "HTTPFaultInjection.Abort",
                     ("httpStatus", "grpcStatus", "percentage", "percent"), {"http2Error": PROXY_TODO})
        out.abort.percent = _percent(r, a, where)
        if "httpStatus" in a and "grpcStatus" in a:
            r.invalid(f"{where}.grpcStatus", "cannot be set together with httpStatus (one error type)")
        if "httpStatus" in a:
            out.abort.http_status = r.integer(a["httpStatus"], f"{where}.httpStatus", low=200, high=599) or 0
        elif "grpcStatus" in a:
            try:
                out.abort.grpc_status = grpc_code_of(r.string(a["grpcStatus"], f"{where}.grpcStatus"))
            except ValueError as exc:
                r.invalid(f"{where}.grpcStatus", str(exc))
        elif not any(k in r.mapping(f["abort"], where) for k in ("grpcStatus", "grpc_status", "http2Error",
                                                                  "http2_error")):
            r.invalid(f"{where}.httpStatus", "is required")
