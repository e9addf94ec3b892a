"""Real gRPC on loopback: a grpc.aio client in the test plays the agent against a discovery server
serving (and polling) a registry directory. Covers ACK, NACK, reconnect with the last version,
pushes after a file edit, an invalid RouteRule never reaching a proxy, /ready and /metrics."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshbox.discovery.http_service import start_http_server
from meshbox.discovery.hub import Hub
from meshbox.discovery.payloads import CLUSTER, ENDPOINTS, PUSH_ORDER, ROUTE
from meshbox.discovery.registry import SourcedDocument, build_registry

TWO = "service-two.default.svc.cluster.local"


async def connect(kit: Any, target: str, versions: dict[str, str] | None = None) -> tuple[grpc.aio.Channel, Any]:
    channel = grpc.aio.insecure_channel(target)
    agent = kit.AgentClient(channel, kit.node("service-one-a", "10.1.0.11"))
    agent.subscribe_all(versions)
    return channel, agent


async def ack_all(agent: Any, responses: dict[str, Any]) -> None:
    for response in responses.values():
        await agent.ack(response)


def route_clusters(kit: Any, response: Any) -> list[list[tuple[str, int]]]:
    (rc,) = [r for r in kit.unpack(response) if r.name == "80"]
    vhost = next(v for v in rc.virtual_hosts if v.name == f"{TWO}:80")
    return [[(w.cluster, w.weight) for w in route.clusters] for route in vhost.routes]


def test_initial_push_ack_and_file_edit(kit: Any, registry_dir: Path) -> None:
    async def scenario() -> None:
        async with kit.running_server(registry_dir) as server:
            assert await server.http_get("/ready") == (200, "ready\n")
            channel, agent = await connect(kit, server.target)
            first = await agent.receive_all()
            assert set(first) == set(PUSH_ORDER)
            names = {c.name for c in kit.unpack(first[CLUSTER])}
            assert f"outbound|80||{TWO}" in names and "inbound|8080||service-one.default.svc.cluster.local" in names
            await ack_all(agent, first)

            # A route rule lands in the directory: new subset clusters and endpoints, new routes;
            # listeners did not change and are not resent. Order is make-before-break.
            kit.write_yaml(registry_dir / "rules.yaml", [kit.route_rule("canary", "service-two", {"v1": 90, "v2": 10})])
            pushed = [await agent.receive() for _ in range(3)]
            assert [r.type_url for r in pushed] == [CLUSTER, ENDPOINTS, ROUTE]
            assert f"outbound|80|v2|{TWO}" in {c.name for c in kit.unpack(pushed[0])}
            assert route_clusters(kit, pushed[2])[0] == [(f"outbound|80|v1|{TWO}", 90), (f"outbound|80|v2|{TWO}", 10)]
            for response in pushed:
                await agent.ack(response)
            await agent.expect_silence(0.3)

            metrics = (await server.http_get("/metrics"))[1]
            assert kit.metric_value(metrics, "meshbox_discovery_connected_proxies") == 1
            assert kit.metric_value(metrics, "meshbox_discovery_pushes_total") == 7
            assert kit.metric_value(metrics, "meshbox_discovery_push_latency_seconds_count") == 7
            assert kit.metric_value(metrics, "meshbox_discovery_nacks_total") == 0
            agent.close()
            await channel.close()

    asyncio.run(scenario())


def test_nack_keeps_version_and_stale_ack_is_ignored(kit: Any, registry_dir: Path) -> None:
    async def scenario() -> None:
        async with kit.running_server(registry_dir) as server:
            channel, agent = await connect(kit, server.target)
            first = await agent.receive_all()
            await ack_all(agent, first)
            kit.write_yaml(registry_dir / "rules.yaml", [kit.route_rule("canary", "service-two", {"v2": 100})])
            pushed = {r.type_url: r for r in [await agent.receive() for _ in range(3)]}
            # The agent rejects the new routes: it NACKs with its previous version and an error.
            agent.send(ROUTE, first[ROUTE].version_info, pushed[ROUTE].nonce, error="proxy refused: test")
            for t in (CLUSTER, ENDPOINTS):
                await agent.ack(pushed[t])
            # An echo of an old nonce is stale and changes nothing.
            agent.send(ROUTE, first[ROUTE].version_info, first[ROUTE].nonce)
            await agent.expect_silence(0.3)
            metrics = (await server.http_get("/metrics"))[1]
            assert kit.metric_value(metrics, "meshbox_discovery_nacks_total") == 1
            assert kit.metric_value(metrics, "meshbox_discovery_stale_requests_total") == 1
            (session,) = server.hub.sessions
            assert session.state.acked_version(ROUTE) == first[ROUTE].version_info
            assert session.state.nack_error(ROUTE) == "proxy refused: test"
            # Removing the rule brings back the version the agent runs: it is sent again (new nonce).
            (registry_dir / "rules.yaml").unlink()
            back = [await agent.receive() for _ in range(3)]
            assert back[-1].type_url == ROUTE and back[-1].version_info == first[ROUTE].version_info
            agent.close()
            await channel.close()

    asyncio.run(scenario())


def test_reconnect_with_last_versions_gets_only_what_changed(kit: Any, registry_dir: Path) -> None:
    async def scenario() -> None:
        async with kit.running_server(registry_dir) as server:
            channel, agent = await connect(kit, server.target)
            first = await agent.receive_all()
            await ack_all(agent, first)
            agent.close()
            await channel.close()
            for _ in range(50):
                if not server.hub.sessions:
                    break
                await asyncio.sleep(0.02)
            assert not server.hub.sessions
            # While the agent is away, a pod is added: only endpoints change.
            kit.write_yaml(registry_dir / "more.yaml", [kit.pod("service-two-v1b", "service-two", "10.1.0.25")])
            await asyncio.sleep(0.3)
            versions = {t: r.version_info for t, r in first.items()}
            channel, agent = await connect(kit, server.target, versions)
            response = await agent.receive()
            assert response.type_url == ENDPOINTS and response.version_info != versions[ENDPOINTS]
            addresses = {e.address for cla in kit.unpack(response) for e in cla.endpoints}
            assert "10.1.0.25" in addresses
            await agent.expect_silence(0.3)
            agent.close()
            await channel.close()

    asyncio.run(scenario())


def test_invalid_route_rule_never_reaches_a_proxy_and_is_reported(kit: Any, registry_dir: Path) -> None:
    async def scenario() -> None:
        async with kit.running_server(registry_dir) as server:
            channel, agent = await connect(kit, server.target)
            first = await agent.receive_all()
            await ack_all(agent, first)
            kit.write_yaml(registry_dir / "rules.yaml", [kit.route_rule("bad", "service-two", {"v1": 50, "v2": 60})])
            await agent.expect_silence(0.6)
            status, errors = await server.http_get("/registry/errors")
            assert status == 200
            assert "RouteRule default/bad" in errors
            assert "spec.route: route weights must add up to 100, got 110" in errors
            metrics = (await server.http_get("/metrics"))[1]
            assert kit.metric_value(metrics, "meshbox_discovery_registry_errors") == 1
            # Broken YAML in a file keeps serving what the file held before.
            kit.write_yaml(registry_dir / "rules.yaml", [kit.route_rule("good", "service-two", {"v2": 100})])
            pushed = [await agent.receive() for _ in range(3)]
            for response in pushed:
                await agent.ack(response)
            (registry_dir / "rules.yaml").write_text("kind: RouteRule\n  spec: [unclosed\n")
            await agent.expect_silence(0.6)
            errors = (await server.http_get("/registry/errors"))[1]
            assert "rules.yaml" in errors and "still serving the file's previous content" in errors
            agent.close()
            await channel.close()

    asyncio.run(scenario())


def test_protocol_violation_ends_the_stream_with_invalid_argument(kit: Any, registry_dir: Path) -> None:
    async def scenario() -> None:
        async with kit.running_server(registry_dir) as server:
            channel = grpc.aio.insecure_channel(server.target)
            agent = kit.AgentClient(channel, kit.node("service-one-a", "10.1.0.11"))
            agent.send("type.googleapis.com/meshbox.api.v1.Secret")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await agent.receive()
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "unknown type_url" in (info.value.details() or "")
            await channel.close()
            for _ in range(50):
                if not server.hub.sessions:
                    break
                await asyncio.sleep(0.02)
            assert not server.hub.sessions

    asyncio.run(scenario())


def test_ready_only_once_a_registry_is_served(kit: Any) -> None:
    async def scenario() -> None:
        hub = Hub()
        runner, port = await start_http_server(hub, "127.0.0.1", 0)
        try:
            def get(path: str) -> tuple[int, str]:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                        return resp.status, resp.read().decode()
                except urllib.error.HTTPError as exc:
                    return exc.code, exc.read().decode()

            assert await asyncio.to_thread(get, "/ready") == (503, "registry not loaded yet\n")
            hub.update(build_registry(SourcedDocument("m.yaml", d) for d in kit.tutorial_objects()))
            assert await asyncio.to_thread(get, "/ready") == (200, "ready\n")
            assert (await asyncio.to_thread(get, "/registry/errors")) == (200, "")
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_fan_out_reaches_every_stream(kit: Any, registry_dir: Path) -> None:
    """120 streams (more than one fan-out slice) on one channel: each gets the change exactly once."""

    async def scenario() -> None:
        async with kit.running_server(registry_dir) as server:
            channel = grpc.aio.insecure_channel(server.target)
            agents = [kit.AgentClient(channel, kit.node(f"p{i}", f"10.2.0.{i + 1}")) for i in range(120)]
            for agent in agents:
                agent.subscribe_all()
            for agent in agents:
                for response in (await agent.receive_all()).values():
                    await agent.ack(response)
            kit.write_yaml(registry_dir / "rules.yaml", [kit.route_rule("r", "service-two", {"v1": 30, "v2": 70})])
            routes = set()
            for agent in agents:
                pushed = [await agent.receive() for _ in range(3)]
                assert [r.type_url for r in pushed] == [CLUSTER, ENDPOINTS, ROUTE]
                routes.add(pushed[-1].version_info)
                for response in pushed:
                    await agent.ack(response)
            assert len(routes) == 1, "every stream of the namespace sees the same route version"
            await agents[-1].expect_silence(0.2)
            assert all(s.state.in_sync() for s in server.hub.sessions)
            for agent in agents:
                agent.close()
            await channel.close()

    asyncio.run(scenario())


def test_syncz_shows_stale_until_the_proxy_acks_a_config_change(kit: Any, registry_dir: Path) -> None:
    async def statuses(server: Any) -> dict[str, str]:
        status, body = await server.http_get("/debug/syncz")
        assert status == 200
        (proxy,) = json.loads(body)["proxies"]
        assert (proxy["id"], proxy["pod"], proxy["pod_ip"]) == ("service-one-a.default", "service-one-a", "10.1.0.11")
        return {t: v["status"] for t, v in proxy["types"].items()}

    async def scenario() -> None:
        async with kit.running_server(registry_dir) as server:
            assert json.loads((await server.http_get("/debug/syncz"))[1]) == {"proxies": []}
            channel, agent = await connect(kit, server.target)
            first = await agent.receive_all()
            assert set((await statuses(server)).values()) == {"STALE"}
            await ack_all(agent, first)
            await agent.expect_silence(0.1)
            assert set((await statuses(server)).values()) == {"SYNCED"}
            kit.write_yaml(registry_dir / "rules.yaml", [kit.route_rule("canary", "service-two", {"v2": 100})])
            pushed = [await agent.receive() for _ in range(3)]
            assert await statuses(server) == {"Cluster": "STALE", "ClusterLoadAssignment": "STALE",
                                              "Listener": "SYNCED", "RouteConfiguration": "STALE"}
            for response in pushed[:2]:
                await agent.ack(response)
            agent.send(ROUTE, first[ROUTE].version_info, pushed[2].nonce, error="proxy refused: test")
            await agent.expect_silence(0.1)
            assert await statuses(server) == {"Cluster": "SYNCED", "ClusterLoadAssignment": "SYNCED",
                                              "Listener": "SYNCED", "RouteConfiguration": "NACKED"}
            agent.close()
            await channel.close()

    asyncio.run(scenario())
