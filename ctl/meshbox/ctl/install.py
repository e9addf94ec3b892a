"""`meshctl install`: render or apply meshbox's control plane on a Kubernetes cluster.

What it makes, in the order it is applied: the mesh namespace, the RouteRule CRD (its schema
generated from meshbox.api's RouteRuleSpec), service accounts, least-privilege RBAC for
discovery (get/list/watch on services, endpointslices, pods, route rules and Istio's security
policies; for the mesh CA: create on tokenreviews, list namespaces and write the ConfigMap
meshbox-ca-root in them, get/create the Secret meshbox-ca in its own namespace; nothing else;
the webhook gets no API access at all), the mesh config, the webhook's TLS Secret, the
discovery and webhook Deployments and Services, and the MutatingWebhookConfiguration whose
``caBundle`` is the CA that signed the webhook's serving certificate. That CA and certificate
are generated here, fresh on every run (meshbox.injector.certs).
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from ruamel.yaml import YAML
from ruamel.yaml.scalarstring import LiteralScalarString

from meshbox.api import defaults
from meshbox.api.kube.names import DISCOVERY_SERVICE, MESH_NAMESPACE, SYSTEM_NAMESPACES
from meshbox.api.loader import ROUTE_RULE_API_VERSION, ROUTE_RULE_KIND, ConfigError, load_mesh_config
from meshbox.api.security_policy import API_GROUP as SECURITY_API_GROUP
from meshbox.api.v1 import mesh_config_pb2, routing_pb2
from meshbox.api.validation import ValidationError, check_image_hub, check_image_tag

if TYPE_CHECKING:
    from meshbox.injector.certs import TlsMaterial

Manifest = dict[str, Any]

INJECTION_LABEL = "meshbox-injection"
DISCOVERY = DISCOVERY_SERVICE
WEBHOOK = "meshbox-webhook"
WEBHOOK_CONFIGURATION = "meshbox-sidecar-injector"
WEBHOOK_NAME = "sidecar-injector.meshbox.io"
TLS_SECRET = "meshbox-webhook-tls"
CA_SECRET = "meshbox-ca"  # the mesh CA's root: operator-provided, or created by discovery on first start
# Workloads' tokens for the CA carry this audience (a projected token), so they cannot be replayed elsewhere.
CA_TOKEN_AUDIENCE = defaults.CA_TOKEN_AUDIENCE
MESH_CONFIG_MAP = "meshbox-mesh-config"
CONTROL_PLANE_UID = 65532  # the control-plane image's USER
DISCOVERY_HTTP_PORT = defaults.DISCOVERY_HTTP_PORT
WEBHOOK_PORT = 15017
NEVER_INJECTED = SYSTEM_NAMESPACES
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class InstallError(click.ClickException):
    """An install that cannot go ahead; the message says why."""


@dataclass(frozen=True)
class InstallOptions:
    """What to render. ``mesh`` carries hub/tag (images) and is stored for the webhook."""

    mesh: mesh_config_pb2.MeshConfig
    namespace: str = MESH_NAMESPACE
    webhook_replicas: int = 2
    webhook_timeout_seconds: int = 10

    def __post_init__(self) -> None:
        if not _DNS_LABEL.match(self.namespace):
            raise InstallError(f"--namespace {self.namespace!r} is not a valid namespace name (a DNS label)")
        if not 1 <= self.webhook_timeout_seconds <= 30:
            raise InstallError(f"webhook timeout must be 1..30 seconds, got {self.webhook_timeout_seconds}")

    def image(self, component: str) -> str:
        return f"{self.mesh.hub or defaults.HUB}/{component}:{self.mesh.tag or defaults.TAG}"


# --- the RouteRule CRD schema, derived from the proto so the two cannot drift ---------------

_SCALAR_SCHEMAS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_INT32: {"type": "integer"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer"},
    FieldDescriptor.TYPE_INT64: {"type": "integer"},
    FieldDescriptor.TYPE_SINT64: {"type": "integer"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "integer"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "minimum": 0},
    FieldDescriptor.TYPE_UINT64: {"type": "integer", "minimum": 0},
    FieldDescriptor.TYPE_FIXED64: {"type": "integer", "minimum": 0},
}
# Well-known types written as strings in YAML (protobuf's JSON mapping): "1.5s", RFC 3339.
_STRING_MESSAGES = {"google.protobuf.Duration", "google.protobuf.Timestamp"}


def _field_schema(field: FieldDescriptor, depth: int) -> dict[str, Any]:
    if field.message_type is not None:
        if field.message_type.full_name in _STRING_MESSAGES:
            return {"type": "string"}
        return message_schema(field.message_type, depth + 1)
    if field.enum_type is not None:
        return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
    return dict(_SCALAR_SCHEMAS[field.type])


def message_schema(descriptor: Descriptor, depth: int = 0) -> dict[str, Any]:
    """OpenAPI v3 schema of a protobuf message in its JSON (lowerCamelCase) form."""
    if depth > 16:
        raise ValueError(f"{descriptor.full_name}: message nesting too deep for a CRD schema (recursive type?)")
    properties: dict[str, Any] = {}
    for field in descriptor.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            schema: dict[str, Any] = {"type": "object", "additionalProperties": _field_schema(value_field, depth)}
        elif field.is_repeated:
            schema = {"type": "array", "items": _field_schema(field, depth)}
        else:
            schema = _field_schema(field, depth)
        properties[field.json_name] = schema
    return {"type": "object", "properties": properties}


def route_rule_crd() -> Manifest:
    """The CustomResourceDefinition of RouteRule (routing.meshbox.io/v1alpha1)."""
    group, version = ROUTE_RULE_API_VERSION.split("/")
    spec_schema = message_schema(routing_pb2.RouteRuleSpec.DESCRIPTOR)
    spec_schema["required"] = ["destination"]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"routerules.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "routerules", "singular": "routerule", "kind": ROUTE_RULE_KIND,
                      "listKind": f"{ROUTE_RULE_KIND}List"},
            "versions": [{
                "name": version,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": spec_schema},
                    "required": ["spec"],
                }},
                "additionalPrinterColumns": [
                    {"name": "Destination", "type": "string", "jsonPath": ".spec.destination"},
                    {"name": "Precedence", "type": "integer", "jsonPath": ".spec.precedence"},
                ],
            }],
        },
    }


# --- the rest of the control plane -----------------------------------------------------------

def _meta(name: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = {"app.kubernetes.io/part-of": "meshbox"}
    return meta


# The root filesystem is read-only; Python libraries that want a scratch file get /tmp.
_TMP_VOLUME = {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}
_TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}


def _container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": CONTROL_PLANE_UID,
        "runAsGroup": CONTROL_PLANE_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _deployment(name: str, namespace: str, replicas: int, pod_spec: dict[str, Any]) -> Manifest:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": {**labels, "app.kubernetes.io/part-of": "meshbox"}},
                         "spec": pod_spec},
        },
    }


def _service(name: str, namespace: str, ports: list[dict[str, Any]]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, namespace),
        "spec": {"selector": {"app": name}, "ports": ports},
    }


def _mesh_config_yaml(mesh: mesh_config_pb2.MeshConfig) -> LiteralScalarString:
    data = json_format.MessageToDict(mesh)
    return LiteralScalarString(_dump_yaml([data]) if data else "{}\n")


def _discovery_port(address: str, field: str = "discovery_address") -> int:
    """The port of a mesh config address (host:port) that the discovery Service exposes."""
    _, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise InstallError(f"{field} {address!r} must be host:port")
    return int(port)


def render(options: InstallOptions, tls: TlsMaterial | None) -> list[Manifest]:
    """Every object of the control plane, in apply order.

    ``tls=None`` leaves out the TLS Secret and the ``caBundle`` (for users who bring their
    own certificates, and for the checked-in copy under deploy/).
    """
    ns = options.namespace
    discovery_port = _discovery_port(options.mesh.discovery_address or defaults.DISCOVERY_ADDRESS)
    ca_port = _discovery_port(options.mesh.ca_address or defaults.CA_ADDRESS, "ca_address")
    objects: list[Manifest] = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": ns, "labels": {"app.kubernetes.io/part-of": "meshbox", INJECTION_LABEL: "disabled"}}},
        route_rule_crd(),
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(DISCOVERY, ns)},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(WEBHOOK, ns),
         "automountServiceAccountToken": False},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": _meta(DISCOVERY),
         "rules": [
             {"apiGroups": [""], "resources": ["services", "pods"], "verbs": ["get", "list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
             {"apiGroups": [ROUTE_RULE_API_VERSION.split("/")[0]], "resources": ["routerules"],
              "verbs": ["get", "list", "watch"]},
             # Istio's security policies, read if their CRDs are installed.
             {"apiGroups": [SECURITY_API_GROUP], "resources": ["peerauthentications", "authorizationpolicies"],
              "verbs": ["get", "list", "watch"]},
             # The mesh CA checks workloads' service-account tokens with TokenReviews...
             {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
             # ...and publishes its trust bundle to every namespace (ConfigMap meshbox-ca-root).
             {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list"]},
             {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "update"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": _meta(DISCOVERY),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": DISCOVERY},
         "subjects": [{"kind": "ServiceAccount", "name": DISCOVERY, "namespace": ns}]},
        # The CA's root Secret, in the control plane's namespace only: read it, or create it on first start.
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": _meta(DISCOVERY, ns),
         "rules": [
             {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [CA_SECRET], "verbs": ["get"]},
             {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _meta(DISCOVERY, ns),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": DISCOVERY},
         "subjects": [{"kind": "ServiceAccount", "name": DISCOVERY, "namespace": ns}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(MESH_CONFIG_MAP, ns),
         "data": {"mesh.yaml": _mesh_config_yaml(options.mesh)}},
    ]
    if tls is not None:
        objects.append({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": _meta(TLS_SECRET, ns),
            "data": {
                "tls.crt": base64.b64encode(tls.cert_pem).decode(),
                "tls.key": base64.b64encode(tls.key_pem).decode(),
                "ca.crt": base64.b64encode(tls.ca_cert_pem).decode(),
            },
        })
    objects += [
        _deployment(DISCOVERY, ns, 1, {
            "serviceAccountName": DISCOVERY,
            "containers": [{
                "name": "discovery",
                "image": options.image("control-plane"),
                "args": ["--kubernetes", "--grpc-port", str(discovery_port),
                         "--http-port", str(DISCOVERY_HTTP_PORT),
                         "--mesh-config", "/etc/meshbox/mesh/mesh.yaml",
                         "--ca-dir", "/etc/meshbox/ca", "--ca-secret", CA_SECRET,
                         "--ca-port", str(ca_port), "--token-audience", CA_TOKEN_AUDIENCE],
                "env": [{"name": "POD_NAMESPACE",
                         "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}}],
                "ports": [{"name": "grpc-discovery", "containerPort": discovery_port},
                          {"name": "grpc-ca", "containerPort": ca_port},
                          {"name": "http-monitoring", "containerPort": DISCOVERY_HTTP_PORT}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": DISCOVERY_HTTP_PORT},
                                   "periodSeconds": 5},
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
                "securityContext": _container_security(),
                "volumeMounts": [
                    {"name": "ca", "mountPath": "/etc/meshbox/ca", "readOnly": True},
                    {"name": "mesh-config", "mountPath": "/etc/meshbox/mesh", "readOnly": True},
                    _TMP_MOUNT,
                ],
            }],
            "volumes": [
                # Optional: absent on first install, when discovery creates it (meshbox.discovery.ca_secret).
                {"name": "ca", "secret": {"secretName": CA_SECRET, "optional": True}},
                {"name": "mesh-config", "configMap": {"name": MESH_CONFIG_MAP}},
                _TMP_VOLUME,
            ],
        }),
        _service(DISCOVERY, ns, [
            {"name": "grpc-discovery", "port": discovery_port, "targetPort": discovery_port},
            {"name": "grpc-ca", "port": ca_port, "targetPort": ca_port},
            {"name": "http-monitoring", "port": DISCOVERY_HTTP_PORT, "targetPort": DISCOVERY_HTTP_PORT},
        ]),
        _deployment(WEBHOOK, ns, options.webhook_replicas, {
            "serviceAccountName": WEBHOOK,
            "automountServiceAccountToken": False,
            "containers": [{
                "name": "webhook",
                "image": options.image("control-plane"),
                "command": ["meshbox-webhook"],
                "args": ["--port", str(WEBHOOK_PORT),
                         "--tls-cert-file", "/etc/meshbox/tls/tls.crt",
                         "--tls-key-file", "/etc/meshbox/tls/tls.key",
                         "--mesh-config", "/etc/meshbox/mesh/mesh.yaml",
                         "--mesh-namespace", ns],
                "ports": [{"name": "https-webhook", "containerPort": WEBHOOK_PORT}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": WEBHOOK_PORT, "scheme": "HTTPS"},
                                   "periodSeconds": 5},
                "resources": {"requests": {"cpu": "20m", "memory": "48Mi"}, "limits": {"memory": "256Mi"}},
                "securityContext": _container_security(),
                "volumeMounts": [
                    {"name": "tls", "mountPath": "/etc/meshbox/tls", "readOnly": True},
                    {"name": "mesh-config", "mountPath": "/etc/meshbox/mesh", "readOnly": True},
                    _TMP_MOUNT,
                ],
            }],
            "volumes": [
                {"name": "tls", "secret": {"secretName": TLS_SECRET}},
                {"name": "mesh-config", "configMap": {"name": MESH_CONFIG_MAP}},
                _TMP_VOLUME,
            ],
        }),
        _service(WEBHOOK, ns, [{"name": "https-webhook", "port": 443, "targetPort": WEBHOOK_PORT}]),
    ]
    client_config: dict[str, Any] = {"service": {"name": WEBHOOK, "namespace": ns, "path": "/inject", "port": 443}}
    if tls is not None:
        client_config["caBundle"] = base64.b64encode(tls.ca_cert_pem).decode()
    objects.append({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": _meta(WEBHOOK_CONFIGURATION),
        "webhooks": [{
            "name": WEBHOOK_NAME,
            "admissionReviewVersions": ["v1"],
            "clientConfig": client_config,
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {
                "matchLabels": {INJECTION_LABEL: "enabled"},
                "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                                      "values": [ns, *NEVER_INJECTED]}],
            },
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "timeoutSeconds": options.webhook_timeout_seconds,
            "reinvocationPolicy": "Never",
            "matchPolicy": "Equivalent",
        }],
    })
    return objects


def _dump_yaml(objects: list[Any]) -> str:
    # The round-trip dumper keeps key order (apiVersion, kind, metadata first); the safe one sorts.
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.indent(mapping=2, sequence=4, offset=2)
    out = []
    for obj in objects:
        buf = io.StringIO()
        yaml.dump(obj, buf)
        out.append(buf.getvalue())
    return "---\n".join(out)


def render_yaml(options: InstallOptions, tls: TlsMaterial | None) -> str:
    """The control plane as one multi-document YAML stream."""
    if tls is None:
        header = ("# meshbox control plane, rendered by `meshctl install --dry-run --without-tls`:\n"
                  "# no TLS Secret and no caBundle; provide both, or use `meshctl install`.\n")
    else:
        header = "# meshbox control plane, rendered by `meshctl install --dry-run`\n"
    return header + _dump_yaml(render(options, tls))


def apply(manifest: str, kubectl: str, context: str | None) -> None:
    """``kubectl apply`` the rendered stream; raise InstallError with kubectl's message on failure."""
    binary = shutil.which(kubectl)
    if binary is None:
        raise InstallError(f"{kubectl!r} not found: install kubectl, or use --dry-run to print the manifests")
    cmd = [binary, *(["--context", context] if context else []), "apply", "-f", "-"]
    result = subprocess.run(cmd, input=manifest, capture_output=True, text=True, check=False)
    sys.stdout.write(result.stdout)
    if result.returncode != 0:
        raise InstallError(f"kubectl apply failed (exit {result.returncode}): {result.stderr.strip()}")


@click.command("install")
@click.option("--dry-run", is_flag=True, help="Print the manifests instead of applying them.")
@click.option("--mesh-config", "mesh_config", type=click.Path(dir_okay=False, path_type=Path),
              help="Mesh config YAML stored for the webhook (hub/tag also name the images).")
@click.option("--hub", help="Image registry of the meshbox images (overrides the mesh config).")
@click.option("--tag", help="Image tag of the meshbox images (overrides the mesh config).")
@click.option("--namespace", default=MESH_NAMESPACE, show_default=True, help="Namespace of the control plane.")
@click.option("--without-tls", is_flag=True,
              help="Leave out the webhook's TLS Secret and caBundle (bring your own certificates).")
@click.option("--kubectl", default="kubectl", show_default=True, help="kubectl binary used to apply.")
@click.option("--context", help="kubeconfig context to apply to (default: kubectl's current one).")
def install(dry_run: bool, mesh_config: Path | None, hub: str | None, tag: str | None, namespace: str,
            without_tls: bool, kubectl: str, context: str | None) -> None:
    """Install meshbox's control plane (discovery, injection webhook) on a cluster.

    Generates a CA and the webhook's serving certificate, then applies everything with
    kubectl (or prints it with --dry-run). Label a namespace meshbox-injection=enabled to
    have its new pods injected.
    """
    try:
        mesh = load_mesh_config(mesh_config)
    except ConfigError as e:
        raise InstallError(str(e)) from None
    try:
        if hub is not None:
            check_image_hub(hub, source="--hub", path="")
            mesh.hub = hub
        if tag is not None:
            check_image_tag(tag, source="--tag", path="")
            mesh.tag = tag
    except ValidationError as e:
        raise InstallError(str(e)) from None
    if mesh.discovery_address == defaults.DISCOVERY_ADDRESS and namespace != MESH_NAMESPACE:
        # The default address names the default namespace; follow the control plane.
        mesh.discovery_address = f"{DISCOVERY}.{namespace}.svc:{defaults.DISCOVERY_PORT}"
    if mesh.ca_address == defaults.CA_ADDRESS and namespace != MESH_NAMESPACE:
        mesh.ca_address = f"{DISCOVERY}.{namespace}.svc:{defaults.CA_PORT}"
    options = InstallOptions(mesh=mesh, namespace=namespace)
    # cryptography is imported only here: it costs every other meshctl command ~0.4 s of start-up.
    from meshbox.api.kube.names import service_dns_names
    from meshbox.injector.certs import generate_tls_material

    tls = None if without_tls else generate_tls_material(service_dns_names(WEBHOOK, namespace))
    manifest = render_yaml(options, tls)
    if dry_run:
        click.echo(manifest, nl=False)
        return
    apply(manifest, kubectl, context)
