"""Whether a stream may ask for a node's config: the node must be a pod running as the identity
in the stream's client certificate. Pure; the gRPC edge extracts the identity, the hub calls this.
"""

from __future__ import annotations

from cryptography import x509

from meshbox.api.identity import IdentityError, WorkloadIdentity, parse_spiffe_id
from meshbox.api.v1 import discovery_pb2
from meshbox.discovery.registry import Registry


class NodeRefused(Exception):
    """The stream's identity does not own the node it asks for; the message says why."""


def identity_from_certificate(pem: bytes, trust_domain: str) -> WorkloadIdentity:
    """The one SPIFFE ID of a (verified) client certificate; NodeRefused if it has none or several."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) != 1:
        raise NodeRefused(f"client certificate carries {len(uris)} URI SANs; exactly one SPIFFE ID is required")
    try:
        identity = parse_spiffe_id(uris[0])
    except IdentityError as exc:
        raise NodeRefused(f"client certificate: {exc}") from None
    if identity.trust_domain != trust_domain:
        raise NodeRefused(f"client certificate is for trust domain {identity.trust_domain!r}, not {trust_domain!r}")
    return identity


def check_node(node: discovery_pb2.Node, identity: WorkloadIdentity, registry: Registry) -> None:
    """Raise NodeRefused unless ``node`` is a pod of the registry running as ``identity``."""
    expected_id = f"{node.pod_name}.{node.pod_namespace}"
    if node.id != expected_id:
        raise NodeRefused(f"node id {node.id!r} is not '<pod_name>.<pod_namespace>' ({expected_id!r})")
    if node.pod_namespace != identity.namespace:
        raise NodeRefused(f"{identity} may not ask for node {node.id!r} of namespace {node.pod_namespace!r}")
    pod = registry.pod(node.pod_namespace, node.pod_name)
    if pod is None:
        raise NodeRefused(f"no pod {node.pod_namespace}/{node.pod_name} in the registry (yet)")
    if pod.service_account != identity.service_account:
        raise NodeRefused(f"{identity} may not ask for node {node.id!r}: that pod runs as service account "
                          f"{pod.service_account!r}")
    if pod.ip and node.pod_ip and pod.ip != node.pod_ip:
        raise NodeRefused(f"node {node.id!r} claims IP {node.pod_ip}, but the pod has {pod.ip}")
