"""Which security policies apply to a workload, resolved as Istio does. Pure.

Peer authentication: a policy selecting the workload beats its namespace's selector-less
policy, which beats the mesh-wide one (selector-less, in the root namespace); UNSET inherits
from the next level; PERMISSIVE when nothing says otherwise. A per-port mode of the workload's
policy beats its whole-workload mode. Of two policies at the same level the first (file order,
or list order from the API) wins.

Authorization: every policy of the workload's namespace, or of the root namespace, whose
selector matches (or that has none). No ALLOW policy means allow; DENY wins over ALLOW.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from meshbox.api.security_policy import AUTHORIZATION_POLICY, PEER_AUTHENTICATION, SecurityPolicy
from meshbox.api.v1 import security_pb2

Mode: TypeAlias = security_pb2.PeerAuthentication.MutualTLS.Mode.ValueType
UNSET = security_pb2.PeerAuthentication.MutualTLS.UNSET
PERMISSIVE = security_pb2.PeerAuthentication.MutualTLS.PERMISSIVE


def selects(selector: security_pb2.WorkloadSelector, labels: Mapping[str, str]) -> bool:
    """A selector matches when the labels include all of its match_labels (an empty one matches all)."""
    return all(labels.get(k) == v for k, v in selector.match_labels.items())


@dataclass(frozen=True)
class MtlsModes:
    """The effective mode of a workload: for the whole workload, and for ports that differ."""

    default: Mode
    ports: Mapping[int, Mode]

    def for_port(self, port: int) -> Mode:
        return self.ports.get(port, self.default)


def _first(policies: Iterable[SecurityPolicy]) -> security_pb2.PeerAuthentication | None:
    for policy in policies:
        assert isinstance(policy.spec, security_pb2.PeerAuthentication)
        return policy.spec
    return None


def effective_mtls(policies: Iterable[SecurityPolicy], *, root_namespace: str, namespace: str,
                   labels: Mapping[str, str]) -> MtlsModes:
    """The peer authentication modes of a workload (namespace + labels)."""
    peer = [p for p in policies if p.kind == PEER_AUTHENTICATION]
    mesh = _first(p for p in peer if p.namespace == root_namespace and not p.spec.selector.match_labels)
    space = _first(p for p in peer if p.namespace == namespace and not p.spec.selector.match_labels)
    workload = _first(p for p in peer if p.namespace == namespace and p.spec.selector.match_labels
                      and selects(p.spec.selector, labels))
    mode = PERMISSIVE
    for level in (mesh, space, workload):
        if level is not None and level.mtls.mode != UNSET:
            mode = level.mtls.mode
    ports: dict[int, Mode] = {}
    if workload is not None:
        ports = {port: m.mode for port, m in workload.port_level_mtls.items() if m.mode != UNSET}
    return MtlsModes(mode, ports)


def authorization_policies(policies: Iterable[SecurityPolicy], *, root_namespace: str, namespace: str,
                           labels: Mapping[str, str]) -> list[SecurityPolicy]:
    """The AuthorizationPolicies that apply to a workload, in their original order."""
    return [p for p in policies if p.kind == AUTHORIZATION_POLICY and p.namespace in (namespace, root_namespace)
            and selects(p.spec.selector, labels)]
