"""The discovery stream state machine: when it applies, what it ACKs and NACKs, and reconnects."""

from __future__ import annotations

import itertools

import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message

from meshbox.agent import resources as rt
from meshbox.agent.discovery_stream import INVALID_ARGUMENT, DiscoveryStream
from meshbox.agent.resources import ResourceError
from meshbox.api.v1 import discovery_pb2
from meshbox.api.v1 import proxy_config_pb2 as pc

NODE = discovery_pb2.Node(id="app-1.default", pod_name="app-1", pod_namespace="default", pod_ip="10.1.0.5")
_nonces = itertools.count(1)


def response(type_url: str, version: str, *messages: Message) -> discovery_pb2.DiscoveryResponse:
    packed = []
    for m in messages:
        a = any_pb2.Any()
        a.Pack(m, type_url_prefix="type.googleapis.com/")
        packed.append(a)
    return discovery_pb2.DiscoveryResponse(
        type_url=type_url, version_info=version, resources=packed, nonce=f"n{next(_nonces)}"
    )


def world(version: str, cluster: str = "backend") -> list[discovery_pb2.DiscoveryResponse]:
    """All four types for one HTTP listener routed to ``cluster``."""
    return [
        response(rt.CLUSTER, version, pc.Cluster(name=cluster)),
        response(rt.ENDPOINTS, version, pc.ClusterLoadAssignment(
            cluster_name=cluster, endpoints=[pc.Endpoint(address="127.0.0.1", port=8080)])),
        response(rt.LISTENER, version, pc.Listener(
            name="l", direction=pc.OUTBOUND, port=80, protocol=pc.HTTP, route_config="r")),
        response(rt.ROUTES, version, pc.RouteConfiguration(name="r", virtual_hosts=[pc.VirtualHost(
            name="vh", domains=["*"], routes=[pc.Route(clusters=[pc.WeightedCluster(cluster=cluster, weight=1)])])])),
    ]


def acks(requests: list[discovery_pb2.DiscoveryRequest]) -> dict[str, tuple[str, str]]:
    assert all(not r.HasField("error_detail") for r in requests)
    return {rt.short_name(r.type_url): (r.version_info, r.response_nonce) for r in requests}


def test_first_requests_ask_for_every_type_in_make_before_break_order() -> None:
    requests = DiscoveryStream(NODE).connect_requests()
    assert [r.type_url for r in requests] == [rt.CLUSTER, rt.ENDPOINTS, rt.LISTENER, rt.ROUTES]
    assert all(r.node == NODE and r.version_info == "" and r.response_nonce == "" for r in requests)


def test_nothing_is_applied_until_all_four_types_arrived_then_all_are_acked() -> None:
    stream = DiscoveryStream(NODE)
    stream.connect_requests()
    first = world("v1")
    for resp in first[:3]:
        assert stream.receive(resp) == []
        assert stream.candidate() is None
    stream.receive(first[3])
    config = stream.candidate()
    assert config is not None
    assert [c.name for c in config.clusters] == ["backend"]
    assert [lst.name for lst in config.listeners] == ["l"]
    assert [r.name for r in config.route_configs] == ["r"]
    assert config.endpoints[0].endpoints[0].port == 8080
    assert acks(stream.applied(config)) == {
        rt.short_name(r.type_url): ("v1", r.nonce) for r in first
    }
    assert stream.candidate() is None


def test_a_change_of_one_type_gives_a_full_config_and_acks_only_that_type() -> None:
    stream = DiscoveryStream(NODE)
    for resp in world("v1"):
        stream.receive(resp)
    stream.applied(stream.candidate() or pc.ProxyConfig())
    change = response(rt.ENDPOINTS, "v2", pc.ClusterLoadAssignment(
        cluster_name="backend", endpoints=[pc.Endpoint(address="127.0.0.1", port=9090)]))
    stream.receive(change)
    config = stream.candidate()
    assert config is not None and len(config.listeners) == 1
    assert config.endpoints[0].endpoints[0].port == 9090
    assert acks(stream.applied(config)) == {"ClusterLoadAssignment": ("v2", change.nonce)}


def test_a_rejected_config_is_nacked_with_the_last_good_version_and_the_error() -> None:
    stream = DiscoveryStream(NODE)
    for resp in world("v1"):
        stream.receive(resp)
    stream.applied(stream.candidate() or pc.ProxyConfig())
    bad = response(rt.LISTENER, "v2", pc.Listener(name="l", port=80, protocol=pc.TCP, cluster="missing"))
    stream.receive(bad)
    assert stream.candidate() is not None
    (nack,) = stream.rejected("listeners[0].cluster: unknown cluster 'missing'")
    assert nack.type_url == rt.LISTENER
    assert nack.version_info == "v1"
    assert nack.response_nonce == bad.nonce
    assert nack.error_detail.code == INVALID_ARGUMENT
    assert "unknown cluster 'missing'" in nack.error_detail.message
    assert stream.acked_versions()["Listener"] == "v1"
    assert stream.candidate() is None


def test_a_type_nacked_for_want_of_its_partner_is_acked_once_the_partner_arrives() -> None:
    stream = DiscoveryStream(NODE)
    for resp in world("v1"):
        stream.receive(resp)
    stream.applied(stream.candidate() or pc.ProxyConfig())
    # The routes move to a new cluster; here the routes arrive first (an out-of-order server).
    routes_v2, clusters_v2 = world("v2", cluster="canary")[3], world("v2", cluster="canary")[0]
    stream.receive(routes_v2)
    assert [r.type_url for r in stream.rejected("unknown cluster 'canary'")] == [rt.ROUTES]
    stream.receive(clusters_v2)
    config = stream.candidate()
    assert config is not None
    assert acks(stream.applied(config)) == {"Cluster": ("v2", clusters_v2.nonce), "RouteConfiguration":
                                            ("v2", routes_v2.nonce)}


def test_an_undecodable_response_is_nacked_at_once_and_never_applied() -> None:
    stream = DiscoveryStream(NODE)
    for resp in world("v1"):
        stream.receive(resp)
    stream.applied(stream.candidate() or pc.ProxyConfig())
    bad = discovery_pb2.DiscoveryResponse(
        type_url=rt.CLUSTER, version_info="v2", nonce="bad-1",
        resources=[any_pb2.Any(type_url=rt.LISTENER, value=b"")],
    )
    (nack,) = stream.receive(bad)
    assert nack.response_nonce == "bad-1" and nack.version_info == "v1"
    assert "resources[0]" in nack.error_detail.message
    garbage = discovery_pb2.DiscoveryResponse(
        type_url=rt.CLUSTER, version_info="v3", nonce="bad-2", resources=[any_pb2.Any(type_url=rt.CLUSTER,
                                                                                     value=b"\xff\xff")])
    (nack,) = stream.receive(garbage)
    assert "cannot decode Cluster" in nack.error_detail.message
    assert stream.candidate() is None
    # A later good change of another type must not ACK the undecodable cluster response.
    stream.receive(response(rt.ENDPOINTS, "v2", pc.ClusterLoadAssignment(cluster_name="backend")))
    assert set(acks(stream.applied(stream.candidate() or pc.ProxyConfig()))) == {"ClusterLoadAssignment"}
    assert stream.acked_versions()["Cluster"] == "v1"


def test_a_type_nobody_asked_for_is_refused_by_name() -> None:
    stream = DiscoveryStream(NODE)
    with pytest.raises(ResourceError, match="did not request"):
        stream.receive(discovery_pb2.DiscoveryResponse(type_url="type.googleapis.com/x.Secret", nonce="1"))


def test_a_reconnect_resends_the_applied_versions_and_spots_an_unchanged_world() -> None:
    stream = DiscoveryStream(NODE)
    for resp in world("v1"):
        stream.receive(resp)
    first = stream.candidate()
    assert first is not None
    stream.applied(first)
    bad = response(rt.ROUTES, "v2")
    stream.receive(bad)
    stream.rejected("refused")
    again = stream.connect_requests()
    assert [(r.version_info, r.response_nonce) for r in again] == [("v1", "")] * 4
    resent = world("v1")
    for resp in resent:
        stream.receive(resp)
    config = stream.candidate()
    assert config is not None and stream.is_applied(config)
    assert acks(stream.applied(config)) == {rt.short_name(r.type_url): ("v1", r.nonce) for r in resent}
    stream.receive(world("v2", cluster="other")[0])
    changed = stream.candidate()
    assert changed is not None and not stream.is_applied(changed)
