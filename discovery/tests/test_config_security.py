"""The security half of a proxy config: auto mTLS per cluster (sidecar endpoints, allowed server
identities) and, per inbound listener, the peer authentication mode and authorization policies."""

from __future__ import annotations

from typing import Any

import pytest

from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.v1 import security_pb2
from meshbox.api.validation import ValidationError, validate_proxy_config
from meshbox.discovery.config_builder import ConfigBuilder
from meshbox.discovery.registry import SourcedDocument, build_registry
from meshbox.discovery.snapshot import Snapshot

MTLS = security_pb2.PeerAuthentication.MutualTLS
TWO = "outbound|80||service-two.default.svc.cluster.local"


def injected(doc: dict[str, Any], account: str) -> dict[str, Any]:
    doc["metadata"]["annotations"] = {"sidecar.meshbox.io/status": '{"version":"test"}'}
    doc["spec"]["serviceAccountName"] = account
    return doc


def objects(kit: Any) -> list[dict[str, Any]]:
    docs = kit.tutorial_objects()
    for doc in docs:
        if doc["kind"] == "Pod" and doc["metadata"]["name"] != "service-two-v2":
            injected(doc, doc["metadata"]["labels"]["app"])
    docs.append({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                 "metadata": {"name": "two", "namespace": "default"},
                 "spec": {"selector": {"matchLabels": {"app": "service-two"}}, "mtls": {"mode": "STRICT"},
                          "portLevelMtls": {"9090": {"mode": "DISABLE"}}}})
    docs.append({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                 "metadata": {"name": "no-admin", "namespace": "default"},
                 "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}})
    return docs


def registry(kit: Any) -> Any:
    reg = build_registry(SourcedDocument("test.yaml", d) for d in objects(kit))
    assert reg.errors == ()
    return reg


def test_auto_mtls_to_sidecar_endpoints_with_their_identities(kit: Any) -> None:
    config = ConfigBuilder(registry(kit), trust_domain="cluster.local").build(kit.node("service-one-a", "10.1.0.11"))
    validate_proxy_config(config)
    cluster = next(c for c in config.clusters if c.name == TWO)
    assert cluster.tls.mode == pc.UpstreamTls.AUTO
    assert list(cluster.tls.subject_alt_names) == ["spiffe://cluster.local/ns/default/sa/service-two"]
    endpoints = next(e for e in config.endpoints if e.cluster_name == TWO).endpoints
    assert {e.address: e.sidecar for e in endpoints} == {"10.1.0.21": True, "10.1.0.22": False}


def test_no_tls_to_a_port_whose_peer_authentication_is_disable(kit: Any) -> None:
    docs = objects(kit)
    docs.append({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                 "metadata": {"name": "plain-two", "namespace": "default"},
                 "spec": {"selector": {"matchLabels": {"app": "service-two"}}, "mtls": {"mode": "STRICT"},
                          "portLevelMtls": {"8080": {"mode": "DISABLE"}}}})
    docs = [d for d in docs if d["metadata"]["name"] != "two"]
    reg = build_registry(SourcedDocument("test.yaml", d) for d in docs)
    config = ConfigBuilder(reg, trust_domain="cluster.local").build(kit.node("service-one-a", "10.1.0.11"))
    endpoints = next(e for e in config.endpoints if e.cluster_name == TWO).endpoints
    assert not any(e.sidecar for e in endpoints)


def test_inbound_listener_carries_its_port_mode_and_policies(kit: Any) -> None:
    builder = ConfigBuilder(registry(kit), trust_domain="cluster.local")
    two = builder.build(kit.node("service-two-v1", "10.1.0.21"))
    inbound = [lis for lis in two.listeners if lis.direction == pc.INBOUND]
    assert [(lis.port, lis.mtls_mode) for lis in inbound] == [(8080, MTLS.STRICT)]
    assert [(p.namespace, p.name, p.spec.action) for p in inbound[0].authorization_policies] == [
        ("default", "no-admin", security_pb2.AuthorizationPolicy.DENY)]
    one = builder.build(kit.node("service-one-a", "10.1.0.11"))
    assert [lis.mtls_mode for lis in one.listeners if lis.direction == pc.INBOUND] == [MTLS.PERMISSIVE]
    assert all(not lis.mtls_mode and not lis.authorization_policies
               for lis in one.listeners if lis.direction == pc.OUTBOUND)


def test_plaintext_discovery_sends_no_security(kit: Any) -> None:
    config = ConfigBuilder(registry(kit)).build(kit.node("service-two-v1", "10.1.0.21"))
    assert all(not c.HasField("tls") for c in config.clusters)
    assert all(not lis.mtls_mode and not lis.authorization_policies for lis in config.listeners)


def test_an_edited_policy_changes_the_inbound_key(kit: Any) -> None:
    docs = objects(kit)
    node = kit.node("service-two-v1", "10.1.0.21")
    before = Snapshot(build_registry(SourcedDocument("t.yaml", d) for d in docs), trust_domain="cluster.local")
    docs[-1]["spec"]["rules"][0]["to"][0]["operation"]["paths"] = ["/private*"]
    after = Snapshot(build_registry(SourcedDocument("t.yaml", d) for d in docs), trust_domain="cluster.local")
    assert before.inbound_key(node) != after.inbound_key(node)


def test_validation_refuses_security_on_outbound_listeners_and_bad_identities() -> None:
    config = pc.ProxyConfig(clusters=[pc.Cluster(name="c", tls=pc.UpstreamTls(subject_alt_names=["web"]))])
    with pytest.raises(ValidationError, match=r"clusters\[0\]\.tls\.subject_alt_names\[0\].*SPIFFE"):
        validate_proxy_config(config, source="t")
    config = pc.ProxyConfig(clusters=[pc.Cluster(name="c")], listeners=[pc.Listener(
        direction=pc.OUTBOUND, port=80, protocol=pc.TCP, cluster="c", mtls_mode=MTLS.STRICT)])
    with pytest.raises(ValidationError, match=r"listeners\[0\]\.mtls_mode.*INBOUND"):
        validate_proxy_config(config, source="t")
