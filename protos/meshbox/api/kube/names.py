"""Names every component agrees on: cluster DNS, namespaces, well-known labels (constants, pure)."""

from __future__ import annotations

import re

CLUSTER_DOMAIN = "cluster.local"
MESH_NAMESPACE = "meshbox-system"  # where the control plane runs
DISCOVERY_SERVICE = "meshbox-discovery"
# Kubernetes' own namespaces: never injected, never served by the mesh.
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # an EndpointSlice's Service
POD_TEMPLATE_HASH_LABEL = "pod-template-hash"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def service_fqdn(name: str, namespace: str) -> str:
    """``name.namespace.svc.cluster.local``."""
    return f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}"


def service_dns_names(name: str, namespace: str) -> list[str]:
    """The names a Service is reached by inside the cluster, shortest first (the first only from its namespace)."""
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", service_fqdn(name, namespace)]


def is_dns_label(value: str) -> bool:
    """An RFC 1123 label, as Kubernetes requires of names and namespaces (at most 63 characters)."""
    return len(value) <= 63 and bool(_DNS_LABEL.match(value))
