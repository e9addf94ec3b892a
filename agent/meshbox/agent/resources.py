"""The four discovery resource types and how they add up to one ProxyConfig.

Pure functions: decoding a DiscoveryResponse's packed resources and assembling the
proxy's whole configuration from the latest resources of each type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.protobuf.message import DecodeError, Message

from meshbox.api.v1 import discovery_pb2, proxy_config_pb2

_PREFIX = "type.googleapis.com/meshbox.api.v1."
CLUSTER = _PREFIX + "Cluster"
ENDPOINTS = _PREFIX + "ClusterLoadAssignment"
LISTENER = _PREFIX + "Listener"
ROUTES = _PREFIX + "RouteConfiguration"

# Make-before-break order: what is referred to comes before what refers to it.
TYPE_URLS: tuple[str, ...] = (CLUSTER, ENDPOINTS, LISTENER, ROUTES)

_MESSAGE_TYPES: dict[str, type[Message]] = {
    CLUSTER: proxy_config_pb2.Cluster,
    ENDPOINTS: proxy_config_pb2.ClusterLoadAssignment,
    LISTENER: proxy_config_pb2.Listener,
    ROUTES: proxy_config_pb2.RouteConfiguration,
}


class ResourceError(ValueError):
    """A discovery response whose resources cannot be decoded; the message says which and why."""


def short_name(type_url: str) -> str:
    """``type.googleapis.com/meshbox.api.v1.Cluster`` → ``Cluster`` (for logs and errors)."""
    return type_url.rsplit(".", 1)[-1]


def decode(response: discovery_pb2.DiscoveryResponse) -> list[Message]:
    """Unpack every resource of a response, checking each is of the response's type."""
    message_type = _MESSAGE_TYPES.get(response.type_url)
    if message_type is None:
        raise ResourceError(f"unknown type_url {response.type_url!r} (known: {', '.join(TYPE_URLS)})")
    decoded: list[Message] = []
    for i, packed in enumerate(response.resources):
        if packed.type_url != response.type_url:
            raise ResourceError(
                f"resources[{i}]: type_url {packed.type_url!r} in a response of type {response.type_url!r}"
            )
        message = message_type()
        try:
            message.ParseFromString(packed.value)
        except DecodeError as exc:
            raise ResourceError(f"resources[{i}]: cannot decode {short_name(response.type_url)}: {exc}") from exc
        decoded.append(message)
    return decoded


def assemble(resources: Mapping[str, Sequence[Message]]) -> proxy_config_pb2.ProxyConfig:
    """One ProxyConfig from the resources of all four types (a missing type counts as empty)."""
    config = proxy_config_pb2.ProxyConfig()
    config.clusters.extend(resources.get(CLUSTER, ()))  # type: ignore[arg-type]
    config.endpoints.extend(resources.get(ENDPOINTS, ()))  # type: ignore[arg-type]
    config.listeners.extend(resources.get(LISTENER, ()))  # type: ignore[arg-type]
    config.route_configs.extend(resources.get(ROUTES, ()))  # type: ignore[arg-type]
    return config
