"""What every Istio networking object has: apiVersion, kind, metadata; and how hosts are named."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshbox.api.istio.fields import MESH_TODO, Reader

GROUP = "networking.istio.io"
VERSIONS = ("v1", "v1beta1", "v1alpha3")
KINDS = ("VirtualService", "DestinationRule", "ServiceEntry")
CLUSTER_DOMAIN = "svc.cluster.local"


def is_istio_networking(doc: Mapping[str, Any]) -> bool:
    """Whether a document is one of the networking.istio.io kinds meshbox reads (any served version)."""
    api_version = doc.get("apiVersion")
    if not isinstance(api_version, str) or "/" not in api_version:
        return False
    group, version = api_version.split("/", 1)
    return group == GROUP and version in VERSIONS and doc.get("kind") in KINDS


def resource_label(doc: Mapping[str, Any]) -> str:
    """'Kind namespace/name' for findings."""
    meta = doc.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    return f"{doc.get('kind', '?')} {meta.get('namespace') or 'default'}/{meta.get('name', '?')}"


def metadata(r: Reader, doc: Mapping[str, Any]) -> tuple[str, str]:
    """(name, namespace) of an object; a missing name is reported."""
    meta = r.mapping(doc.get("metadata"), "metadata")
    name = r.string(meta.get("name"), "metadata.name", required=True)
    namespace = r.string(meta.get("namespace"), "metadata.namespace") or "default"
    return name, namespace


def qualify_host(host: str, namespace: str) -> str:
    """A host as Istio resolves it from an object in ``namespace``: 'reviews' → reviews.<ns>.svc.cluster.local.

    'name.ns' and 'name.ns.svc' are completed the way Kubernetes DNS completes them; anything
    longer is taken as a fully qualified name (a ServiceEntry host such as api.example.com).
    """
    host = host.rstrip(".").lower()
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.{CLUSTER_DOMAIN}"
    if len(parts) == 2:
        return f"{host}.{CLUSTER_DOMAIN}"
    if len(parts) == 3 and parts[2] == "svc":
        return f"{host}.cluster.local"
    return host


def check_host(r: Reader, host: str, path: str) -> bool:
    """Reports wildcard hosts, which meshbox cannot route (it routes by Service)."""
    if "*" in host:
        r.refuse(path, f"wildcard hosts: {MESH_TODO}")
        return False
    return True
