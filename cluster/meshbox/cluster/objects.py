"""Kubernetes-shaped objects the local cluster accepts, checked before anything is made (pure).

Supported kinds: Service, Deployment (apps/v1 or extensions/v1beta1), Pod and RouteRule. Every
check runs on the whole input first, so a bad document leaves the cluster exactly as it was.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshbox.api.loader import ConfigError, iter_yaml_documents, parse_route_rule, plain_data
from meshbox.cluster.addressing import AddressError, check_dns_label

SUPPORTED_KINDS = ("Service", "Deployment", "Pod", "RouteRule")
Obj = dict[str, Any]


class ManifestError(ValueError):
    """A document the local cluster cannot take; the message names the document and the field."""


@dataclass(frozen=True)
class Resource:
    """One applied object: kind, name, namespace and its plain body."""

    kind: str
    name: str
    namespace: str
    body: Obj

    @property
    def key(self) -> str:
        """``namespace/name``, the object's identity within its kind."""
        return f"{self.namespace}/{self.name}"

    def label(self) -> str:
        """kubectl's ``kind/name`` form."""
        return f"{self.kind.lower()}/{self.name}"


def _fail(source: str, where: str, reason: str) -> ManifestError:
    return ManifestError(f"{source}: {where}: {reason}")


def _mapping(value: Any, source: str, where: str) -> Obj:
    if not isinstance(value, dict):
        raise _fail(source, where, f"expected a mapping, got {type(value).__name__}")
    return value


def _list(value: Any, source: str, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise _fail(source, where, "expected a non-empty list")
    return value


def _port(value: Any, source: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise _fail(source, where, f"expected a port number 1-65535, got {value!r}")
    return value


def _check_pod_spec(spec: Any, source: str, where: str) -> None:
    spec = _mapping(spec, source, where)
    names: set[str] = set()
    for key in ("initContainers", "containers"):
        if key == "initContainers" and key not in spec:
            continue
        for i, container in enumerate(_list(spec.get(key), source, f"{where}.{key}")):
            at = f"{where}.{key}[{i}]"
            container = _mapping(container, source, at)
            name = container.get("name")
            if not isinstance(name, str) or not name:
                raise _fail(source, f"{at}.name", "is required")
            if name in names:
                raise _fail(source, f"{at}.name", f"container name {name!r} is used twice")
            names.add(name)
            if not isinstance(container.get("image"), str):
                raise _fail(source, f"{at}.image", "is required")
            for j, port in enumerate(container.get("ports") or []):
                _port(_mapping(port, source, f"{at}.ports[{j}]").get("containerPort"), source,
                      f"{at}.ports[{j}].containerPort")
            probe = (container.get("readinessProbe") or {}).get("httpGet")
            if probe:
                named = {p.get("name") for p in container.get("ports") or []}
                if isinstance(probe.get("port"), str):
                    if probe["port"] not in named:
                        raise _fail(source, f"{at}.readinessProbe.httpGet.port",
                                    f"names no port of the container: {probe['port']!r}")
                else:
                    _port(probe.get("port"), source, f"{at}.readinessProbe.httpGet.port")


def _check_service(body: Obj, source: str) -> None:
    spec = _mapping(body.get("spec"), source, "spec")
    for i, port in enumerate(_list(spec.get("ports"), source, "spec.ports")):
        port = _mapping(port, source, f"spec.ports[{i}]")
        _port(port.get("port"), source, f"spec.ports[{i}].port")
        target = port.get("targetPort", port.get("port"))
        if isinstance(target, int):
            _port(target, source, f"spec.ports[{i}].targetPort")
        elif not isinstance(target, str) or not target:
            raise _fail(source, f"spec.ports[{i}].targetPort", f"expected a port number or name, got {target!r}")
        if port.get("protocol", "TCP") != "TCP":
            raise _fail(source, f"spec.ports[{i}].protocol", "only TCP is supported by the local cluster")
    if len(spec["ports"]) > 1 and any(not p.get("name") for p in spec["ports"]):
        raise _fail(source, "spec.ports", "every port needs a name when a Service has more than one")
    selector = spec.get("selector")
    if selector is not None:
        _mapping(selector, source, "spec.selector")


def _check_deployment(body: Obj, source: str) -> None:
    spec = _mapping(body.get("spec"), source, "spec")
    replicas = spec.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= 20:
        raise _fail(source, "spec.replicas", f"expected 0-20 (local cluster), got {replicas!r}")
    template = _mapping(spec.get("template"), source, "spec.template")
    labels = _mapping(_mapping(template.get("metadata") or {}, source, "spec.template.metadata").get("labels") or {},
                      source, "spec.template.metadata.labels")
    selector = spec.get("selector")
    if selector is not None:
        match = _mapping(_mapping(selector, source, "spec.selector").get("matchLabels") or {}, source,
                         "spec.selector.matchLabels")
        if not selector_matches(match, labels):
            raise _fail(source, "spec.selector", "does not match spec.template.metadata.labels")
    elif body.get("apiVersion") == "apps/v1":
        raise _fail(source, "spec.selector", "is required in apps/v1")
    _check_pod_spec(template.get("spec"), source, "spec.template.spec")


def resource_from(doc: Any, source: str) -> Resource:
    """Check one document and wrap it; raises ManifestError naming what is wrong."""
    if not isinstance(doc, Mapping):
        raise _fail(source, "document", f"expected a mapping, got {type(doc).__name__}")
    body: Obj = plain_data(doc)
    kind = body.get("kind")
    if kind not in SUPPORTED_KINDS:
        raise _fail(source, "kind", f"{kind!r} is not supported by the local cluster "
                                    f"(supported: {', '.join(SUPPORTED_KINDS)})")
    meta = _mapping(body.get("metadata"), source, "metadata")
    name = meta.get("name")
    namespace = meta.get("namespace") or "default"
    try:
        check_dns_label(name if isinstance(name, str) else repr(name), "metadata.name")
        check_dns_label(str(namespace), "metadata.namespace")
    except AddressError as exc:
        raise _fail(source, kind, str(exc)) from None
    if kind == "Service":
        _check_service(body, source)
    elif kind == "Deployment":
        _check_deployment(body, source)
    elif kind == "Pod":
        _check_pod_spec(body.get("spec"), source, "spec")
    else:
        try:
            parse_route_rule(doc, source=source)
        except (ConfigError, ValueError) as exc:
            raise ManifestError(str(exc)) from None
    body["metadata"]["namespace"] = namespace
    return Resource(str(kind), str(name), str(namespace), body)


def parse_manifests(text: str, source: str) -> list[Resource]:
    """Every document of a YAML stream, checked; an empty stream is an error."""
    try:
        docs = [d for d in iter_yaml_documents(text, source=source) if d is not None]
    except ConfigError as exc:
        raise ManifestError(str(exc)) from None
    if not docs:
        raise ManifestError(f"{source}: no objects in the input")
    resources = [resource_from(doc, f"{source} (document {i + 1})") for i, doc in enumerate(docs)]
    seen: set[tuple[str, str]] = set()
    for res in resources:
        if (res.kind, res.key) in seen:
            raise ManifestError(f"{source}: {res.label()} appears twice")
        seen.add((res.kind, res.key))
    return resources


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    """Equality-based label selection (an empty selector matches everything)."""
    return all(str(labels.get(k)) == str(v) for k, v in selector.items())


def parse_label_selector(text: str | None) -> dict[str, str]:
    """``-l app=a,version=v1`` → a selector; only ``=``/``==`` terms are supported."""
    selector: dict[str, str] = {}
    if not text:
        return selector
    for term in text.split(","):
        key, sep, value = term.replace("==", "=").partition("=")
        if not sep or not key.strip() or "!" in key:
            raise ManifestError(f"label selector {text!r}: use key=value terms separated by commas")
        selector[key.strip()] = value.strip()
    return selector


def template_hash(deployment: Obj) -> str:
    """pod-template-hash: a digest of the pod template (10 hex characters)."""
    template = deployment["spec"]["template"]
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def pod_from_deployment(deployment: Obj, pod_name: str) -> Obj:
    """A Pod object made from a Deployment's template, owned by it."""
    template = copy.deepcopy(deployment["spec"]["template"])
    meta = template.get("metadata") or {}
    labels = dict(meta.get("labels") or {})
    labels["pod-template-hash"] = template_hash(deployment)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name,
            "namespace": deployment["metadata"]["namespace"],
            "labels": labels,
            "annotations": dict(meta.get("annotations") or {}),
            "ownerReferences": [{"kind": "Deployment", "name": deployment["metadata"]["name"]}],
        },
        "spec": template["spec"],
    }


def container_port(pod: Obj, name: str) -> int | None:
    """The containerPort a named Service targetPort refers to in this pod."""
    for container in pod["spec"].get("containers", []):
        for port in container.get("ports") or []:
            if port.get("name") == name:
                return int(port["containerPort"])
    return None


def service_endpoints(service: Obj, pods: list[tuple[Obj, str]]) -> list[tuple[Obj, list[tuple[str, int]]]]:
    """For each Service port, the (pod IP, target port) pairs of the selected pods (sorted)."""
    selector = (service["spec"].get("selector") or None)
    result = []
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        backends = []
        if selector:
            for pod, ip in pods:
                if pod["metadata"]["namespace"] != service["metadata"]["namespace"]:
                    continue
                if not selector_matches(selector, pod["metadata"].get("labels") or {}):
                    continue
                number = target if isinstance(target, int) else container_port(pod, target)
                if number is not None:
                    backends.append((ip, number))
        result.append((port, sorted(backends)))
    return result


FIELD_PATHS = {
    "metadata.name": lambda pod, ip: pod["metadata"]["name"],
    "metadata.namespace": lambda pod, ip: pod["metadata"]["namespace"],
    "status.podIP": lambda pod, ip: ip,
    "spec.serviceAccountName": lambda pod, ip: pod["spec"].get("serviceAccountName", "default"),
}


def container_env(container: Obj, pod: Obj, pod_ip: str) -> dict[str, str]:
    """A container's environment: literal values and the downward API fields the injector uses."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = item.get("name")
        if "value" in item:
            env[name] = str(item["value"])
            continue
        path = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if path not in FIELD_PATHS:
            raise ManifestError(f"pod {pod['metadata']['name']}: container {container['name']}: env {name}: "
                                f"only value and fieldRef {', '.join(FIELD_PATHS)} are supported")
        env[name] = FIELD_PATHS[path](pod, pod_ip)
    return env
