"""The upstream HTTP version of each cluster discovery builds (Istio's rule): from the Service port's name
or appProtocol, outbound and inbound and for subset clusters, then a DestinationRule's useClientProtocol /
h2UpgradePolicy; a ServiceEntry port's protocol likewise."""

from __future__ import annotations

from typing import Any

import pytest

from meshbox.api.protocols import upstream_protocol
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.discovery.config_builder import ConfigBuilder
from meshbox.discovery.registry import SourcedDocument, build_registry

FQDN = "app.default.svc.cluster.local"


@pytest.mark.parametrize(("name", "app_protocol", "expected"), [
    ("http", "", pc.HTTP1), ("http-web", "", pc.HTTP1), ("http2", "", pc.HTTP2), ("http2-api", "", pc.HTTP2),
    ("grpc", "", pc.HTTP2), ("grpc-web", "", pc.HTTP2), ("tcp", "", pc.UPSTREAM_PROTOCOL_UNSPECIFIED),
    ("", "", pc.UPSTREAM_PROTOCOL_UNSPECIFIED),
    # appProtocol takes precedence over the name.
    ("web", "http", pc.HTTP1), ("http", "grpc", pc.HTTP2), ("web", "kubernetes.io/h2c", pc.HTTP2),
    ("http", "mysql", pc.UPSTREAM_PROTOCOL_UNSPECIFIED),
])
def test_port_protocol_rule(name: str, app_protocol: str, expected: int) -> None:
    assert upstream_protocol(name, app_protocol) == expected


def _registry(kit: Any, ports: list[dict[str, Any]], policy: dict[str, Any] | None = None) -> Any:
    service = kit.service("app", "10.96.0.40")
    service["spec"]["ports"] = ports
    docs = [service, kit.pod("app-0", "app", "10.1.0.40")]
    if policy is not None:
        docs.append({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                     "metadata": {"name": "app", "namespace": "default"},
                     "spec": {"host": "app", "trafficPolicy": {"connectionPool": {"http": policy}},
                              "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}})
        docs.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                     "metadata": {"name": "app", "namespace": "default"},
                     "spec": {"hosts": ["app"], "http": [{"route": [{"destination": {"host": "app",
                                                                                       "subset": "v1"}}]}]}})
    registry = build_registry(SourcedDocument("test.yaml", d) for d in docs)
    assert registry.errors == ()
    return registry


def _protocols(kit: Any, registry: Any) -> dict[str, int]:
    config = ConfigBuilder(registry).build(kit.node("app-0", "10.1.0.40"))
    return {c.name: c.upstream_protocol for c in config.clusters}


def test_clusters_follow_the_port_names(kit: Any) -> None:
    ports = [{"name": "http", "port": 80, "targetPort": 8080}, {"name": "grpc-api", "port": 90, "targetPort": 9090},
             {"name": "web", "appProtocol": "http2", "port": 70, "targetPort": 7070},
             {"name": "tcp-db", "port": 60, "targetPort": 6060}]
    protocols = _protocols(kit, _registry(kit, ports))
    assert protocols == {
        f"outbound|80||{FQDN}": pc.HTTP1, f"outbound|90||{FQDN}": pc.HTTP2, f"outbound|70||{FQDN}": pc.HTTP2,
        f"outbound|60||{FQDN}": pc.UPSTREAM_PROTOCOL_UNSPECIFIED,
        # The sidecar's clusters to its own app follow the same ports.
        f"inbound|8080||{FQDN}": pc.HTTP1, f"inbound|9090||{FQDN}": pc.HTTP2, f"inbound|7070||{FQDN}": pc.HTTP2,
        f"inbound|6060||{FQDN}": pc.UPSTREAM_PROTOCOL_UNSPECIFIED,
    }


@pytest.mark.parametrize(("policy", "port_name", "expected"), [
    ({"useClientProtocol": True}, "http", pc.USE_CLIENT),
    ({"useClientProtocol": True, "h2UpgradePolicy": "UPGRADE"}, "http", pc.USE_CLIENT),
    ({"h2UpgradePolicy": "DO_NOT_UPGRADE"}, "http", pc.HTTP1),
    ({"h2UpgradePolicy": "DO_NOT_UPGRADE"}, "grpc", pc.HTTP2),
    ({"h2UpgradePolicy": "DEFAULT", "useClientProtocol": False}, "grpc", pc.HTTP2),
])
def test_destination_rule_protocol_settings(kit: Any, policy: dict[str, Any], port_name: str, expected: int) -> None:
    registry = _registry(kit, [{"name": port_name, "port": 80, "targetPort": 8080}], policy)
    protocols = _protocols(kit, registry)
    # The destination's cluster and its subset's cluster alike; the inbound one is the app's port alone.
    assert protocols[f"outbound|80||{FQDN}"] == expected
    assert protocols[f"outbound|80|v1|{FQDN}"] == expected
    assert protocols[f"inbound|8080||{FQDN}"] == (pc.HTTP1 if port_name == "http" else pc.HTTP2)


def test_service_entry_port_protocols(kit: Any) -> None:
    entry = {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
             "metadata": {"name": "ext", "namespace": "default"},
             "spec": {"hosts": ["ext.example.com"], "addresses": ["10.200.0.1"], "resolution": "STATIC",
                      "ports": [{"number": 80, "name": "web", "protocol": "HTTP"},
                                {"number": 81, "name": "rpc", "protocol": "GRPC"},
                                {"number": 82, "name": "raw", "protocol": "TCP"}],
                      "endpoints": [{"address": "192.0.2.10"}]}}
    registry = build_registry(SourcedDocument("se.yaml", d) for d in [entry])
    assert registry.errors == ()
    config = ConfigBuilder(registry).build(kit.node("x", "10.1.0.50"))
    protocols = {c.name: c.upstream_protocol for c in config.clusters}
    assert protocols == {"outbound|80||ext.example.com": pc.HTTP1, "outbound|81||ext.example.com": pc.HTTP2,
                         "outbound|82||ext.example.com": pc.UPSTREAM_PROTOCOL_UNSPECIFIED}
