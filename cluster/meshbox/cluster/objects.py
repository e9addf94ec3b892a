"""Kubernetes-shaped objects the local cluster accepts, checked before anything is made (pure).

Supported kinds: Service, Deployment (apps/v1 or extensions/v1beta1), Pod, RouteRule and Istio's
VirtualService, DestinationRule and ServiceEntry (networking.istio.io), RouteRule and
DestinationPolicy (config.istio.io/v1alpha2), PeerAuthentication and AuthorizationPolicy
(security.istio.io); fields meshbox does not implement are refused here, as discovery refuses
them. Every
check runs on the whole input first, so a bad document leaves the cluster exactly as it was.
Services and pod labels/ports are read by meshbox.api.kube, the parser discovery uses, so an
object the cluster takes is one discovery reads the same way; errors name the document, the
object and the field, as the API server's do.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshbox.api.istio.destination_rule import translate_destination_rule
from meshbox.api.istio.findings import Finding, has_errors
from meshbox.api.istio.legacy import API_VERSION as LEGACY_API_VERSION
from meshbox.api.istio.legacy import (
    is_istio_legacy,
    translate_destination_policy,
    translate_legacy_route_rule,
)
from meshbox.api.istio.objects import GROUP, VERSIONS, is_istio_networking
from meshbox.api.istio.service_entry import translate_service_entry
from meshbox.api.istio.virtual_service import translate_virtual_service
from meshbox.api.kube.endpoints import matches
from meshbox.api.kube.names import POD_TEMPLATE_HASH_LABEL, is_dns_label
from meshbox.api.kube.objects import FieldReader, ObjectError, object_label, parse_pod, parse_service
from meshbox.api.loader import ConfigError, iter_yaml_documents, parse_route_rule, plain_data
from meshbox.api.security_policy import KINDS as SECURITY_KINDS
from meshbox.api.security_policy import parse_security_policy

ISTIO_TRANSLATORS: dict[str, Callable[..., tuple[Any, list[Finding]]]] = {
    "VirtualService": translate_virtual_service, "DestinationRule": translate_destination_rule,
    "ServiceEntry": translate_service_entry}
SUPPORTED_KINDS = ("Service", "Deployment", "Pod", "RouteRule", *ISTIO_TRANSLATORS, "DestinationPolicy",
                   *SECURITY_KINDS)
MAX_REPLICAS = 20  # the local cluster's limit: each pod is a namespace and several processes
Obj = dict[str, Any]  # a Kubernetes object as plain data (the one definition)


class ManifestError(ValueError):
    """A document the local cluster cannot take; the message names the document, object and field."""


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


def _list(r: FieldReader, value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise r.fail("expected a non-empty list", where)
    return value


def _check_pod_spec(r: FieldReader, spec: Any, where: str) -> None:
    spec = r.mapping(spec, where)
    if not spec:
        raise r.fail("is required", where)
    names: set[str] = set()
    for key in ("initContainers", "containers"):
        if key == "initContainers" and key not in spec:
            continue
        for i, container in enumerate(_list(r, spec.get(key), f"{where}.{key}")):
            at = f"{where}.{key}[{i}]"
            container = r.mapping(container, at)
            name = r.string(container.get("name"), f"{at}.name", required=True)
            if name in names:
                raise r.fail(f"container name {name!r} is used twice", f"{at}.name")
            names.add(name)
            r.string(container.get("image"), f"{at}.image", required=True)
            for j, port in enumerate(r.items(container.get("ports"), f"{at}.ports")):
                r.port(r.mapping(port, f"{at}.ports[{j}]").get("containerPort"), f"{at}.ports[{j}].containerPort")
            probe = r.mapping(r.mapping(container.get("readinessProbe"), f"{at}.readinessProbe").get("httpGet"),
                              f"{at}.readinessProbe.httpGet")
            if probe:
                named = {p.get("name") for p in container.get("ports") or []}
                if isinstance(probe.get("port"), str):
                    if probe["port"] not in named:
                        raise r.fail(f"names no port of the container: {probe['port']!r}",
                                     f"{at}.readinessProbe.httpGet.port")
                else:
                    r.port(probe.get("port"), f"{at}.readinessProbe.httpGet.port")
    policy = spec.get("restartPolicy", "Always")
    if policy not in ("Always", "OnFailure", "Never"):
        raise r.fail(f'unsupported value {policy!r}: supported values: "Always", "OnFailure", "Never"',
                     f"{where}.restartPolicy")


def _check_service(r: FieldReader, body: Obj, source: str) -> None:
    spec = r.mapping(body.get("spec"), "spec")
    ports = _list(r, spec.get("ports"), "spec.ports")
    for i, port in enumerate(ports):
        if r.mapping(port, f"spec.ports[{i}]").get("protocol", "TCP") != "TCP":
            raise r.fail("only TCP is supported by the local cluster", f"spec.ports[{i}].protocol")
    if len(ports) > 1 and any(not p.get("name") for p in ports):
        raise r.fail("every port needs a name when a Service has more than one", "spec.ports")
    if spec.get("clusterIP") == "None":
        raise r.fail("headless Services are not supported by the local cluster", "spec.clusterIP")
    parse_service(body, source=source, allocates_ip=True)


def _pod_facts(r: FieldReader, meta: Any, spec: Any, source: str, where: str) -> None:
    """Labels are strings and container ports are numbers, read as discovery reads them."""
    doc = {"kind": "Pod", "metadata": {**r.mapping(meta, f"{where}metadata"), "name": "x"}, "spec": spec}
    try:
        parse_pod(doc, source=source)
    except ObjectError as exc:
        raise r.fail(exc.reason, f"{where}{exc.path}") from None


def _check_deployment(r: FieldReader, body: Obj, source: str) -> None:
    spec = r.mapping(body.get("spec"), "spec")
    replicas = spec.get("replicas", 1)
    if isinstance(replicas, bool) or not isinstance(replicas, int) or not 0 <= replicas <= MAX_REPLICAS:
        raise r.fail(f"Invalid value: {replicas!r}: must be 0-{MAX_REPLICAS} (local cluster)", "spec.replicas")
    template = r.mapping(spec.get("template"), "spec.template")
    if not template:
        raise r.fail("is required", "spec.template")
    meta = r.mapping(template.get("metadata"), "spec.template.metadata")
    labels = r.labels(meta.get("labels"), "spec.template.metadata.labels")
    selector = spec.get("selector")
    if selector is not None:
        match = r.labels(r.mapping(selector, "spec.selector").get("matchLabels"), "spec.selector.matchLabels")
        if not matches(match, labels) or not match:
            raise r.fail("does not match spec.template.metadata.labels", "spec.selector")
    elif body.get("apiVersion") == "apps/v1":
        raise r.fail("is required in apps/v1", "spec.selector")
    _check_pod_spec(r, template.get("spec"), "spec.template.spec")
    _pod_facts(r, meta, template.get("spec"), source, "spec.template.")


def resource_from(doc: Any, source: str) -> Resource:
    """Check one document and wrap it; raises ManifestError naming what is wrong."""
    if not isinstance(doc, Mapping):
        raise ManifestError(f"{source}: document: expected a mapping, got {type(doc).__name__}")
    body: Obj = plain_data(doc)
    kind = body.get("kind")
    if kind not in SUPPORTED_KINDS:
        raise ManifestError(f"{source}: kind: {kind!r} is not supported by the local cluster "
                            f"(supported: {', '.join(SUPPORTED_KINDS)})")
    r = FieldReader(body, source)
    try:
        meta = r.mapping(body.get("metadata"), "metadata")
        name = meta.get("name")
        namespace = meta.get("namespace") or "default"
        for value, where in ((name, "metadata.name"), (namespace, "metadata.namespace")):
            if not isinstance(value, str) or not is_dns_label(value):
                raise r.fail(f"Invalid value: {value!r}: must be lower-case letters, digits and '-', "
                             "at most 63 characters", where)
        if kind == "Service":
            _check_service(r, body, source)
        elif kind == "Deployment":
            _check_deployment(r, body, source)
        elif kind == "Pod":
            _check_pod_spec(r, body.get("spec"), "spec")
            _pod_facts(r, meta, body.get("spec"), source, "")
        elif kind in ISTIO_TRANSLATORS or kind == "DestinationPolicy" or is_istio_legacy(body):
            _check_istio(body, source)
        elif kind in SECURITY_KINDS:
            try:
                parse_security_policy(body, source=source)
            except ValueError as exc:  # ConfigError, ValidationError: the object and field named
                raise ManifestError(str(exc)) from None
        else:
            try:
                parse_route_rule(doc, source=source)
            except (ConfigError, ValueError) as exc:
                raise ManifestError(str(exc)) from None
    except ObjectError as exc:
        raise ManifestError(str(exc)) from None
    body["metadata"]["namespace"] = namespace
    return Resource(str(kind), str(name), str(namespace), body)


def _check_istio(body: Obj, source: str) -> None:
    """An Istio networking object meshbox can serve whole: its errors, one line each, else nothing."""
    if is_istio_legacy(body):
        translate = translate_legacy_route_rule if body["kind"] == "RouteRule" else translate_destination_policy
        _, findings = translate(body, source=source)
    elif not is_istio_networking(body):
        versions = [f"{GROUP}/{v}" for v in VERSIONS] if body["kind"] != "DestinationPolicy" else []
        raise ManifestError(f"{source}: {object_label(body)}: apiVersion: {body.get('apiVersion')!r} is not "
                            f"{', '.join([*versions, LEGACY_API_VERSION])}")
    else:
        _, findings = ISTIO_TRANSLATORS[str(body["kind"])](body, source=source)
    if has_errors(findings):
        raise ManifestError("\n".join(str(f) for f in findings if f.severity == "error"))


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
    labels[POD_TEMPLATE_HASH_LABEL] = template_hash(deployment)
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
            raise ManifestError(f"{object_label(pod)}: container {container['name']}: env {name}: "
                                f"only value and fieldRef {', '.join(FIELD_PATHS)} are supported")
        env[name] = FIELD_PATHS[path](pod, pod_ip)
    return env
