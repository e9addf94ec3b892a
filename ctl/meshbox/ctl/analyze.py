"""meshctl analyze: an offline check of manifests and the mesh config, like `istioctl analyze`.

The Istio objects go through the same translation and reference checks discovery runs
(meshbox.api.istio); Services, workloads and meshbox RouteRules are read from the same files.
One line per finding with a stable code; exit 1 when any finding is an error.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from meshbox.api.istio.destination_rule import DestinationRule, translate_destination_rule
from meshbox.api.istio.findings import Code, Finding, has_errors
from meshbox.api.istio.legacy import is_istio_legacy, translate_destination_policy, translate_legacy_route_rule
from meshbox.api.istio.objects import is_istio_networking, qualify_host, resource_label
from meshbox.api.istio.references import HostPorts, resolve
from meshbox.api.istio.service_entry import ServiceEntry, translate_service_entry
from meshbox.api.istio.virtual_service import VirtualService, translate_virtual_service
from meshbox.api.kube.endpoints import matches, selects
from meshbox.api.kube.objects import ObjectError, parse_service
from meshbox.api.loader import ConfigError, iter_yaml_documents, load_mesh_config, parse_route_rule, plain_data
from meshbox.api.protocols import is_http_port, port_name_problem
from meshbox.api.v1 import mesh_config_pb2
from meshbox.api.validation import ValidationError

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Document:
    source: str
    doc: dict[str, Any]


@dataclass
class Inputs:
    """Everything read from the files, by kind."""

    services: list[Document] = field(default_factory=list)
    workloads: list[tuple[str, Mapping[str, str]]] = field(default_factory=list)  # (namespace, pod labels)
    route_rules: list[Document] = field(default_factory=list)
    istio: dict[str, list[Document]] = field(default_factory=lambda: {
        "VirtualService": [], "DestinationRule": [], "ServiceEntry": []})


def manifest_files(paths: tuple[str, ...]) -> Iterator[Path]:
    """The files named, and the YAML/JSON files under the directories named (sorted)."""
    for name in paths:
        path = Path(name)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        else:
            yield path


def _labels(value: Any) -> Mapping[str, str]:
    return value if isinstance(value, Mapping) else {}


def read_inputs(paths: tuple[str, ...], findings: list[Finding]) -> Inputs:
    """Sort every document into Inputs; unreadable files and broken YAML become findings."""
    inputs = Inputs()
    for path in manifest_files(paths):
        try:
            docs = list(iter_yaml_documents(path.read_text(encoding="utf-8"), source=str(path)))
        except (OSError, UnicodeDecodeError) as exc:
            findings.append(Finding(Code.INVALID, str(path), "file", "", f"cannot read: {exc}"))
            continue
        except ConfigError as exc:
            findings.append(Finding(Code.INVALID, str(path), "file", "", str(exc)))
            continue
        for raw in docs:
            if not isinstance(raw, Mapping):
                continue
            plain = plain_data(raw)
            for doc in plain.get("items") or [] if plain.get("kind") == "List" else [plain]:
                if isinstance(doc, dict):
                    _sort(inputs, Document(str(path), doc))
    return inputs


def _sort(inputs: Inputs, item: Document) -> None:
    doc, kind = item.doc, item.doc.get("kind")
    meta = _labels(doc.get("metadata"))
    namespace = str(meta.get("namespace") or "default")
    if is_istio_networking(doc):
        inputs.istio[str(kind)].append(item)
    elif kind == "Service" and doc.get("apiVersion") == "v1":
        inputs.services.append(item)
    elif kind == "RouteRule" or is_istio_legacy(doc):
        inputs.route_rules.append(item)
    elif kind == "Pod":
        inputs.workloads.append((namespace, _labels(meta.get("labels"))))
    else:
        template = _labels(_labels(doc.get("spec")).get("template"))
        if template:  # Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs
            inputs.workloads.append((namespace, _labels(_labels(template.get("metadata")).get("labels"))))


@dataclass(frozen=True)
class ServiceFacts:
    fqdn: str
    namespace: str
    address: str
    selector: Mapping[str, str]
    ports: dict[int, str]  # number → name
    http_ports: frozenset[int]  # routed at L7 (by name or appProtocol)


def check_services(inputs: Inputs, findings: list[Finding]) -> list[ServiceFacts]:
    """Port names (the http/grpc prefix rule) and selectors that select no workload."""
    facts = []
    for item in inputs.services:
        resource = resource_label(item.doc)
        try:
            service = parse_service(item.doc, source=item.source, allocates_ip=True)
        except ObjectError as exc:
            findings.append(Finding(Code.INVALID, item.source, resource, exc.path, exc.reason))
            continue
        if service is None:
            continue  # headless: no virtual IP, nothing to route
        spec = _labels(item.doc.get("spec"))
        for i, port in enumerate(spec.get("ports") or []):
            # An appProtocol says the protocol instead of the name (meshbox.api.protocols).
            if isinstance(port, Mapping) and port.get("protocol", "TCP") == "TCP" and not port.get("appProtocol") and (
                    problem := port_name_problem(str(port.get("name") or ""))):
                findings.append(Finding(Code.PORT_NAME, item.source, resource, f"spec.ports[{i}].name", problem))
        if service.selector and inputs.workloads and not any(
                ns == service.namespace and selects(service.selector, labels) for ns, labels in inputs.workloads):
            findings.append(Finding(Code.SELECTS_NOTHING, item.source, resource, "spec.selector",
                                    f"no workload in these files has labels {dict(service.selector)}"))
        facts.append(ServiceFacts(service.fqdn, service.namespace, service.cluster_ip, service.selector,
                                  {p.port: p.name for p in service.ports},
                                  frozenset(p.port for p in service.ports if is_http_port(p.name, p.app_protocol))))
    return facts


def check_subsets(rules: list[DestinationRule], services: list[ServiceFacts], inputs: Inputs,
                  findings: list[Finding]) -> None:
    """Subsets whose labels select none of the host's workloads (when the files hold any)."""
    by_host = {s.fqdn: s for s in services}
    for rule in rules:
        service = by_host.get(rule.spec.destination)
        if service is None or not service.selector or not inputs.workloads:
            continue
        pods = [labels for ns, labels in inputs.workloads
                if ns == service.namespace and selects(service.selector, labels)]
        for i, subset in enumerate(rule.spec.subsets):
            if not any(matches(subset.labels, labels) for labels in pods):
                findings.append(Finding(Code.SELECTS_NOTHING, rule.source, rule.resource, f"spec.subsets[{i}].labels",
                                        f"no workload of {service.fqdn} has labels {dict(subset.labels)}"))


def _captured(mesh: mesh_config_pb2.MeshConfig, address: str, port: int) -> bool:
    if port in mesh.exclude_outbound_ports:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return True
    if any(c != "*" and ip in ipaddress.ip_network(c, strict=False) for c in mesh.exclude_outbound_cidrs):
        return False
    include = list(mesh.include_outbound_cidrs)
    return not include or "*" in include or any(ip in ipaddress.ip_network(c, strict=False) for c in include)


def analyze(paths: tuple[str, ...], mesh_config: str | None) -> list[Finding]:
    """Every finding about the manifests under ``paths`` and the mesh config."""
    findings: list[Finding] = []
    mesh = mesh_config_pb2.MeshConfig()
    try:
        mesh = load_mesh_config(mesh_config)
    except (ConfigError, ValidationError) as exc:
        findings.append(Finding(Code.INVALID_MESH_CONFIG, mesh_config or "<defaults>", "MeshConfig", "", str(exc)))
    inputs = read_inputs(paths, findings)
    services = check_services(inputs, findings)
    hosts = {s.fqdn: HostPorts(frozenset(s.ports), s.http_ports) for s in services}
    addresses = {s.fqdn: s.address for s in services}
    entries: list[ServiceEntry] = _translated(inputs.istio["ServiceEntry"], translate_service_entry, findings)
    for entry in entries:
        if entry.fqdn in hosts:
            findings.append(Finding(Code.CONFLICTING_HOSTS, entry.source, entry.resource, "spec.hosts[0]",
                                    f"{entry.fqdn} is already a Service's or another ServiceEntry's host; "
                                    "this entry is not applied"))
            continue
        hosts[entry.fqdn] = HostPorts(frozenset(p.number for p in entry.ports),
                                      frozenset(p.number for p in entry.ports if p.http))
        addresses[entry.fqdn] = entry.address
    rules: list[DestinationRule] = _translated(inputs.istio["DestinationRule"], translate_destination_rule, findings)
    virtual_services: list[VirtualService] = _translated(inputs.istio["VirtualService"], translate_virtual_service,
                                                         findings)
    resolution = resolve(virtual_services, rules, hosts)
    findings.extend(resolution.findings)
    check_subsets(rules, services, inputs, findings)
    routed = {h: r.resource for r in resolution.routes.values() for h in r.hosts}
    for host, resource in routed.items():
        for port in sorted(hosts[host].http_ports):
            # An address-less ServiceEntry ("") is reached at any address: only its port can be excluded.
            address = addresses.get(host)
            if address is not None and not _captured(mesh, address, port):
                findings.append(Finding(Code.NOT_CAPTURED, mesh_config or "<defaults>", resource, "spec.hosts",
                                        f"the mesh config does not capture {address or '*'}:{port} (outbound "
                                        f"include/exclude CIDRs and ports): these routes never apply there"))
    _check_route_rules(inputs, hosts, routed, findings)
    return findings


def _translated(items: list[Document], translate: Any, findings: list[Finding]) -> list[Any]:
    result = []
    for item in items:
        obj, found = translate(item.doc, source=item.source)
        findings.extend(found)
        if obj is not None:
            result.append(obj)
    return result


def _check_route_rules(inputs: Inputs, hosts: Mapping[str, HostPorts], routed: Mapping[str, str],
                       findings: list[Finding]) -> None:
    """meshbox RouteRules and Istio's config.istio.io/v1alpha2 RouteRules and DestinationPolicies."""
    for item in inputs.route_rules:
        resource = resource_label(item.doc)
        if is_istio_legacy(item.doc):
            translate = translate_legacy_route_rule if item.doc["kind"] == "RouteRule" else translate_destination_policy
            old, found = translate(item.doc, source=item.source)
            findings.extend(found)
            if old is None:
                continue
            host = old.spec.destination
        else:
            try:
                _, namespace, spec = parse_route_rule(item.doc, source=item.source)
            except (ConfigError, ValidationError) as exc:
                findings.append(Finding(Code.INVALID, item.source, resource, getattr(exc, "path", ""),
                                        getattr(exc, "reason", str(exc))))
                continue
            host = qualify_host(spec.destination, namespace)
        if host not in hosts:
            findings.append(Finding(Code.UNKNOWN_HOST, item.source, resource, "spec.destination",
                                    f"no Service or ServiceEntry has host {host}"))
        elif host in routed and item.doc.get("kind") == "RouteRule":
            findings.append(Finding(Code.OVERLAPPING_RULES, item.source, resource, "spec.destination",
                                    f"{host} is also routed by {routed[host]}; routes are tried by precedence, "
                                    "then in registry order"))


@click.command("analyze")
@click.option("-f", "--filename", "paths", multiple=True, required=True, metavar="FILE_OR_DIR",
              help="Manifest file or directory (YAML/JSON, recursive); repeatable.")
@click.option("--mesh-config", type=click.Path(dir_okay=False), help="Mesh config file [the defaults].")
def analyze_command(paths: tuple[str, ...], mesh_config: str | None) -> None:
    """Check manifests offline, as discovery would read them.

    Reports Istio VirtualService/DestinationRule/ServiceEntry fields meshbox does not implement,
    unknown hosts, undefined subsets, conflicts, Service ports whose name does not give the
    protocol, selectors and subsets that select nothing. One line per finding:
    SEVERITY [CODE] KIND NAMESPACE/NAME FIELD: MESSAGE (FILE). Exit 1 on errors, else 0.
    """
    for path in paths:
        if not Path(path).exists():
            raise click.ClickException(f"{path}: no such file or directory")
    findings = sorted(analyze(paths, mesh_config), key=lambda f: f.source)  # stable: each file's in check order
    for finding in findings:
        click.echo(finding.line())
    if not findings:
        click.echo("no problems found", err=True)
    sys.exit(1 if has_errors(findings) else 0)
