"""Mesh-wide defaults, applied on top of whatever a user's mesh config sets.

Port numbers and the proxy UID follow the peers (Istio), so users find them where
they expect: 15001 outbound capture, 15000 admin, 15020 agent status, UID/GID 1337.
Inbound capture defaults to single-port mode (0 = same as outbound), as in the
2017 tutorial's `-p 15001 -u 1337`; split mode sets ports.inbound_capture (Istio uses 15006).
"""

from __future__ import annotations

from meshbox.api.kube.names import DISCOVERY_SERVICE, MESH_NAMESPACE
from meshbox.api.v1 import mesh_config_pb2

OUTBOUND_CAPTURE_PORT = 15001
ADMIN_PORT = 15000
AGENT_STATUS_PORT = 15020
PROXY_UID = 1337
PROXY_GID = 1337
DISCOVERY_PORT = 15010
DISCOVERY_HTTP_PORT = 15014  # /ready, /metrics, /registry/errors
DISCOVERY_ADDRESS = f"{DISCOVERY_SERVICE}.{MESH_NAMESPACE}.svc:{DISCOVERY_PORT}"
CA_PORT = 15012
CA_ADDRESS = f"{DISCOVERY_SERVICE}.{MESH_NAMESPACE}.svc:{CA_PORT}"
TRUST_DOMAIN = "cluster.local"
# Mesh-wide policies (PeerAuthentication, AuthorizationPolicy) live in the mesh's own namespace, as in Istio.
ROOT_NAMESPACE = MESH_NAMESPACE
# Workload identity in a pod (docs/security.md): discovery publishes its trust bundle to every namespace
# as this ConfigMap; the injector mounts it, a projected service-account token for the CA's audience,
# and a memory volume for the agent's certificate files, at these paths (the agent's defaults).
CA_ROOT_CONFIG_MAP = "meshbox-ca-root"
CA_ROOT_KEY = "root-cert.pem"
CA_ROOT_DIR = "/var/run/meshbox/ca-root"
CA_TOKEN_AUDIENCE = "meshbox-ca"
WORKLOAD_TOKEN_DIR = "/var/run/secrets/tokens"
WORKLOAD_TOKEN_NAME = "meshbox-token"
CERT_DIR = "/var/run/meshbox/certs"
HUB = "docker.io/meshbox"
TAG = "0.1.0"
# Share of new traces sampled, as Istio's default.
TRACE_SAMPLING_PERCENTAGE = 1.0


def default_mesh_config() -> mesh_config_pb2.MeshConfig:
    """A MeshConfig with every default filled in."""
    return mesh_config_pb2.MeshConfig(
        ports=mesh_config_pb2.ProxyPorts(
            outbound_capture=OUTBOUND_CAPTURE_PORT,
            inbound_capture=0,
            admin=ADMIN_PORT,
            agent_status=AGENT_STATUS_PORT,
        ),
        proxy_uid=PROXY_UID,
        proxy_gid=PROXY_GID,
        discovery_address=DISCOVERY_ADDRESS,
        hub=HUB,
        tag=TAG,
        log_level=mesh_config_pb2.INFO,
        outbound_traffic_policy=mesh_config_pb2.ALLOW_ANY,
        trust_domain=TRUST_DOMAIN,
        ca_address=CA_ADDRESS,
        root_namespace=ROOT_NAMESPACE,
        tracing=mesh_config_pb2.TracingConfig(sampling_percentage=TRACE_SAMPLING_PERCENTAGE),
    )


def with_defaults(config: mesh_config_pb2.MeshConfig) -> mesh_config_pb2.MeshConfig:
    """Return a copy of ``config`` with unset scalar fields taken from the defaults.

    Repeated fields (CIDR and port lists) are the user's as written: an empty list is a choice.
    """
    # proto3 MergeFrom copies only fields the user set; the defaults' lists are empty,
    # so the user's lists come through as written.
    merged = default_mesh_config()
    merged.MergeFrom(config)
    return merged


def inbound_capture_port(config: mesh_config_pb2.MeshConfig) -> int:
    """The effective inbound capture port (single-port mode reuses the outbound one)."""
    return config.ports.inbound_capture or config.ports.outbound_capture
