"""Per-type discovery payloads: packed resources, a content-hash version, and wire bytes.

A DiscoveryResponse is encoded once per type and node, without its nonce; the nonce is
appended per send. Protobuf allows this: concatenated encodings of the same message type
merge (scalars from the later part, repeated fields appended), so the shared outbound
resources are packed and encoded once per namespace and every node only adds its own part.
The response's own fields (resources as google.protobuf.Any, version_info, type_url, nonce)
are written directly in the wire format: building Any and response objects for every node
of a fan-out costs several times more, and their layout is fixed by discovery.proto.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from meshbox.api.v1 import proxy_config_pb2 as pc

_PREFIX = "type.googleapis.com/meshbox.api.v1."
CLUSTER = _PREFIX + "Cluster"
ENDPOINTS = _PREFIX + "ClusterLoadAssignment"
LISTENER = _PREFIX + "Listener"
ROUTE = _PREFIX + "RouteConfiguration"
# Make-before-break: what a listener or route points at arrives before it.
PUSH_ORDER = (CLUSTER, ENDPOINTS, LISTENER, ROUTE)
_FIELD = {CLUSTER: "clusters", ENDPOINTS: "endpoints", LISTENER: "listeners", ROUTE: "route_configs"}
VERSION_LENGTH = 16
# Field numbers in DiscoveryResponse and google.protobuf.Any.
_VERSION_INFO, _RESOURCES, _TYPE_URL, _NONCE = 1, 2, 3, 4
_ANY_TYPE_URL, _ANY_VALUE = 1, 2


def short_type(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


def resources_of(config: pc.ProxyConfig, type_url: str) -> Sequence[Message]:
    return getattr(config, _FIELD[type_url])


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    """One wire-type-2 field (bytes, string or embedded message)."""
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def encode_resources(resources: Sequence[Message], type_url: str) -> bytes:
    """The ``resources`` field of a DiscoveryResponse: each resource packed in an Any."""
    type_field = _length_delimited(_ANY_TYPE_URL, type_url.encode())
    return b"".join(
        _length_delimited(_RESOURCES, type_field + _length_delimited(_ANY_VALUE, value))
        for value in (r.SerializeToString(deterministic=True) for r in resources)
    )


@dataclass(frozen=True)
class SharedPart:
    """One type's resources shared by many nodes: encoded once, hashed once."""

    body: bytes
    hasher: hashlib._Hash


def encode_shared(config: pc.ProxyConfig) -> dict[str, SharedPart]:
    parts = {}
    for type_url in PUSH_ORDER:
        encoded = encode_resources(resources_of(config, type_url), type_url)
        parts[type_url] = SharedPart(encoded, hashlib.sha256(encoded))
    return parts


def encode_own(config: pc.ProxyConfig) -> dict[str, bytes]:
    """A node's own resources (its inbound half), encoded per type."""
    return {t: encode_resources(resources_of(config, t), t) for t in PUSH_ORDER}


@dataclass(frozen=True)
class Payload:
    """A type's full state of the world for one node, ready to send once given a nonce."""

    type_url: str
    version: str
    shared: bytes  # the namespace's shared resources, one object for all its nodes (not copied)
    own: bytes  # the node's own resources, version and type_url

    def encode(self, nonce: str) -> bytes:
        return b"".join((self.shared, self.own, _length_delimited(_NONCE, nonce.encode())))


def combine(shared: dict[str, SharedPart], own: dict[str, bytes]) -> dict[str, Payload]:
    """Shared part + the node's own encoded resources → one Payload per type; version = hash of both."""
    payloads = {}
    for type_url in PUSH_ORDER:
        part = shared[type_url]
        hasher = part.hasher.copy()
        hasher.update(own[type_url])
        version = hasher.hexdigest()[:VERSION_LENGTH]
        tail = _length_delimited(_VERSION_INFO, version.encode()) + _length_delimited(_TYPE_URL, type_url.encode())
        payloads[type_url] = Payload(type_url, version, part.body, own[type_url] + tail)
    return payloads


def node_payloads(shared: dict[str, SharedPart], own: pc.ProxyConfig) -> dict[str, Payload]:
    """Shared part + the node's own resources → one Payload per type."""
    return combine(shared, encode_own(own))
