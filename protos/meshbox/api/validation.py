"""Semantic checks of config-model messages, shared by every component.

The loader checks shape (field names, types); these check meaning (port ranges,
CIDRs, references between resources). The proxy and the discovery server run
them before accepting a config, so an invalid one is refused (NACKed) whole.
"""

from __future__ import annotations

import ipaddress
import re

from meshbox.api.identity import IdentityError, check_namespace, check_trust_domain, parse_spiffe_id
from meshbox.api.resilience_rules import cluster_problems, retry_policy_problems
from meshbox.api.route_actions_validation import RouteActionError, check_route_actions
from meshbox.api.v1 import mesh_config_pb2, proxy_config_pb2, routing_pb2, security_pb2


class ValidationError(ValueError):
    """A config that parses but cannot be applied; the message names source and field."""

    def __init__(self, reason: str, *, source: str = "<config>", path: str = "") -> None:
        self.reason = reason
        self.source = source
        self.path = path
        super().__init__(f"{source}: {path}: {reason}" if path else f"{source}: {reason}")


def check_port(value: int, *, source: str, path: str, allow_zero: bool = False) -> None:
    """Raise ValidationError unless value is a TCP port (1..65535, or 0 when allowed)."""
    if allow_zero and value == 0:
        return
    if not 1 <= value <= 65535:
        raise ValidationError(f"port must be 1..65535, got {value}", source=source, path=path)


def check_cidr(value: str, *, source: str, path: str, allow_wildcard: bool) -> None:
    """Raise ValidationError unless value is an IPv4/IPv6 CIDR (or '*' where allowed)."""
    if value == "*":
        if allow_wildcard:
            return
        raise ValidationError("'*' is not allowed here", source=source, path=path)
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValidationError(f"not a CIDR: {value!r}", source=source, path=path) from None


# Image references as the OCI distribution spec allows them: a hub is a registry host
# (optionally with a port) and/or lower-case path components; a tag is up to 128 word
# characters, dots and dashes, not starting with either.
_IMAGE_HUB = re.compile(r"[a-z0-9]+(?:[.-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def check_image_hub(value: str, *, source: str, path: str) -> None:
    """Raise ValidationError unless value can prefix an image name (e.g. docker.io/meshbox)."""
    if not _IMAGE_HUB.fullmatch(value):
        raise ValidationError(f"not an image registry/repository prefix: {value!r}", source=source, path=path)


def check_image_tag(value: str, *, source: str, path: str) -> None:
    """Raise ValidationError unless value is a valid image tag (e.g. 0.1.0)."""
    if not _IMAGE_TAG.fullmatch(value):
        raise ValidationError(f"not an image tag: {value!r}", source=source, path=path)


def validate_mesh_config(config: mesh_config_pb2.MeshConfig, *, source: str = "<mesh config>") -> None:
    """Check ports, UIDs and CIDR lists of a MeshConfig."""
    ports = config.ports
    check_port(ports.outbound_capture, source=source, path="ports.outbound_capture")
    check_port(ports.inbound_capture, source=source, path="ports.inbound_capture", allow_zero=True)
    check_port(ports.admin, source=source, path="ports.admin")
    check_port(ports.agent_status, source=source, path="ports.agent_status")
    used: dict[int, str] = {}
    for name in ("outbound_capture", "inbound_capture", "admin", "agent_status"):
        port = getattr(ports, name)
        if port and port in used and not (name == "inbound_capture" and used[port] == "outbound_capture"):
            raise ValidationError(f"port {port} is also {used[port]}", source=source, path=f"ports.{name}")
        used.setdefault(port, name)
    for i, cidr in enumerate(config.include_outbound_cidrs):
        check_cidr(cidr, source=source, path=f"include_outbound_cidrs[{i}]", allow_wildcard=True)
    for i, cidr in enumerate(config.exclude_outbound_cidrs):
        check_cidr(cidr, source=source, path=f"exclude_outbound_cidrs[{i}]", allow_wildcard=False)
    for i, port in enumerate(config.exclude_inbound_ports):
        check_port(port, source=source, path=f"exclude_inbound_ports[{i}]")
    for i, port in enumerate(config.exclude_outbound_ports):
        check_port(port, source=source, path=f"exclude_outbound_ports[{i}]")
    check_image_hub(config.hub, source=source, path="hub")
    check_image_tag(config.tag, source=source, path="tag")
    if config.proxy_uid == 0:
        raise ValidationError("the proxy must not run as root (uid 0)", source=source, path="proxy_uid")
    for name, check in (("trust_domain", check_trust_domain), ("root_namespace", check_namespace)):
        try:
            check(getattr(config, name))
        except IdentityError as exc:
            raise ValidationError(str(exc), source=source, path=name) from None
    if not config.ca_address:
        raise ValidationError("the CA address is required (host:port)", source=source, path="ca_address")
    _check_tracing(config.tracing, source=source)


def _check_tracing(tracing: mesh_config_pb2.TracingConfig, *, source: str) -> None:
    if not 0 <= tracing.sampling_percentage <= 100:
        raise ValidationError(f"must be 0..100, got {tracing.sampling_percentage}", source=source,
                              path="tracing.sampling_percentage")
    address = tracing.collector_address
    if address:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValidationError(f"not host:port: {address!r}", source=source, path="tracing.collector_address")


_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def is_dns_name(name: str) -> bool:
    """A host name (RFC 1123 labels, lower-case, at most 253 characters, an optional final dot) that is not
    all digits and dots (those are IP addresses, or mistakes)."""
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253 or name.replace(".", "").isdigit():
        return False
    return all(_DNS_LABEL.match(label) for label in name.split("."))


def _check_weights(weights: list[int], *, source: str, path: str) -> None:
    """Weights split traffic in proportion; all zero means an equal split. The total must fit in 32 bits."""
    limit = 2**32 - 1
    if sum(weights) > limit:
        raise ValidationError(f"weights add up to {sum(weights)}, more than {limit}", source=source, path=path)


def validate_proxy_config(config: proxy_config_pb2.ProxyConfig, *, source: str = "<proxy config>") -> None:
    """Check a ProxyConfig: unique names, valid ports and addresses, and no dangling references."""
    clusters = {}
    for i, cluster in enumerate(config.clusters):
        if not cluster.name:
            raise ValidationError("cluster needs a name", source=source, path=f"clusters[{i}].name")
        if cluster.name in clusters:
            raise ValidationError(f"duplicate cluster {cluster.name!r}", source=source, path=f"clusters[{i}].name")
        clusters[cluster.name] = cluster
        _check_upstream_tls(cluster.tls, source=source, path=f"clusters[{i}].tls")
        for where, problem in cluster_problems(cluster):
            raise ValidationError(problem, source=source, path=f"clusters[{i}].{where}")
    for i, cla in enumerate(config.endpoints):
        if cla.cluster_name not in clusters:
            raise ValidationError(f"endpoints for unknown cluster {cla.cluster_name!r}", source=source,
                                  path=f"endpoints[{i}].cluster_name")
        for j, ep in enumerate(cla.endpoints):
            path = f"endpoints[{i}].endpoints[{j}]"
            try:
                ipaddress.ip_address(ep.address)
            except ValueError:
                if not is_dns_name(ep.address):
                    raise ValidationError(f"neither an IP address nor a DNS name: {ep.address!r}", source=source,
                                          path=f"{path}.address") from None
            check_port(ep.port, source=source, path=f"{path}.port")
    route_configs = {}
    for i, rc in enumerate(config.route_configs):
        if not rc.name or rc.name in route_configs:
            raise ValidationError(f"route config name {rc.name!r} missing or duplicate", source=source,
                                  path=f"route_configs[{i}].name")
        route_configs[rc.name] = rc
        for j, vh in enumerate(rc.virtual_hosts):
            for k, route in enumerate(vh.routes):
                path = f"route_configs[{i}].virtual_hosts[{j}].routes[{k}]"
                if not route.clusters:
                    raise ValidationError("route has no cluster", source=source, path=f"{path}.clusters")
                for m, wc in enumerate(route.clusters):
                    if wc.cluster not in clusters:
                        raise ValidationError(f"unknown cluster {wc.cluster!r}", source=source,
                                              path=f"{path}.clusters[{m}].cluster")
                _check_weights([wc.weight for wc in route.clusters], source=source, path=f"{path}.clusters")
                for where, problem in retry_policy_problems(route.retries):
                    raise ValidationError(problem, source=source, path=f"{path}.retries.{where}")
                try:
                    check_route_actions(route, clusters)
                except RouteActionError as exc:
                    raise ValidationError(exc.reason, source=source, path=f"{path}.{exc.path}") from None
                for kind in ("delay", "abort"):
                    if route.fault.HasField(kind):
                        pct = getattr(route.fault, kind).percent
                        if not 0 <= pct <= 100:
                            raise ValidationError(f"percent must be 0..100, got {pct}", source=source,
                                                  path=f"{path}.fault.{kind}.percent")
                if (route.fault.HasField("abort") and not route.fault.abort.HasField("grpc_status")
                        and not 200 <= route.fault.abort.http_status <= 599):
                    raise ValidationError(f"http_status must be 200..599, got {route.fault.abort.http_status}",
                                          source=source, path=f"{path}.fault.abort.http_status")
                if route.fault.abort.grpc_status > 16:
                    raise ValidationError(f"grpc_status must be 0..16, got {route.fault.abort.grpc_status}",
                                          source=source, path=f"{path}.fault.abort.grpc_status")
    seen: set[tuple[int, str, str]] = set()
    for i, listener in enumerate(config.listeners):
        path = f"listeners[{i}]"
        check_port(listener.port, source=source, path=f"{path}.port")
        if listener.address:
            try:
                ipaddress.ip_address(listener.address)
            except ValueError:
                raise ValidationError(f"not an IP address: {listener.address!r}", source=source,
                                      path=f"{path}.address") from None
        key = (listener.direction, listener.address or "0.0.0.0", str(listener.port))
        if key in seen:
            raise ValidationError(f"duplicate listener for {key[1]}:{key[2]}", source=source, path=path)
        seen.add(key)
        if listener.protocol == proxy_config_pb2.HTTP:
            if listener.route_config not in route_configs:
                raise ValidationError(f"unknown route config {listener.route_config!r}", source=source,
                                      path=f"{path}.route_config")
        elif listener.protocol == proxy_config_pb2.TCP:
            if listener.cluster not in clusters:
                raise ValidationError(f"unknown cluster {listener.cluster!r}", source=source, path=f"{path}.cluster")
        else:
            raise ValidationError("protocol must be HTTP or TCP", source=source, path=f"{path}.protocol")
        if listener.pass_unknown_hosts and (listener.direction != proxy_config_pb2.OUTBOUND
                                            or listener.protocol != proxy_config_pb2.HTTP
                                            or listener.address not in ("", "0.0.0.0", "::")):
            raise ValidationError("pass_unknown_hosts applies to OUTBOUND HTTP listeners on a wildcard address "
                                  "(empty, 0.0.0.0 or ::) only", source=source, path=f"{path}.pass_unknown_hosts")
        _check_listener_security(listener, source=source, path=path)


def _check_upstream_tls(tls: proxy_config_pb2.UpstreamTls, *, source: str, path: str) -> None:
    for i, san in enumerate(tls.subject_alt_names):
        try:
            parse_spiffe_id(san)
        except IdentityError as exc:
            raise ValidationError(str(exc), source=source, path=f"{path}.subject_alt_names[{i}]") from None


def _check_listener_security(listener: proxy_config_pb2.Listener, *, source: str, path: str) -> None:
    """Peer authentication and authorization are the inbound side's: refused on an outbound listener."""
    if listener.direction != proxy_config_pb2.INBOUND:
        if listener.mtls_mode:
            raise ValidationError("mtls_mode applies to INBOUND listeners only", source=source,
                                  path=f"{path}.mtls_mode")
        if listener.authorization_policies:
            raise ValidationError("authorization_policies apply to INBOUND listeners only", source=source,
                                  path=f"{path}.authorization_policies")
    for i, named in enumerate(listener.authorization_policies):
        validate_authorization_policy(named.spec, source=source, path=f"{path}.authorization_policies[{i}].spec")


def validate_route_rule(spec: routing_pb2.RouteRuleSpec, *, source: str = "<route rule>", path: str = "spec") -> None:
    """Check a RouteRuleSpec: a destination, weights summing to 100, sane fault percentages."""
    if not spec.destination:
        raise ValidationError("destination is required", source=source, path=f"{path}.destination")
    check_port(spec.port, source=source, path=f"{path}.port", allow_zero=True)
    for i, dest in enumerate(spec.route):
        if dest.host or dest.port:
            if not dest.host:
                raise ValidationError("port is only for a route to another host", source=source,
                                      path=f"{path}.route[{i}].port")
            check_port(dest.port, source=source, path=f"{path}.route[{i}].port")
    if spec.route:
        total = sum(d.weight for d in spec.route)
        if total != 100:
            raise ValidationError(f"route weights must add up to 100, got {total}", source=source, path=f"{path}.route")
    for where, problem in retry_policy_problems(spec.retries):
        raise ValidationError(problem, source=source, path=f"{path}.retries.{where}")
    for kind in ("delay", "abort"):
        if spec.fault.HasField(kind):
            pct = getattr(spec.fault, kind).percent
            if not 0 <= pct <= 100:
                raise ValidationError(f"percent must be 0..100, got {pct}", source=source,
                                      path=f"{path}.fault.{kind}.percent")
    if (spec.fault.HasField("abort") and not spec.fault.abort.HasField("grpc_status")
            and not 200 <= spec.fault.abort.http_status <= 599):
        raise ValidationError(f"http_status must be 200..599, got {spec.fault.abort.http_status}", source=source,
                              path=f"{path}.fault.abort.http_status")
    try:
        check_route_actions(spec)
    except RouteActionError as exc:
        raise ValidationError(exc.reason, source=source, path=f"{path}.{exc.path}") from None


# Authorization rule strings: exact, "prefix*", "*suffix" or "*"; a "*" anywhere else is refused.
def check_rule_string(value: str, *, source: str, path: str) -> None:
    """Raise ValidationError unless value is an exact, prefix (x*), suffix (*x) or presence (*) match."""
    if not value:
        raise ValidationError("must not be empty", source=source, path=path)
    if "*" in value[1:-1] or value.count("*") > 1:
        raise ValidationError(f"'*' only at the start or the end: {value!r}", source=source, path=path)


_HEADER_KEY = re.compile(r"request\.headers\[([!#$%&'*+.^_`|~0-9A-Za-z-]+)\]")
CONDITION_KEYS = ("request.headers[<name>]", "source.principal", "source.namespace", "destination.port")


def _check_port_strings(values: list[str], *, source: str, path: str) -> None:
    for i, value in enumerate(values):
        if not value.isdigit():
            raise ValidationError(f"expected a port number, got {value!r}", source=source, path=f"{path}[{i}]")
        check_port(int(value), source=source, path=f"{path}[{i}]")


def _check_selector(selector: security_pb2.WorkloadSelector, *, source: str, path: str) -> None:
    for key in selector.match_labels:
        if not key:
            raise ValidationError("label keys must not be empty", source=source, path=f"{path}.match_labels")


def validate_peer_authentication(spec: security_pb2.PeerAuthentication, *, source: str = "<peer authentication>",
                                 path: str = "spec") -> None:
    """Check a PeerAuthentication: per-port modes need a selector (as in Istio) and valid ports."""
    _check_selector(spec.selector, source=source, path=f"{path}.selector")
    if spec.port_level_mtls and not spec.selector.match_labels:
        raise ValidationError("per-port modes apply only with a workload selector", source=source,
                              path=f"{path}.port_level_mtls")
    for port in spec.port_level_mtls:
        check_port(port, source=source, path=f"{path}.port_level_mtls.{port}")


def _check_condition(cond: security_pb2.Condition, *, source: str, path: str) -> None:
    if not cond.values and not cond.not_values:
        raise ValidationError("needs values or not_values", source=source, path=path)
    if not (_HEADER_KEY.fullmatch(cond.key) or cond.key in CONDITION_KEYS[1:]):
        raise ValidationError(f"unsupported condition key {cond.key!r} (supported: {', '.join(CONDITION_KEYS)})",
                              source=source, path=f"{path}.key")
    for name in ("values", "not_values"):
        values = list(getattr(cond, name))
        if cond.key == "destination.port":
            _check_port_strings(values, source=source, path=f"{path}.{name}")
        else:
            for i, value in enumerate(values):
                check_rule_string(value, source=source, path=f"{path}.{name}[{i}]")


def validate_authorization_policy(spec: security_pb2.AuthorizationPolicy, *,
                                  source: str = "<authorization policy>", path: str = "spec") -> None:
    """Check an AuthorizationPolicy: match strings, ports, methods and condition keys."""
    _check_selector(spec.selector, source=source, path=f"{path}.selector")
    for i, rule in enumerate(spec.rules):
        rule_path = f"{path}.rules[{i}]"
        for j, item in enumerate(getattr(rule, "from")):
            for name in ("principals", "not_principals", "namespaces", "not_namespaces"):
                for k, value in enumerate(getattr(item.source, name)):
                    check_rule_string(value, source=source, path=f"{rule_path}.from[{j}].source.{name}[{k}]")
        for j, item in enumerate(rule.to):
            op_path = f"{rule_path}.to[{j}].operation"
            op = item.operation
            _check_port_strings(list(op.ports), source=source, path=f"{op_path}.ports")
            _check_port_strings(list(op.not_ports), source=source, path=f"{op_path}.not_ports")
            for name in ("methods", "not_methods", "paths", "not_paths"):
                for k, value in enumerate(getattr(op, name)):
                    check_rule_string(value, source=source, path=f"{op_path}.{name}[{k}]")
            for name in ("paths", "not_paths"):
                for k, value in enumerate(getattr(op, name)):
                    if not value.startswith(("/", "*")):
                        raise ValidationError(f"a path starts with '/' (or '*'), got {value!r}", source=source,
                                              path=f"{op_path}.{name}[{k}]")
        for j, cond in enumerate(rule.when):
            _check_condition(cond, source=source, path=f"{rule_path}.when[{j}]")
