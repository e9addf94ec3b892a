"""Kubernetes objects (plain dicts from YAML or the API server) → typed facts: Services, Pods, endpoints.

Pure functions, shared by discovery (which reads a registry or the API server) and the local
cluster (which checks what is applied): both read a Service, a Pod's labels, ports and
readiness the same way. Each parser raises ObjectError naming the source, the object and the
field, so a bad object can be refused or left out with a reason.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshbox.api.kube.names import SERVICE_NAME_LABEL, service_fqdn


class ObjectError(ValueError):
    """An object that cannot be used; the message names source, object and field."""

    def __init__(self, reason: str, *, source: str, obj: str, path: str = "") -> None:
        self.reason = reason
        self.source = source
        self.obj = obj
        self.path = path
        where = f"{source}: {obj}"
        super().__init__(f"{where}: {path}: {reason}" if path else f"{where}: {reason}")


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str  # a number, or the name of a container port
    app_protocol: str = ""  # spec.ports[].appProtocol (says the protocol instead of the name)


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    cluster_ip: str
    selector: Mapping[str, str]
    ports: tuple[ServicePort, ...]
    # A ServiceEntry's host names (its FQDN first, then the name as written); empty for a Service.
    hosts: tuple[str, ...] = ()

    @property
    def fqdn(self) -> str:
        return self.hosts[0] if self.hosts else service_fqdn(self.name, self.namespace)


# Set by meshbox injection on every pod it gives a sidecar.
SIDECAR_STATUS_ANNOTATION = "sidecar.meshbox.io/status"


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    ip: str
    labels: Mapping[str, str]
    ports: Mapping[str, int]  # container port name → number (unnamed ports are keyed by their number)
    serving: bool  # running and not reported unready
    service_account: str = "default"  # spec.serviceAccountName: the pod's workload identity
    sidecar: bool = False  # injected with a meshbox sidecar (it terminates mutual TLS)


@dataclass(frozen=True)
class EndpointAddress:
    ip: str
    pod_name: str  # the targetRef pod, "" when the address names none


@dataclass(frozen=True)
class EndpointSet:
    """Endpoints or one EndpointSlice of a Service: ready addresses and named ports."""

    service: str
    namespace: str
    addresses: tuple[EndpointAddress, ...]
    ports: Mapping[str, int]  # port name ("" for an unnamed port) → number


def object_label(doc: Mapping[str, Any]) -> str:
    """'Kind namespace/name' for messages."""
    meta = doc.get("metadata")
    if not isinstance(meta, Mapping):
        meta = {}
    return f"{doc.get('kind', '?')} {meta.get('namespace') or 'default'}/{meta.get('name', '?')}"


class FieldReader:
    """Typed access to nested dict fields with errors naming the field path."""

    def __init__(self, doc: Mapping[str, Any], source: str) -> None:
        self.source = source
        self.obj = object_label(doc)

    def fail(self, reason: str, path: str) -> ObjectError:
        return ObjectError(reason, source=self.source, obj=self.obj, path=path)

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(f"expected a mapping, got {type(value).__name__}", path)
        return value

    def items(self, value: Any, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(f"expected a list, got {type(value).__name__}", path)
        return value

    def string(self, value: Any, path: str, *, required: bool = False) -> str:
        if value is None or value == "":
            if required:
                raise self.fail("is required", path)
            return ""
        if not isinstance(value, str):
            raise self.fail(f"expected a string, got {value!r}", path)
        return value

    def port(self, value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise self.fail(f"expected a port number 1..65535, got {value!r}", path)
        return value

    def ip(self, value: Any, path: str) -> str:
        text = self.string(value, path, required=True)
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise self.fail(f"not an IP address: {text!r}", path) from None
        return text

    def labels(self, value: Any, path: str) -> dict[str, str]:
        labels = self.mapping(value, path)
        for key, val in labels.items():
            if not isinstance(val, str):
                raise self.fail(f"label values must be strings, got {val!r} (quote it in YAML)", f"{path}.{key}")
        return {str(k): v for k, v in labels.items()}


def _meta(r: FieldReader, doc: Mapping[str, Any]) -> tuple[str, str, Mapping[str, Any]]:
    meta = r.mapping(doc.get("metadata"), "metadata")
    name = r.string(meta.get("name"), "metadata.name", required=True)
    namespace = r.string(meta.get("namespace"), "metadata.namespace") or "default"
    return name, namespace, meta


def parse_service(doc: Mapping[str, Any], *, source: str, allocates_ip: bool = False) -> Service | None:
    """A v1 Service; None for a headless one (clusterIP None), which gets no listener.

    ``allocates_ip``: the caller assigns ClusterIPs (as an API server does), so a Service without
    one is fine and gets ``cluster_ip`` "".
    """
    r = FieldReader(doc, source)
    name, namespace, _ = _meta(r, doc)
    spec = r.mapping(doc.get("spec"), "spec")
    cluster_ip = spec.get("clusterIP")
    if cluster_ip == "None":
        return None
    if not cluster_ip and not allocates_ip:
        raise r.fail("is required (in a registry directory no API server allocates one)", "spec.clusterIP")
    cluster_ip = r.ip(cluster_ip, "spec.clusterIP") if cluster_ip else ""
    ports = []
    for i, item in enumerate(r.items(spec.get("ports"), "spec.ports")):
        path = f"spec.ports[{i}]"
        item = r.mapping(item, path)
        protocol = item.get("protocol", "TCP")
        if protocol != "TCP":
            continue  # the proxy carries TCP only; UDP/SCTP ports are left alone
        port = r.port(item.get("port"), f"{path}.port")
        target = item.get("targetPort", port)
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        if not isinstance(target, str):
            target = r.port(target, f"{path}.targetPort")
        ports.append(ServicePort(r.string(item.get("name"), f"{path}.name"), port, target,
                                 r.string(item.get("appProtocol"), f"{path}.appProtocol")))
    selector = r.labels(spec.get("selector"), "spec.selector")
    return Service(name, namespace, cluster_ip, selector, tuple(ports))


def parse_pod(doc: Mapping[str, Any], *, source: str) -> Pod:
    """A v1 Pod: IP, labels, named container ports and whether it serves traffic."""
    r = FieldReader(doc, source)
    name, namespace, meta = _meta(r, doc)
    labels = r.labels(meta.get("labels"), "metadata.labels")
    spec = r.mapping(doc.get("spec"), "spec")
    ports: dict[str, int] = {}
    for i, container in enumerate(r.items(spec.get("containers"), "spec.containers")):
        container = r.mapping(container, f"spec.containers[{i}]")
        for j, item in enumerate(r.items(container.get("ports"), f"spec.containers[{i}].ports")):
            path = f"spec.containers[{i}].ports[{j}]"
            item = r.mapping(item, path)
            number = r.port(item.get("containerPort"), f"{path}.containerPort")
            ports[r.string(item.get("name"), f"{path}.name") or str(number)] = number
    status = r.mapping(doc.get("status"), "status")
    ip = r.ip(status["podIP"], "status.podIP") if status.get("podIP") else ""
    unready = any(
        isinstance(c, Mapping) and c.get("type") == "Ready" and c.get("status") == "False"
        for c in r.items(status.get("conditions"), "status.conditions")
    )
    finished = status.get("phase") in ("Succeeded", "Failed") or bool(meta.get("deletionTimestamp"))
    service_account = (r.string(spec.get("serviceAccountName"), "spec.serviceAccountName")
                       or r.string(spec.get("serviceAccount"), "spec.serviceAccount") or "default")
    annotations = r.mapping(meta.get("annotations"), "metadata.annotations")
    return Pod(name, namespace, ip, labels, ports, serving=bool(ip) and not unready and not finished,
               service_account=service_account, sidecar=SIDECAR_STATUS_ANNOTATION in annotations)


def _target_pod(r: FieldReader, item: Mapping[str, Any], path: str) -> str:
    ref = r.mapping(item.get("targetRef"), f"{path}.targetRef")
    return r.string(ref.get("name"), f"{path}.targetRef.name") if ref.get("kind", "Pod") == "Pod" else ""


def _named_ports(r: FieldReader, items: Any, path: str) -> dict[str, int]:
    ports = {}
    for i, item in enumerate(r.items(items, path)):
        item = r.mapping(item, f"{path}[{i}]")
        ports[r.string(item.get("name"), f"{path}[{i}].name")] = r.port(item.get("port"), f"{path}[{i}].port")
    return ports


def parse_endpoints(doc: Mapping[str, Any], *, source: str) -> list[EndpointSet]:
    """A v1 Endpoints object: one EndpointSet per subset, ready addresses only."""
    r = FieldReader(doc, source)
    name, namespace, _ = _meta(r, doc)
    sets = []
    for i, subset in enumerate(r.items(doc.get("subsets"), "subsets")):
        path = f"subsets[{i}]"
        subset = r.mapping(subset, path)
        addresses = []
        for j, item in enumerate(r.items(subset.get("addresses"), f"{path}.addresses")):
            item = r.mapping(item, f"{path}.addresses[{j}]")
            ip = r.ip(item.get("ip"), f"{path}.addresses[{j}].ip")
            addresses.append(EndpointAddress(ip, _target_pod(r, item, f"{path}.addresses[{j}]")))
        ports = _named_ports(r, subset.get("ports"), f"{path}.ports")
        sets.append(EndpointSet(name, namespace, tuple(addresses), ports))
    return sets


def parse_endpoint_slice(doc: Mapping[str, Any], *, source: str) -> EndpointSet:
    """A discovery.k8s.io/v1 EndpointSlice: ready endpoints and ports of one Service."""
    r = FieldReader(doc, source)
    _, namespace, meta = _meta(r, doc)
    labels = r.labels(meta.get("labels"), "metadata.labels")
    service = labels.get(SERVICE_NAME_LABEL)
    if not service:
        raise r.fail(f"label {SERVICE_NAME_LABEL} is required", f"metadata.labels.{SERVICE_NAME_LABEL}")
    addresses = []
    for i, item in enumerate(r.items(doc.get("endpoints"), "endpoints")):
        path = f"endpoints[{i}]"
        item = r.mapping(item, path)
        conditions = r.mapping(item.get("conditions"), f"{path}.conditions")
        if conditions.get("ready") is False:
            continue
        pod = _target_pod(r, item, path)
        for j, ip in enumerate(r.items(item.get("addresses"), f"{path}.addresses")):
            addresses.append(EndpointAddress(r.ip(ip, f"{path}.addresses[{j}]"), pod))
    return EndpointSet(service, namespace, tuple(addresses), _named_ports(r, doc.get("ports"), "ports"))
