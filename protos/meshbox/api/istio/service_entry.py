"""Istio ServiceEntry (networking.istio.io v1, v1beta1, v1alpha3) → a host meshbox can route to.

meshbox implements a host, one virtual address the proxy matches outbound connections against,
ports, and endpoints by IP address (resolution STATIC) or by DNS name (resolution DNS or
DNS_ROUND_ROBIN: the proxy resolves the name when it opens a connection, with the system resolver, so
/etc/hosts applies; no endpoints means the host itself). Without an address, an entry of HTTP ports
only is served by the port's wildcard egress listener, which picks it by the Host header (as Istio's
0.0.0.0:port listener does); other protocols need an address to be matched by. Original-destination
pass-through (resolution NONE), DYNAMIC_DNS and workload selection are refused by name.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshbox.api.istio.fields import MESH_TODO, PROXY_TODO, Reader
from meshbox.api.istio.findings import ERROR, Finding
from meshbox.api.istio.objects import check_host, metadata, qualify_host, resource_label
from meshbox.api.validation import is_dns_name

# Port protocols routed at L7; the proxy tunnels HTTP/2 (gRPC) at L4 on such ports by itself.
L7_PROTOCOLS = ("HTTP", "HTTP2", "GRPC")
PROTOCOLS = (*L7_PROTOCOLS, "HTTPS", "TCP", "TLS", "MONGO", "MYSQL", "REDIS", "GRPC-WEB")
DNS_RESOLUTIONS = ("DNS", "DNS_ROUND_ROBIN")
_SPEC_REFUSED = {"workloadSelector": MESH_TODO, "exportTo": f"exportTo: {MESH_TODO} (every entry applies mesh-wide)",
                 "subjectAltNames": MESH_TODO}
_ENDPOINT_REFUSED = {"labels": MESH_TODO, "weight": PROXY_TODO, "network": MESH_TODO, "locality": MESH_TODO,
                     "serviceAccount": MESH_TODO}


@dataclass(frozen=True)
class EntryPort:
    name: str
    number: int
    target: int  # the endpoints' port when they do not name one; 0: the same number
    http: bool
    protocol: str = ""  # as written in the entry, upper-case (HTTP2, GRPC: HTTP/2 upstream)


@dataclass(frozen=True)
class EntryEndpoint:
    address: str
    ports: Mapping[str, int]  # port name → number on this endpoint


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    namespace: str
    source: str
    host: str  # as written (lower-case): what the Host header carries
    fqdn: str  # as VirtualServices and DestinationRules of this namespace name it
    address: str
    ports: tuple[EntryPort, ...]
    endpoints: tuple[EntryEndpoint, ...]

    @property
    def resource(self) -> str:
        return f"ServiceEntry {self.namespace}/{self.name}"


def translate_service_entry(doc: Mapping[str, Any], *, source: str) -> tuple[ServiceEntry | None, list[Finding]]:
    """The entry's host, address, ports and endpoints, or None with the findings that keep it out."""
    r = Reader(source, resource_label(doc))
    name, namespace = metadata(r, doc)
    f = r.fields(doc.get("spec"), "spec", "ServiceEntry",
                 ("hosts", "addresses", "ports", "location", "resolution", "endpoints"), _SPEC_REFUSED)
    hosts = r.strings(f.get("hosts"), "spec.hosts")
    if len(hosts) != 1:
        r.refuse("spec.hosts", f"{len(hosts)} hosts: exactly one host per ServiceEntry is implemented "
                               "(write one entry per host)")
    host = hosts[0].rstrip(".").lower() if hosts and check_host(r, hosts[0], "spec.hosts[0]") else ""
    addresses = r.strings(f.get("addresses"), "spec.addresses")
    address = addresses[0] if len(addresses) == 1 else ""
    if len(addresses) > 1:
        r.refuse("spec.addresses", f"{len(addresses)} addresses: {MESH_TODO}; meshbox matches outbound "
                                   "connections by one virtual IP address per entry")
    elif addresses and not _is_ip(address):
        r.refuse("spec.addresses[0]", f"{address!r} is not a single IP address; CIDR ranges: {MESH_TODO}")
    location = f.get("location", "MESH_EXTERNAL")
    if location not in ("MESH_EXTERNAL", "MESH_INTERNAL"):
        r.invalid("spec.location", f"expected MESH_EXTERNAL or MESH_INTERNAL, got {location!r}")
    resolution = f.get("resolution", "NONE")
    if resolution in ("NONE", "DYNAMIC_DNS"):
        r.refuse("spec.resolution", f"{resolution}: {PROXY_TODO} (it forwards to the endpoints' addresses: "
                                    "use STATIC or DNS)")
    elif resolution not in DNS_RESOLUTIONS and resolution != "STATIC":
        r.invalid("spec.resolution", f"expected NONE, STATIC, DNS, DNS_ROUND_ROBIN or DYNAMIC_DNS, got {resolution!r}")
    ports = _ports(r, f.get("ports"), addressless=not addresses)
    # Names are only a finding of their own under STATIC (a refused resolution is reported already).
    endpoints = _endpoints(r, f.get("endpoints"), {p.name for p in ports}, resolution != "STATIC")
    if not endpoints and resolution == "STATIC":
        r.invalid("spec.endpoints", "STATIC resolution needs endpoints")
    if not endpoints and resolution in DNS_RESOLUTIONS and host:
        endpoints = (EntryEndpoint(host, {}),)  # as Istio does: the host's own name is resolved
    if any(x.severity == ERROR for x in r.findings):
        return None, r.findings
    return ServiceEntry(name, namespace, source, host, qualify_host(host, namespace), address, ports,
                        endpoints), r.findings


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _ports(r: Reader, value: Any, *, addressless: bool) -> tuple[EntryPort, ...]:
    ports = []
    for i, item in enumerate(r.items(value, "spec.ports")):
        path = f"spec.ports[{i}]"
        p = r.fields(item, path, "ServicePort", ("number", "protocol", "name", "targetPort"), {})
        number = r.integer(p.get("number"), f"{path}.number", low=1, high=65535) or 0
        protocol = r.string(p.get("protocol"), f"{path}.protocol", required=True).upper()
        if protocol and protocol not in PROTOCOLS:
            r.invalid(f"{path}.protocol", f"expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        elif protocol and protocol != "HTTP" and addressless:
            r.refuse(f"{path}.protocol", f"{protocol} without spec.addresses: {MESH_TODO}; an entry without an "
                                         "address is picked by the Host header of HTTP/1.1 requests, so only "
                                         "HTTP ports can be served (give the entry one address in spec.addresses)")
        target = r.integer(p["targetPort"], f"{path}.targetPort", low=1, high=65535) or 0 if "targetPort" in p else 0
        ports.append(EntryPort(r.string(p.get("name"), f"{path}.name", required=True), number, target,
                               protocol in L7_PROTOCOLS, protocol))
    if not ports:
        r.invalid("spec.ports", "at least one port is required")
    return tuple(ports)


def _endpoints(r: Reader, value: Any, port_names: set[str], dns: bool) -> tuple[EntryEndpoint, ...]:
    endpoints = []
    for i, item in enumerate(r.items(value, "spec.endpoints")):
        path = f"spec.endpoints[{i}]"
        e = r.fields(item, path, "WorkloadEntry", ("address", "ports"), _ENDPOINT_REFUSED)
        address = r.string(e.get("address"), f"{path}.address", required=True)
        if address.startswith("unix://"):
            r.refuse(f"{path}.address", f"{address!r}: Unix socket endpoints: {PROXY_TODO}")
        elif address and not _is_ip(address):
            name = address.rstrip(".").lower()
            if not dns:
                r.invalid(f"{path}.address", f"{address!r} is a name: resolution STATIC takes IP addresses "
                                             "(use resolution DNS for names)")
            elif not is_dns_name(name):
                r.invalid(f"{path}.address", f"{address!r} is neither an IP address nor a DNS name")
            address = name
        ports: dict[str, int] = {}
        for port_name, number in r.mapping(e.get("ports"), f"{path}.ports").items():
            if port_name not in port_names:
                r.invalid(f"{path}.ports.{port_name}", f"no port named {port_name!r} in spec.ports")
            ports[str(port_name)] = r.integer(number, f"{path}.ports.{port_name}", low=1, high=65535) or 0
        endpoints.append(EntryEndpoint(address, ports))
    return tuple(endpoints)
