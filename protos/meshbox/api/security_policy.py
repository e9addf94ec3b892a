"""Istio's security.istio.io PeerAuthentication and AuthorizationPolicy objects → config-model messages.

Both ``security.istio.io/v1`` and ``v1beta1`` are read (their specs are the same). meshbox supports
a subset of the spec (see security.proto); a field Istio has and meshbox does not is refused with
its path, rather than silently ignored: a policy that would be enforced only in part is worse than
one refused whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshbox.api.loader import ConfigError, message_from_data
from meshbox.api.v1 import security_pb2
from meshbox.api.validation import validate_authorization_policy, validate_peer_authentication

API_GROUP = "security.istio.io"
API_VERSIONS = (f"{API_GROUP}/v1", f"{API_GROUP}/v1beta1")
PEER_AUTHENTICATION = "PeerAuthentication"
AUTHORIZATION_POLICY = "AuthorizationPolicy"
KINDS = (PEER_AUTHENTICATION, AUTHORIZATION_POLICY)

# Istio fields meshbox does not implement, per message (YAML spelling; snake_case is refused too).
_UNSUPPORTED: dict[str, tuple[str, ...]] = {
    "PeerAuthentication": ("portLevelTls",),
    "AuthorizationPolicy": ("targetRef", "targetRefs", "provider"),
    "Source": ("requestPrincipals", "notRequestPrincipals", "ipBlocks", "notIpBlocks", "remoteIpBlocks",
               "notRemoteIpBlocks", "serviceAccounts", "notServiceAccounts"),
    "Operation": ("hosts", "notHosts"),
}
_UNSUPPORTED_ACTIONS = ("AUDIT", "CUSTOM")


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


@dataclass(frozen=True)
class SecurityPolicy:
    """One policy object: its kind, name, namespace and validated spec."""

    kind: str
    name: str
    namespace: str
    spec: security_pb2.PeerAuthentication | security_pb2.AuthorizationPolicy = field(compare=False)


class _Unsupported:
    def __init__(self, source: str) -> None:
        self.source = source

    def check(self, data: Any, message: str, path: str) -> None:
        if not isinstance(data, Mapping):
            return  # the loader reports the wrong type
        for key in data:
            if isinstance(key, str) and (key in _UNSUPPORTED.get(message, ()) or key in
                                         {_snake(k) for k in _UNSUPPORTED.get(message, ())}):
                raise ConfigError(f"Istio's {key} is not supported by meshbox; remove it", source=self.source,
                                  path=f"{path}.{key}")

    def authorization_policy(self, spec: Any) -> None:
        self.check(spec, "AuthorizationPolicy", "spec")
        if not isinstance(spec, Mapping):
            return
        action = spec.get("action")
        if action in _UNSUPPORTED_ACTIONS:
            raise ConfigError(f"action {action} is not supported by meshbox (ALLOW or DENY)", source=self.source,
                              path="spec.action")
        rules = spec.get("rules")
        for i, rule in enumerate(rules if isinstance(rules, list) else []):
            if not isinstance(rule, Mapping):
                continue
            for key, inner, message in (("from", "source", "Source"), ("to", "operation", "Operation")):
                items = rule.get(key)
                for j, item in enumerate(items if isinstance(items, list) else []):
                    if isinstance(item, Mapping):
                        self.check(item.get(inner), message, f"spec.rules[{i}].{key}[{j}].{inner}")


def parse_security_policy(doc: Any, *, source: str = "<input>") -> SecurityPolicy:
    """A PeerAuthentication or AuthorizationPolicy object → SecurityPolicy; ConfigError/ValidationError if bad."""
    if not isinstance(doc, Mapping):
        raise ConfigError("expected a policy mapping", source=source)
    kind, api_version = doc.get("kind"), doc.get("apiVersion")
    if kind not in KINDS or api_version not in API_VERSIONS:
        raise ConfigError(f"expected apiVersion {' or '.join(API_VERSIONS)} and kind {' or '.join(KINDS)}, "
                          f"got {api_version!r} {kind!r}", source=source)
    meta = doc.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        raise ConfigError("metadata.name is required", source=source, path="metadata.name")
    namespace = str(meta.get("namespace") or "default")
    data = doc.get("spec")
    unsupported = _Unsupported(source)
    spec: security_pb2.PeerAuthentication | security_pb2.AuthorizationPolicy
    if kind == PEER_AUTHENTICATION:
        unsupported.check(data, "PeerAuthentication", "spec")
        spec = message_from_data(data, security_pb2.PeerAuthentication, source=source, path="spec")
        validate_peer_authentication(spec, source=source)
    else:
        unsupported.authorization_policy(data)
        spec = message_from_data(data, security_pb2.AuthorizationPolicy, source=source, path="spec")
        validate_authorization_policy(spec, source=source)
    return SecurityPolicy(str(kind), name, namespace, spec)
