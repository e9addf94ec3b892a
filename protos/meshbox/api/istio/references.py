"""Cross-object checks of translated VirtualServices and DestinationRules against the known hosts.

Conflicts (two VirtualServices or two DestinationRules for one host: the first keeps it), hosts
that no Service or ServiceEntry has, subsets that no DestinationRule defines and ports the host
lacks are reported. A VirtualService that fails a check is not applied; if an earlier version of
it was, that version keeps serving (``previous``), so a bad edit never takes routes away.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from meshbox.api.istio.destination_rule import DestinationRule
from meshbox.api.istio.findings import ERROR, Code, Finding
from meshbox.api.istio.virtual_service import VirtualService
from meshbox.api.v1 import routing_pb2

STILL_SERVING = "; its previous version keeps serving"


@dataclass(frozen=True)
class HostPorts:
    """The ports of a known host (a Service's FQDN or a ServiceEntry host) and which are routed at L7."""

    ports: frozenset[int]
    http_ports: frozenset[int]


@dataclass(frozen=True)
class ResolvedRoutes:
    """A VirtualService's routes with subset labels filled in, ready to become proxy routes."""

    resource: str
    name: str
    namespace: str
    hosts: tuple[str, ...]
    specs: tuple[routing_pb2.RouteRuleSpec, ...]


@dataclass
class Resolution:
    routes: dict[str, ResolvedRoutes] = field(default_factory=dict)  # by resource, in registry order
    policies: dict[str, DestinationRule] = field(default_factory=dict)  # by host FQDN
    findings: list[Finding] = field(default_factory=list)


def resolve(virtual_services: Sequence[VirtualService], destination_rules: Sequence[DestinationRule],
            hosts: Mapping[str, HostPorts], previous: Mapping[str, ResolvedRoutes] | None = None) -> Resolution:
    """Check references and conflicts; the result holds what may be served and every finding."""
    out = Resolution()
    for rule in destination_rules:
        host = rule.spec.destination
        if host in out.policies:
            out.findings.append(Finding(Code.CONFLICTING_DESTINATION_RULES, rule.source, rule.resource, "spec.host",
                                        f"{host} already has {out.policies[host].resource}; this one is not applied"))
        else:
            out.policies[host] = rule
            if host not in hosts:
                out.findings.append(Finding(Code.UNUSED_POLICY, rule.source, rule.resource, "spec.host",
                                            f"no Service or ServiceEntry has host {host}; nothing uses this rule"))
    owners: dict[str, str] = {}
    for vs in virtual_services:
        taken = [(i, h) for i, h in enumerate(vs.hosts) if h in owners]
        if taken:
            out.findings.extend(Finding(Code.CONFLICTING_VIRTUAL_SERVICES, vs.source, vs.resource, f"spec.hosts[{i}]",
                                        f"{h} is already routed by {owners[h]}; this VirtualService is not applied")
                                for i, h in taken)
            continue
        resolved, problems = _resolve_one(vs, out.policies, hosts)
        if problems and previous and vs.resource in previous:
            problems = [Finding(p.code, p.source, p.resource, p.path, p.message + STILL_SERVING)
                        if p.severity == ERROR else p for p in problems]
            resolved = previous[vs.resource]
        out.findings.extend(problems)
        if resolved is not None:
            out.routes[vs.resource] = resolved
            owners.update((h, vs.resource) for h in resolved.hosts)
    return out


def _check_other_host(dest: routing_pb2.RouteDestination, hosts: Mapping[str, HostPorts], path: str,
                      report: Callable[[Code, str, str], None]) -> bool:
    """A destination on another host: the host must be known, its port given (or its only one); fills the port."""
    known = hosts.get(dest.host)
    if known is None:
        report(Code.UNKNOWN_HOST, f"{path}.host", f"no Service or ServiceEntry has host {dest.host}")
        return False
    if not dest.port and len(known.ports) == 1:
        dest.port = next(iter(known.ports))
    if dest.port not in known.ports:
        ports = ", ".join(map(str, sorted(known.ports)))
        report(Code.UNKNOWN_PORT, f"{path}.port.number", f"{dest.host} has no port {dest.port} (ports: {ports})"
               if dest.port else f"is required: {dest.host} has several ports ({ports})")
        return False
    return True


def _resolve_one(vs: VirtualService, policies: Mapping[str, DestinationRule],
                 hosts: Mapping[str, HostPorts]) -> tuple[ResolvedRoutes | None, list[Finding]]:
    problems: list[Finding] = []

    def report(code: Code, path: str, message: str) -> None:
        problems.append(Finding(code, vs.source, vs.resource, path, message))

    for i, host in enumerate(vs.hosts):
        if host not in hosts:
            report(Code.UNKNOWN_HOST, f"spec.hosts[{i}]", f"no Service or ServiceEntry has host {host}")
    specs = []
    for rule in vs.rules:
        spec = routing_pb2.RouteRuleSpec()
        spec.CopyFrom(rule.spec)
        known = hosts.get(spec.destination)
        if known is not None and spec.port:
            if spec.port not in known.ports:
                report(Code.UNKNOWN_PORT, rule.path, f"{spec.destination} has no port {spec.port} "
                                                     f"(ports: {', '.join(map(str, sorted(known.ports)))})")
            elif spec.port not in known.http_ports:
                report(Code.UNKNOWN_PORT, rule.path, f"port {spec.port} of {spec.destination} is proxied at L4 "
                                                     "(its name has no http/grpc prefix); HTTP routes cannot apply")
        base = rule.path.split(".match[")[0]
        targets = [(f"{base}.route[{j}].destination", dest) for j, dest in enumerate(spec.route)]
        targets += [(where, m.destination) for where, m in zip(rule.mirror_paths, spec.mirrors, strict=True)]
        for route_path, dest in targets:
            target = dest.host or spec.destination
            if dest.host and not _check_other_host(dest, hosts, route_path, report):
                continue
            policy = policies.get(target)
            subsets = {s.name: s for s in policy.spec.subsets} if policy else {}
            if not dest.subset:
                continue
            if dest.subset not in subsets:
                known_subsets = ", ".join(sorted(subsets)) or "none"
                why = f"{policy.resource} defines {known_subsets}" if policy else "no DestinationRule for this host"
                report(Code.UNDEFINED_SUBSET, f"{route_path}.subset",
                       f"subset {dest.subset!r} of {target} is not defined ({why})")
                continue
            dest.labels.update(subsets[dest.subset].labels)
        specs.append(spec)
    problems = list(dict.fromkeys(problems))  # one per field, not one per host and match
    if problems:
        return None, problems
    return ResolvedRoutes(vs.resource, vs.name, vs.namespace, vs.hosts, tuple(specs)), problems
