"""The sans-I/O stream state machine and the payload encoding it sends."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from meshbox.api.v1 import discovery_pb2
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.discovery.hub import Hub
from meshbox.discovery.payloads import CLUSTER, ENDPOINTS, LISTENER, PUSH_ORDER, ROUTE, encode_shared, node_payloads
from meshbox.discovery.registry import SourcedDocument, build_registry
from meshbox.discovery.snapshot import Snapshot
from meshbox.discovery.stream_state import ProtocolError, RequestKind, StreamState

NODE = discovery_pb2.Node(id="p.default", pod_name="p", pod_namespace="default", pod_ip="10.1.0.5")
V1 = {CLUSTER: "c1", ENDPOINTS: "e1", LISTENER: "l1", ROUTE: "r1"}


def new_state(versions: dict[str, str] | None = None) -> StreamState:
    counter = itertools.count(1)
    state = StreamState(new_nonce=lambda: f"n{next(counter)}")
    state.versions = dict(V1 if versions is None else versions)
    return state


def request(type_url: str, version: str = "", nonce: str = "", error: str = "",
            node: discovery_pb2.Node = NODE) -> discovery_pb2.DiscoveryRequest:
    req = discovery_pb2.DiscoveryRequest(node=node, type_url=type_url, version_info=version, response_nonce=nonce)
    if error:
        req.error_detail.code = 3
        req.error_detail.message = error
    return req


def subscribe_all(state: StreamState, versions: dict[str, str] | None = None) -> list[Any]:
    sends = []
    for t in PUSH_ORDER:
        result = state.on_request(request(t, (versions or {}).get(t, "")), 0.0)
        assert result.kind is RequestKind.SUBSCRIBE
        sends.extend(result.sends)
    return sends


def test_first_subscription_sends_every_type_with_fresh_nonces() -> None:
    state = new_state()
    sends = subscribe_all(state)
    assert [(s.type_url, s.version) for s in sends] == [(t, V1[t]) for t in PUSH_ORDER]
    assert len({s.nonce for s in sends}) == 4


def test_ack_nack_and_stale_nonce() -> None:
    state = new_state()
    sends = {s.type_url: s for s in subscribe_all(state)}
    ack = state.on_request(request(CLUSTER, "c1", sends[CLUSTER].nonce), 0.25)
    assert ack.kind is RequestKind.ACK and ack.latency == 0.25
    assert state.acked_version(CLUSTER) == "c1"
    nack = state.on_request(request(LISTENER, "", sends[LISTENER].nonce, error="listener 0: bad port"), 0.5)
    assert nack.kind is RequestKind.NACK and nack.error == "listener 0: bad port" and nack.sends == []
    assert state.acked_version(LISTENER) == "" and state.nack_error(LISTENER) == "listener 0: bad port"
    # A new push for clusters makes its first nonce stale.
    new_sends = state.on_versions({**V1, CLUSTER: "c2"}, 1.0)
    assert [(s.type_url, s.version) for s in new_sends] == [(CLUSTER, "c2")]
    stale = state.on_request(request(CLUSTER, "c1", sends[CLUSTER].nonce), 1.1)
    assert stale.kind is RequestKind.STALE
    assert state.acked_version(CLUSTER) == "c1"
    assert not state.in_sync()


def test_only_changed_types_are_pushed_in_make_before_break_order() -> None:
    state = new_state()
    subscribe_all(state)
    assert state.on_versions(V1, 1.0) == []
    sends = state.on_versions({CLUSTER: "c2", ENDPOINTS: "e1", LISTENER: "l2", ROUTE: "r2"}, 1.0)
    assert [s.type_url for s in sends] == [CLUSTER, LISTENER, ROUTE]


def test_nacked_content_is_not_resent_but_a_revert_is() -> None:
    state = new_state()
    sends = {s.type_url: s for s in subscribe_all(state)}
    for t in PUSH_ORDER:
        state.on_request(request(t, V1[t], sends[t].nonce), 0.1)
    assert state.in_sync()
    bad = state.on_versions({**V1, ROUTE: "r-bad"}, 1.0)
    state.on_request(request(ROUTE, "r1", bad[0].nonce, error="unknown cluster"), 1.1)
    assert state.on_versions({**V1, ROUTE: "r-bad"}, 2.0) == []
    back = state.on_versions(V1, 3.0)
    assert [(s.type_url, s.version) for s in back] == [(ROUTE, "r1")]


def test_reconnect_with_current_versions_sends_nothing_but_stale_versions_get_the_new_config() -> None:
    state = new_state()
    assert subscribe_all(state, V1) == []
    assert state.in_sync()
    assert state.on_versions(V1, 1.0) == []
    other = new_state()
    sends = subscribe_all(other, {**V1, ENDPOINTS: "e0"})
    assert [(s.type_url, s.version) for s in sends] == [(ENDPOINTS, "e1")]


def test_subscription_before_any_config_is_served_when_config_arrives() -> None:
    state = new_state({})
    assert subscribe_all(state) == []
    assert [s.type_url for s in state.on_versions(V1, 1.0)] == list(PUSH_ORDER)


def test_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match=r"must carry node\.id"):
        new_state().on_request(request(CLUSTER, node=discovery_pb2.Node()), 0.0)
    with pytest.raises(ProtocolError, match=r"node\.pod_ip: not an IP address: 'pod-ip'"):
        new_state().on_request(request(CLUSTER, node=discovery_pb2.Node(id="a.b", pod_ip="pod-ip")), 0.0)
    with pytest.raises(ProtocolError, match=r"unknown type_url 'type\.googleapis\.com/nope'"):
        new_state().on_request(request("type.googleapis.com/nope"), 0.0)


def test_payload_bytes_decode_to_the_whole_state_of_the_world() -> None:
    shared = pc.ProxyConfig(clusters=[pc.Cluster(name="outbound|80||a"), pc.Cluster(name="outbound|80||b")])
    own = pc.ProxyConfig(clusters=[pc.Cluster(name="inbound|8080||a")])
    payloads = node_payloads(encode_shared(shared), own)
    decoded = discovery_pb2.DiscoveryResponse.FromString(payloads[CLUSTER].encode("n7"))
    assert decoded.type_url == CLUSTER and decoded.nonce == "n7"
    assert decoded.version_info == payloads[CLUSTER].version and len(decoded.version_info) == 16
    names = []
    for item in decoded.resources:
        cluster = pc.Cluster()
        item.Unpack(cluster)
        names.append(cluster.name)
    assert names == ["outbound|80||a", "outbound|80||b", "inbound|8080||a"]
    # Same content, same version; any change, a new one; other types unaffected.
    again = node_payloads(encode_shared(shared), pc.ProxyConfig(clusters=[pc.Cluster(name="inbound|8080||a")]))
    assert again[CLUSTER].version == payloads[CLUSTER].version
    changed = node_payloads(encode_shared(shared), pc.ProxyConfig(clusters=[pc.Cluster(name="inbound|9090||a")]))
    assert changed[CLUSTER].version != payloads[CLUSTER].version
    assert changed[LISTENER].version == payloads[LISTENER].version


def test_versions_are_stable_across_rebuilds_so_a_restarted_server_agrees(kit: Any) -> None:
    def versions() -> dict[str, str]:
        registry = build_registry(SourcedDocument("m.yaml", d) for d in kit.tutorial_objects())
        return {t: p.version for t, p in Snapshot(registry).payloads(kit.node("service-one-a", "10.1.0.11")).items()}

    first = versions()
    assert first == versions() and len(set(first.values())) == 4


def test_inbound_key_changes_exactly_when_the_inbound_inputs_do(kit: Any) -> None:
    def snapshot_of(docs: list[dict[str, Any]], previous: Snapshot | None = None) -> Snapshot:
        return Snapshot(build_registry(SourcedDocument("m.yaml", d) for d in docs), previous)

    me = kit.node("service-one-a", "10.1.0.11")
    base = snapshot_of(kit.tutorial_objects())
    key = base.inbound_key(me)
    # Another namespace's service and another pod: same key (the encoded inbound half is reused).
    unrelated = snapshot_of([*kit.tutorial_objects(), kit.service("x", "10.96.5.5", namespace="other"),
                             kit.pod("service-two-v9", "service-two", "10.1.0.29")], base)
    assert unrelated.inbound_key(me) == key
    # A service of the node's namespace changes its target port: new key, new inbound listener.
    objects = kit.tutorial_objects()
    objects[0]["spec"]["ports"][0]["targetPort"] = 9090
    changed = snapshot_of(objects, unrelated)
    assert changed.inbound_key(me) != key
    listener = next(r for r in changed.builder.inbound(me).listeners)
    assert listener.port == 9090
    # The node's own pod gets a new label: new key too.
    objects = kit.tutorial_objects()
    objects[2]["metadata"]["labels"]["extra"] = "yes"
    assert snapshot_of(objects, base).inbound_key(me) != key


def test_session_sends_only_the_newest_response_per_type_in_push_order(kit: Any) -> None:
    """A stream whose writes fall behind gets the latest state of each type, not a backlog."""

    def registry(*rules: dict[str, Any]) -> Any:
        return build_registry(SourcedDocument("m.yaml", d) for d in [*kit.tutorial_objects(), *rules])

    async def scenario() -> None:
        hub = Hub()
        hub.update(registry())
        session = hub.open_session()
        for type_url in reversed(PUSH_ORDER):
            session.handle(request(type_url, node=kit.node("service-one-a", "10.1.0.11")))
        first = [discovery_pb2.DiscoveryResponse.FromString(b) for b in await session.next_writes()]
        assert [r.type_url for r in first] == list(PUSH_ORDER)
        hub.update(registry(kit.route_rule("a", "service-two", {"v1": 50, "v2": 50})))
        hub.update(registry(kit.route_rule("a", "service-two", {"v1": 20, "v2": 80})))
        await asyncio.sleep(0)  # let both fan-outs run
        await asyncio.sleep(0)
        pending = [discovery_pb2.DiscoveryResponse.FromString(b) for b in await session.next_writes()]
        assert [r.type_url for r in pending] == [CLUSTER, ENDPOINTS, ROUTE]
        assert [r.version_info for r in pending] == [session.state.versions[t] for t in (CLUSTER, ENDPOINTS, ROUTE)]
        hub.close_session(session)

    asyncio.run(scenario())
