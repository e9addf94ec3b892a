"""Who this sidecar is: the pod's name, namespace and IP from the downward API."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from meshbox.api.v1 import discovery_pb2

REQUIRED = ("POD_NAME", "POD_NAMESPACE", "POD_IP")


class PodIdentityError(ValueError):
    """An environment variable the agent needs is missing or malformed."""


def node_from_env(env: Mapping[str, str]) -> discovery_pb2.Node:
    """The discovery Node for this pod; raises PodIdentityError naming the bad variable."""
    values = {}
    for name in REQUIRED:
        value = env.get(name, "").strip()
        if not value:
            raise PodIdentityError(
                f"{name} is not set: the injected proxy container gets it from the downward API; "
                f"outside Kubernetes export {', '.join(REQUIRED)} before starting the agent"
            )
        values[name] = value
    try:
        ipaddress.ip_address(values["POD_IP"])
    except ValueError:
        raise PodIdentityError(f"POD_IP is not an IP address: {values['POD_IP']!r}") from None
    return discovery_pb2.Node(
        id=f"{values['POD_NAME']}.{values['POD_NAMESPACE']}",
        pod_name=values["POD_NAME"],
        pod_namespace=values["POD_NAMESPACE"],
        pod_ip=values["POD_IP"],
    )


def service_account_from_env(env: Mapping[str, str]) -> str:
    """SERVICE_ACCOUNT (the injector sets it from spec.serviceAccountName); raises PodIdentityError."""
    value = env.get("SERVICE_ACCOUNT", "").strip()
    if not value:
        raise PodIdentityError("SERVICE_ACCOUNT is not set: the injected proxy container gets it from the downward "
                               "API (spec.serviceAccountName); it names the workload identity the agent asks for")
    return value
