"""One registry snapshot turned into per-node payloads.

The shared outbound half is built and encoded once per namespace. A node's own (inbound) half
depends only on the node, its pod and the Services of its namespace; :meth:`Snapshot.inbound_key`
names exactly those inputs, so a stream can keep its encoded inbound half across snapshots that
did not touch them and a fan-out to many streams only re-hashes and re-frames.
"""

from __future__ import annotations

from collections.abc import Hashable

from meshbox.api.kube.objects import Service
from meshbox.api.v1 import discovery_pb2
from meshbox.discovery.config_builder import ConfigBuilder
from meshbox.discovery.payloads import Payload, SharedPart, combine, encode_own, encode_shared
from meshbox.discovery.registry import Registry


class Snapshot:
    """Immutable registry + the config builder and encoding caches that go with it."""

    def __init__(self, registry: Registry, previous: Snapshot | None = None, *,
                 trust_domain: str | None = None) -> None:
        self.registry = registry
        self.builder = ConfigBuilder(registry, trust_domain=trust_domain)
        # The policies by value (SecurityPolicy compares without its spec): an edited spec changes the key.
        self._policies_key = tuple((p.kind, p.namespace, p.name, p.spec.SerializeToString(deterministic=True))
                                   for p in registry.security_policies)
        self._shared: dict[str, dict[str, SharedPart]] = {}
        self._services: dict[str, tuple[Service, ...]] = {}
        # Only the previous tuples are kept (not the snapshot), so snapshots never chain in memory.
        self._earlier_services = previous._services if previous is not None else {}

    def _services_in(self, namespace: str) -> tuple[Service, ...]:
        found = self._services.get(namespace)
        if found is None:
            found = tuple(s for s in self.registry.services if s.namespace == namespace)
            earlier = self._earlier_services.get(namespace)
            if earlier == found:
                found = earlier  # the same object: comparing keys is then an identity check
            self._services[namespace] = found
        return found

    def inbound_key(self, node: discovery_pb2.Node) -> Hashable:
        """Everything the node's inbound half is built from; equal keys mean equal inbound halves."""
        namespace = node.pod_namespace or "default"
        return (self._services_in(namespace), self.registry.pod(namespace, node.pod_name), namespace,
                node.pod_name, node.pod_ip, tuple(sorted(node.labels.items())), self._policies_key)

    def own(self, node: discovery_pb2.Node) -> dict[str, bytes]:
        """The node's inbound half, encoded per type; raises ValidationError if it would be invalid."""
        return encode_own(self.builder.inbound(node))

    def combine(self, node: discovery_pb2.Node, own: dict[str, bytes]) -> dict[str, Payload]:
        """The namespace's shared half + the node's own half → the four payloads."""
        namespace = node.pod_namespace or "default"
        shared = self._shared.get(namespace)
        if shared is None:
            shared = self._shared[namespace] = encode_shared(self.builder.outbound(namespace))
        return combine(shared, own)

    def payloads(self, node: discovery_pb2.Node) -> dict[str, Payload]:
        """The four types for ``node``, built from scratch."""
        return self.combine(node, self.own(node))

    @property
    def problems(self) -> list[str]:
        """Invalid objects left out, and rules that apply to nothing."""
        return [*self.registry.errors, *self.builder.warnings]
