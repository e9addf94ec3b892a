"""Istio's 0.2–0.8 route rules (config.istio.io/v1alpha2 RouteRule, DestinationPolicy) → meshbox's model.

The API of the seed's time: a RouteRule names its destination service, a precedence, one match
(request headers, with the pseudo-header ``uri`` for the path) and weighted routes to pod labels,
which is meshbox's own RouteRuleSpec almost field for field. A DestinationPolicy sets the load
balancer of a destination. Fields meshbox does not implement are refused by name, as for the
networking.istio.io kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshbox.api.istio.fields import MESH_TODO, PROXY_TODO, Reader
from meshbox.api.istio.findings import ERROR, Finding
from meshbox.api.istio.objects import check_host, metadata, qualify_host, resource_label
from meshbox.api.route_actions_validation import RouteActionError, check_header_name
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.v1 import routing_pb2

API_VERSION = "config.istio.io/v1alpha2"
KINDS = ("RouteRule", "DestinationPolicy")
_RULE_REFUSED = {"websocketUpgrade": PROXY_TODO, "l4Fault": PROXY_TODO, "corsPolicy": PROXY_TODO}
_RULE_ACTIONS = ("redirect", "rewrite", "mirror", "appendHeaders")
_SERVICE_FIELDS = ("name", "namespace", "domain", "service")
_LB = {"ROUND_ROBIN": pc.ROUND_ROBIN, "LEAST_CONN": pc.LEAST_REQUEST, "RANDOM": pc.RANDOM}


def is_istio_legacy(doc: Mapping[str, Any]) -> bool:
    """Whether a document is a config.istio.io/v1alpha2 RouteRule or DestinationPolicy."""
    return doc.get("apiVersion") == API_VERSION and doc.get("kind") in KINDS


@dataclass(frozen=True)
class LegacyRouteRule:
    name: str
    namespace: str
    source: str
    spec: routing_pb2.RouteRuleSpec  # destination = the service's FQDN

    @property
    def resource(self) -> str:
        return f"RouteRule {self.namespace}/{self.name}"


@dataclass(frozen=True)
class LegacyDestinationPolicy:
    name: str
    namespace: str
    source: str
    spec: routing_pb2.DestinationPolicySpec

    @property
    def resource(self) -> str:
        return f"DestinationPolicy {self.namespace}/{self.name}"


def _service(r: Reader, data: Any, path: str, namespace: str, *, labels_refused: str) -> str:
    """An IstioService → the FQDN it names ('' after a finding)."""
    f = r.fields(data, path, "IstioService", _SERVICE_FIELDS, {"labels": labels_refused})
    if "service" in f:
        host = r.string(f["service"], f"{path}.service")
    else:
        host = r.string(f.get("name"), f"{path}.name", required=True)
        ns = r.string(f.get("namespace"), f"{path}.namespace") or namespace
        domain = r.string(f.get("domain"), f"{path}.domain") or "cluster.local"
        if host and domain != "cluster.local":
            r.refuse(f"{path}.domain", f"{domain!r}: {MESH_TODO} (the cluster domain is cluster.local)")
        host = f"{host}.{ns}" if host and "." not in host else host
    return qualify_host(host, namespace) if host and check_host(r, host, path) else ""


def translate_legacy_route_rule(doc: Mapping[str, Any], *,
                                source: str) -> tuple[LegacyRouteRule | None, list[Finding]]:
    """A v1alpha2 RouteRule as a meshbox RouteRuleSpec, or None with the findings that keep it out."""
    r = Reader(source, resource_label(doc))
    name, namespace = metadata(r, doc)
    f = r.fields(doc.get("spec"), "spec", "RouteRule",
                 ("destination", "precedence", "match", "route", "httpReqTimeout", "httpReqRetries", "httpFault",
                  *_RULE_ACTIONS), _RULE_REFUSED)
    spec = routing_pb2.RouteRuleSpec(destination=_service(
        r, f.get("destination"), "spec.destination", namespace,
        labels_refused=f"rules for some pods of the destination only: {MESH_TODO}"))
    if not spec.destination and "destination" not in f:
        r.invalid("spec.destination", "is required")
    spec.precedence = r.integer(f.get("precedence", 0), "spec.precedence", low=-(2**31), high=2**31 - 1) or 0
    _match(r, f.get("match"), "spec.match", spec)
    routes = r.items(f.get("route"), "spec.route")
    for i, item in enumerate(routes):
        path = f"spec.route[{i}]"
        d = r.fields(item, path, "DestinationWeight", ("labels", "weight"),
                     {"destination": f"routing to another service: {MESH_TODO}"})
        weight = 100 if len(routes) == 1 and "weight" not in d else \
            r.integer(d.get("weight", 0), f"{path}.weight", low=0, high=100) or 0
        spec.route.add(labels=r.labels(d.get("labels"), f"{path}.labels"), weight=weight)
    if len(routes) > 1 and sum(d.weight for d in spec.route) != 100:
        r.invalid("spec.route", f"weights must add up to 100, got {sum(d.weight for d in spec.route)}")
    if "httpReqTimeout" in f:
        where = "spec.httpReqTimeout"
        t = r.fields(f["httpReqTimeout"], where, "HTTPTimeout", ("simpleTimeout",), {"custom": MESH_TODO})
        s = r.fields(t.get("simpleTimeout"), f"{where}.simpleTimeout", "SimpleTimeoutPolicy", ("timeout",),
                     {"overrideHeaderName": PROXY_TODO})
        if "timeout" in s and (limit := r.duration(s["timeout"], f"{where}.simpleTimeout.timeout")) is not None:
            spec.timeout.CopyFrom(limit)
    if "httpReqRetries" in f:
        t = r.fields(f["httpReqRetries"], "spec.httpReqRetries", "HTTPRetry", ("simpleRetry",), {"custom": MESH_TODO})
        where = "spec.httpReqRetries.simpleRetry"
        s = r.fields(t.get("simpleRetry"), where, "SimpleRetryPolicy", ("attempts", "perTryTimeout"),
                     {"overrideHeaderName": PROXY_TODO})
        spec.retries.attempts = r.integer(s.get("attempts", 0), f"{where}.attempts", low=0, high=100) or 0
        if "perTryTimeout" in s and (per_try := r.duration(s["perTryTimeout"], f"{where}.perTryTimeout")) is not None:
            spec.retries.per_try_timeout.CopyFrom(per_try)
    if "httpFault" in f:
        _fault(r, f["httpFault"], "spec.httpFault", spec.fault)
    _actions(r, f, spec, namespace)
    if any(x.severity == ERROR for x in r.findings):
        return None, r.findings
    return LegacyRouteRule(name, namespace, source, spec), r.findings


def _actions(r: Reader, f: Mapping[str, Any], spec: routing_pb2.RouteRuleSpec, namespace: str) -> None:
    """v1alpha2's rewrite, redirect ({uri, authority}), appendHeaders (request headers added) and mirror
    (pods of the same destination, by labels)."""
    for kind, out in (("rewrite", spec.rewrite), ("redirect", spec.redirect)):
        if kind in f:
            where = f"spec.{kind}"
            d = r.fields(f[kind], where, f"HTTP{kind.capitalize()}", ("uri", "authority"), {})
            uri = r.string(d.get("uri"), f"{where}.uri")
            if kind == "redirect":
                spec.redirect.path = uri
                if "route" in f:
                    r.invalid(where, "a rule has either route or redirect, not both")
            else:
                spec.rewrite.prefix = uri
            out.authority = r.string(d.get("authority"), f"{where}.authority")
            if uri and not uri.startswith("/"):
                r.invalid(f"{where}.uri", f"a path starts with '/', got {uri!r}")
    for name, value in r.mapping(f.get("appendHeaders"), "spec.appendHeaders").items():
        where = f"spec.appendHeaders.{name}"
        try:
            check_header_name(str(name), where)
        except RouteActionError as exc:
            r.invalid(where, exc.reason)
            continue
        if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
            r.invalid(where, f"expected a header value (a string without control characters), got {value!r}")
            continue
        spec.request_headers.add.append(pc.HeaderValue(name=str(name).lower(), value=value))
    if "mirror" in f:
        m = r.fields(f["mirror"], "spec.mirror", "IstioService", (*_SERVICE_FIELDS, "labels"), {})
        labels = r.labels(m.get("labels"), "spec.mirror.labels")
        target = _service(r, {k: v for k, v in m.items() if k != "labels"}, "spec.mirror", namespace,
                          labels_refused="")
        if target and target != spec.destination:
            r.refuse("spec.mirror", f"mirroring to another service than the destination: {MESH_TODO}")
        spec.mirrors.add(destination=routing_pb2.RouteDestination(labels=labels), all=True)


def _match(r: Reader, data: Any, path: str, spec: routing_pb2.RouteRuleSpec) -> None:
    f = r.fields(data, path, "MatchCondition", ("request",), {"source": MESH_TODO, "tcp": MESH_TODO,
                                                              "udp": MESH_TODO})
    req = r.fields(f.get("request"), f"{path}.request", "MatchRequest", ("headers",), {})
    for header, value in r.mapping(req.get("headers"), f"{path}.request.headers").items():
        where = f"{path}.request.headers.{header}"
        m = r.fields(value, where, "StringMatch", ("exact", "prefix", "regex"), {})
        if len(m) != 1 or not all(isinstance(v, str) for v in m.values()):
            r.invalid(where, "exactly one of exact, prefix, regex (a string) is required")
            continue
        kind, text = next(iter(m.items()))
        if str(header).lower() == "uri":  # the path, as a pseudo-header
            if kind == "prefix":
                spec.match.path_prefix = text
            else:
                r.refuse(f"{where}.{kind}", f"{PROXY_TODO} (it matches path prefixes)")
        else:
            spec.match.headers.append(pc.HeaderMatch(name=str(header).lower(), **{kind: text}))


def _fault(r: Reader, data: Any, path: str, out: pc.FaultInjection) -> None:
    f = r.fields(data, path, "HTTPFaultInjection", ("delay", "abort"), {})
    if "delay" in f:
        d = r.fields(f["delay"], f"{path}.delay", "Delay", ("percent", "fixedDelay"),
                     {"exponentialDelay": PROXY_TODO, "overrideHeaderName": PROXY_TODO})
        out.delay.percent = r.number(d.get("percent", 100), f"{path}.delay.percent", low=0, high=100) or 0.0
        if (fixed := r.duration(d.get("fixedDelay"), f"{path}.delay.fixedDelay")) is not None:
            out.delay.fixed_delay.CopyFrom(fixed)
    if "abort" in f:
        a = r.fields(f["abort"], f"{path}.abort", "Abort", ("percent", "httpStatus"),
                     {"grpcStatus": PROXY_TODO, "http2Error": PROXY_TODO, "overrideHeaderName": PROXY_TODO})
        out.abort.percent = r.number(a.get("percent", 100), f"{path}.abort.percent", low=0, high=100) or 0.0
        out.abort.http_status = r.integer(a.get("httpStatus"), f"{path}.abort.httpStatus", low=200, high=599) or 0


def translate_destination_policy(doc: Mapping[str, Any], *,
                                 source: str) -> tuple[LegacyDestinationPolicy | None, list[Finding]]:
    """A v1alpha2 DestinationPolicy as a DestinationPolicySpec, or None with the findings that keep it out."""
    r = Reader(source, resource_label(doc))
    name, namespace = metadata(r, doc)
    f = r.fields(doc.get("spec"), "spec", "DestinationPolicy", ("destination", "loadBalancing", "circuitBreaker"),
                 {"source": MESH_TODO, "custom": MESH_TODO})
    spec = routing_pb2.DestinationPolicySpec(destination=_service(
        r, f.get("destination"), "spec.destination", namespace,
        labels_refused=f"policies for some pods of the destination only: {MESH_TODO}"))
    if "loadBalancing" in f:
        lb = r.fields(f["loadBalancing"], "spec.loadBalancing", "LoadBalancing", ("name",), {"custom": MESH_TODO})
        policy = lb.get("name")
        if policy in _LB:
            spec.policy.lb_policy = _LB[policy]
        elif policy is not None:
            r.invalid("spec.loadBalancing.name", f"expected ROUND_ROBIN, LEAST_CONN or RANDOM, got {policy!r}")
    if "circuitBreaker" in f:
        _circuit_breaker(r, f["circuitBreaker"], "spec.circuitBreaker", spec.policy)
    if any(x.severity == ERROR for x in r.findings):
        return None, r.findings
    return LegacyDestinationPolicy(name, namespace, source, spec), r.findings


def _circuit_breaker(r: Reader, data: Any, path: str, out: routing_pb2.ClusterPolicy) -> None:
    """v1alpha2 circuitBreaker.simpleCb: the connection limits and outlier detection of its time."""
    t = r.fields(data, path, "CircuitBreaker", ("simpleCb",), {"custom": MESH_TODO})
    where = f"{path}.simpleCb"
    cb = r.fields(t.get("simpleCb"), where, "SimpleCircuitBreakerPolicy",
                  ("maxConnections", "httpMaxPendingRequests", "httpMaxRequests", "sleepWindow",
                   "httpConsecutiveErrors", "httpDetectionInterval", "httpMaxRequestsPerConnection",
                   "httpMaxEjectionPercent", "httpMaxRetries"), {})
    limits = out.circuit_breakers
    for name, field in (("maxConnections", "max_connections"), ("httpMaxPendingRequests", "max_pending_requests"),
                        ("httpMaxRequests", "max_requests"), ("httpMaxRetries", "max_retries"),
                        ("httpMaxRequestsPerConnection", "max_requests_per_connection")):
        if name in cb:
            setattr(limits, field, r.integer(cb[name], f"{where}.{name}", low=0, high=2**31 - 1) or 0)
    if any(k in cb for k in ("httpConsecutiveErrors", "sleepWindow", "httpDetectionInterval",
                             "httpMaxEjectionPercent")):
        od = out.outlier_detection
        od.consecutive_5xx = r.integer(cb.get("httpConsecutiveErrors", 5), f"{where}.httpConsecutiveErrors",
                                       low=0, high=2**31 - 1) or 0
        od.max_ejection_percent = r.integer(cb.get("httpMaxEjectionPercent", 10), f"{where}.httpMaxEjectionPercent",
                                            low=0, high=100) or 0
        for name, duration in (("sleepWindow", od.base_ejection_time), ("httpDetectionInterval", od.interval)):
            if name in cb and (d := r.duration(cb[name], f"{where}.{name}")) is not None:
                duration.CopyFrom(d)
