"""Istio security policies in discovery's registry: read from a directory, bad ones reported by
resource and field, and resolved per workload as Istio resolves them."""

from __future__ import annotations

from typing import Any

from meshbox.api.v1 import security_pb2
from meshbox.discovery.registry import SourcedDocument, build_registry
from meshbox.discovery.security_policies import authorization_policies, effective_mtls

MTLS = security_pb2.PeerAuthentication.MutualTLS


def peer(name: str, namespace: str, mode: str, selector: dict[str, str] | None = None,
         ports: dict[int, str] | None = None, version: str = "v1") -> dict[str, Any]:
    spec: dict[str, Any] = {"mtls": {"mode": mode}}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    if ports:
        spec["portLevelMtls"] = {p: {"mode": m} for p, m in ports.items()}
    return {"apiVersion": f"security.istio.io/{version}", "kind": "PeerAuthentication",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def authz(name: str, namespace: str, action: str, selector: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"action": action, "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    return {"apiVersion": "security.istio.io/v1beta1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def registry(*docs: dict[str, Any]) -> Any:
    return build_registry(SourcedDocument("policies.yaml", d) for d in docs)


def test_bad_policies_are_left_out_and_named() -> None:
    bad = authz("with-ip", "prod", "ALLOW")
    bad["spec"]["rules"][0]["from"] = [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]
    reg = registry(peer("mesh", "meshbox-system", "STRICT"), bad, peer("typo", "prod", "STRICTLY"))
    assert [p.name for p in reg.security_policies] == ["mesh"]
    assert any("AuthorizationPolicy prod/with-ip" in e and "spec.rules[0].from[0].source.ipBlocks" in e
               and "not supported" in e for e in reg.errors)
    assert any("PeerAuthentication prod/typo" in e and "spec.mtls.mode" in e for e in reg.errors)


def test_peer_authentication_levels() -> None:
    policies = registry(
        peer("mesh", "meshbox-system", "STRICT"),
        peer("ns", "prod", "UNSET"),
        peer("db", "prod", "DISABLE", {"app": "db"}, {5432: "STRICT", 9090: "UNSET"}, version="v1beta1"),
        peer("legacy", "legacy", "PERMISSIVE"),
    ).security_policies
    modes = effective_mtls(policies, root_namespace="meshbox-system", namespace="prod", labels={"app": "web"})
    assert modes.default == MTLS.STRICT  # namespace UNSET inherits the mesh's
    db = effective_mtls(policies, root_namespace="meshbox-system", namespace="prod", labels={"app": "db"})
    assert (db.default, db.for_port(5432), db.for_port(9090)) == (MTLS.DISABLE, MTLS.STRICT, MTLS.DISABLE)
    legacy = effective_mtls(policies, root_namespace="meshbox-system", namespace="legacy", labels={})
    assert legacy.default == MTLS.PERMISSIVE
    nothing = effective_mtls((), root_namespace="meshbox-system", namespace="prod", labels={})
    assert nothing.default == MTLS.PERMISSIVE


def test_authorization_policies_that_apply() -> None:
    policies = registry(
        authz("mesh-deny", "meshbox-system", "DENY"),
        authz("api-allow", "prod", "ALLOW", {"app": "api"}),
        authz("ns-allow", "prod", "ALLOW"),
        authz("other-ns", "dev", "ALLOW"),
    ).security_policies
    api = authorization_policies(policies, root_namespace="meshbox-system", namespace="prod", labels={"app": "api"})
    assert [p.name for p in api] == ["mesh-deny", "api-allow", "ns-allow"]
    web = authorization_policies(policies, root_namespace="meshbox-system", namespace="prod", labels={"app": "web"})
    assert [p.name for p in web] == ["mesh-deny", "ns-allow"]
