"""Istio VirtualServices and DestinationRules in discovery's registry: translated into routes and
subset clusters, refused fields and broken references reported on /registry/errors (real HTTP and
gRPC on loopback), and the last good version serving meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc

from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.discovery.config_builder import ConfigBuilder
from meshbox.discovery.payloads import PUSH_ORDER, ROUTE
from meshbox.discovery.registry import SourcedDocument, build_registry

TWO = "service-two.default.svc.cluster.local"


def destination_rule(**policy: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"host": "service-two",
                            "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                        {"name": "canary", "labels": {"version": "v2"}}]}
    if policy:
        spec["trafficPolicy"] = policy
    return {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "service-two", "namespace": "default"}, "spec": spec}


def virtual_service(http: list[dict[str, Any]], name: str = "service-two") -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"hosts": ["service-two"], "http": http}}


JASON_TO_CANARY = [
    {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
     "route": [{"destination": {"host": "service-two", "subset": "canary"}}]},
    {"route": [{"destination": {"host": "service-two", "subset": "v1"}}], "timeout": "3s",
     "retries": {"attempts": 2, "perTryTimeout": "1s"}},
]


def vhost_routes(config: pc.ProxyConfig) -> list[pc.Route]:
    (rc,) = [rc for rc in config.route_configs if rc.name == "80"]
    (vhost,) = [vh for vh in rc.virtual_hosts if vh.name == f"{TWO}:80"]
    return list(vhost.routes)


def test_routes_subsets_and_policy_from_istio_objects(kit: Any) -> None:
    docs = [*kit.tutorial_objects(),
            destination_rule(loadBalancer={"simple": "LEAST_REQUEST"},
                             connectionPool={"tcp": {"connectTimeout": "250ms"}}),
            virtual_service(JASON_TO_CANARY)]
    registry = build_registry(SourcedDocument("istio.yaml", d) for d in docs)
    assert registry.errors == ()
    config = ConfigBuilder(registry).build(kit.node("service-one-a", "10.1.0.11"))
    jason, rest, catch_all = vhost_routes(config)
    assert [(h.name, h.exact) for h in jason.match.headers] == [("end-user", "jason")]
    assert [c.cluster for c in jason.clusters] == [f"outbound|80|canary|{TWO}"]
    assert [c.cluster for c in rest.clusters] == [f"outbound|80|v1|{TWO}"]
    assert rest.timeout.seconds == 3 and rest.retries.attempts == 2 and rest.retries.per_try_timeout.seconds == 1
    assert [c.cluster for c in catch_all.clusters] == [f"outbound|80||{TWO}"]
    clusters = {c.name: c for c in config.clusters}
    for name in (f"outbound|80||{TWO}", f"outbound|80|v1|{TWO}", f"outbound|80|canary|{TWO}"):
        assert clusters[name].lb_policy == pc.LEAST_REQUEST
        assert clusters[name].connect_timeout.nanos == 250_000_000
    assert clusters["outbound|80||service-one.default.svc.cluster.local"].lb_policy == pc.ROUND_ROBIN
    endpoints = {e.cluster_name: [x.address for x in e.endpoints] for e in config.endpoints}
    assert endpoints[f"outbound|80|canary|{TWO}"] == ["10.1.0.22"]
    assert endpoints[f"outbound|80|v1|{TWO}"] == ["10.1.0.21"]


def test_istio_kinds_of_other_groups_are_not_read(kit: Any) -> None:
    stranger = virtual_service(JASON_TO_CANARY)
    stranger["apiVersion"] = "example.com/v1"
    registry = build_registry(SourcedDocument("x.yaml", d) for d in [*kit.tutorial_objects(), stranger])
    assert registry.errors == () and registry.route_rules == ()


def test_route_rule_beside_a_virtual_service_is_reported(kit: Any) -> None:
    docs = [*kit.tutorial_objects(), destination_rule(), virtual_service(JASON_TO_CANARY),
            kit.route_rule("all-v2", "service-two", {"v2": 100}, precedence=5)]
    registry = build_registry(SourcedDocument("m.yaml", d) for d in docs)
    assert registry.errors == ("registry: RouteRule default/all-v2: spec.destination: "
                               f"{TWO} is also routed by VirtualService default/service-two; routes are tried by "
                               "precedence, then in registry order [MB0109]",)
    routes = vhost_routes(ConfigBuilder(registry).build(kit.node("service-one-a", "10.1.0.11")))
    assert [r.clusters[0].cluster for r in routes] == [f"outbound|80|v2|{TWO}", f"outbound|80|canary|{TWO}",
                                                       f"outbound|80|v1|{TWO}", f"outbound|80||{TWO}"]


def test_refused_edit_keeps_the_last_good_version_serving(kit: Any, registry_dir: Path) -> None:
    """A real discovery server and agent stream: a VirtualService, then an edit adding a CORS policy (refused:
    /registry/errors names the field, nothing is pushed), then a 50/50 shift (pushed)."""
    kit.write_yaml(registry_dir / "istio.yaml", [destination_rule(), virtual_service(JASON_TO_CANARY)])

    async def scenario() -> None:
        async with kit.running_server(registry_dir) as server, grpc.aio.insecure_channel(server.target) as channel:
            agent = kit.AgentClient(channel, kit.node("service-one-a", "10.1.0.11"))
            agent.subscribe_all()
            first = await agent.receive_all()
            assert set(first) == set(PUSH_ORDER)
            for response in first.values():
                await agent.ack(response)
            assert await server.http_get("/registry/errors") == (200, "")

            refused = [dict(JASON_TO_CANARY[0]), {**JASON_TO_CANARY[1],
                                                   "corsPolicy": {"allowOrigins": [{"exact": "https://a.example"}]}}]
            kit.write_yaml(registry_dir / "istio.yaml", [destination_rule(), virtual_service(refused)])
            for _ in range(100):
                _, text = await server.http_get("/registry/errors")
                if text:
                    break
                await asyncio.sleep(0.05)
            assert text == (f"{registry_dir / 'istio.yaml'}: VirtualService default/service-two: "
                            "spec.http[1].corsPolicy: not implemented by meshbox's proxy yet; its previous version "
                            "keeps serving [MB0105]\n")
            await agent.expect_silence(0.3)
            routes = vhost_routes(server.hub.snapshot.builder.build(kit.node("service-one-a", "10.1.0.11")))
            assert [r.clusters[0].cluster for r in routes][:2] == [f"outbound|80|canary|{TWO}",
                                                                   f"outbound|80|v1|{TWO}"]

            shift = [{"route": [{"destination": {"host": "service-two", "subset": "v1"}, "weight": 50},
                                {"destination": {"host": "service-two", "subset": "canary"}, "weight": 50}]}]
            kit.write_yaml(registry_dir / "istio.yaml", [destination_rule(), virtual_service(shift)])
            pushed = await agent.receive()
            while pushed.type_url != ROUTE:
                await agent.ack(pushed)
                pushed = await agent.receive()
            (rc,) = [rc for rc in kit.unpack(pushed) if rc.name == "80"]
            (vhost,) = [vh for vh in rc.virtual_hosts if vh.name == f"{TWO}:80"]
            assert [(c.cluster, c.weight) for c in vhost.routes[0].clusters] == [
                (f"outbound|80|v1|{TWO}", 50), (f"outbound|80|canary|{TWO}", 50)]
            assert await server.http_get("/registry/errors") == (200, "")
            agent.close()

    asyncio.run(scenario())


PAYMENTS = {
    "apiVersion": "networking.istio.io/v1alpha3", "kind": "ServiceEntry",
    "metadata": {"name": "payments", "namespace": "default"},
    "spec": {"hosts": ["payments.example.com"], "addresses": ["10.96.50.1"], "resolution": "STATIC",
             "ports": [{"number": 80, "name": "http", "protocol": "HTTP"},
                       {"number": 5432, "name": "db", "protocol": "TCP", "targetPort": 15432}],
             "endpoints": [{"address": "192.0.2.10", "ports": {"http": 8080}}, {"address": "192.0.2.11"}]}}
PAYMENTS_FQDN = "payments.example.com"


def test_service_entry_gets_listeners_clusters_and_routes(kit: Any) -> None:
    timeout = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "payments", "namespace": "default"},
               "spec": {"hosts": ["payments.example.com"],
                        "http": [{"timeout": "2s", "route": [{"destination": {"host": "payments.example.com"}}]}]}}
    registry = build_registry(SourcedDocument("m.yaml", d) for d in [*kit.tutorial_objects(), PAYMENTS, timeout])
    assert registry.errors == ()
    config = ConfigBuilder(registry).build(kit.node("service-one-a", "10.1.0.11"))
    listeners = {(x.address, x.port): x for x in config.listeners}
    assert listeners[("10.96.50.1", 80)].protocol == pc.HTTP
    assert listeners[("10.96.50.1", 5432)].protocol == pc.TCP
    endpoints = {e.cluster_name: [(x.address, x.port) for x in e.endpoints] for e in config.endpoints}
    assert endpoints[f"outbound|80||{PAYMENTS_FQDN}"] == [("192.0.2.10", 8080), ("192.0.2.11", 80)]
    assert endpoints[f"outbound|5432||{PAYMENTS_FQDN}"] == [("192.0.2.10", 15432), ("192.0.2.11", 15432)]
    (rc,) = [rc for rc in config.route_configs if rc.name == "80"]
    (vhost,) = [vh for vh in rc.virtual_hosts if vh.name == f"{PAYMENTS_FQDN}:80"]
    assert set(vhost.domains) == {PAYMENTS_FQDN, f"{PAYMENTS_FQDN}:80", "10.96.50.1", "10.96.50.1:80"}
    assert vhost.routes[0].timeout.seconds == 2


def test_service_entry_for_a_services_host_is_refused(kit: Any) -> None:
    clash = {**PAYMENTS, "spec": {**PAYMENTS["spec"], "hosts": ["service-two.default.svc.cluster.local"]}}
    registry = build_registry(SourcedDocument("m.yaml", d) for d in [*kit.tutorial_objects(), clash])
    assert registry.errors == ("m.yaml: ServiceEntry default/payments: spec.hosts[0]: service-two.default.svc."
                               "cluster.local is already a Service's or another ServiceEntry's host; this entry is "
                               "not applied [MB0112]",)


def test_seed_era_route_rules_and_destination_policies(kit: Any) -> None:
    """config.istio.io/v1alpha2, the API of the seed's time, beside meshbox's own RouteRule kind."""
    old_rule = {"apiVersion": "config.istio.io/v1alpha2", "kind": "RouteRule",
                "metadata": {"name": "service-two-v2", "namespace": "default"},
                "spec": {"destination": {"name": "service-two"}, "precedence": 1,
                         "match": {"request": {"headers": {"end-user": {"exact": "jason"}}}},
                         "route": [{"labels": {"version": "v2"}}]}}
    old_policy = {"apiVersion": "config.istio.io/v1alpha2", "kind": "DestinationPolicy",
                  "metadata": {"name": "service-two-lb", "namespace": "default"},
                  "spec": {"destination": {"name": "service-two"}, "loadBalancing": {"name": "LEAST_CONN"}}}
    registry = build_registry(SourcedDocument("m.yaml", d) for d in [*kit.tutorial_objects(), old_rule, old_policy])
    assert registry.errors == ()
    config = ConfigBuilder(registry).build(kit.node("service-one-a", "10.1.0.11"))
    jason, catch_all = vhost_routes(config)
    assert [c.cluster for c in catch_all.clusters] == [f"outbound|80||{TWO}"]
    assert [(h.name, h.exact) for h in jason.match.headers] == [("end-user", "jason")]
    assert [c.cluster for c in jason.clusters] == [f"outbound|80|v2|{TWO}"]
    clusters = {c.name: c for c in config.clusters}
    assert clusters[f"outbound|80|v2|{TWO}"].lb_policy == pc.LEAST_REQUEST

    clash = build_registry(SourcedDocument("m.yaml", d) for d in [*kit.tutorial_objects(), destination_rule(),
                                                                   old_policy])
    assert clash.errors == ("m.yaml: DestinationPolicy default/service-two-lb: spec.destination: "
                            f"{TWO} already has a DestinationRule or DestinationPolicy; this one is not applied "
                            "[MB0104]",)


def test_routes_to_another_service_and_its_subsets(kit: Any) -> None:
    one = "service-one.default.svc.cluster.local"
    to_two = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
              "metadata": {"name": "service-one", "namespace": "default"},
              "spec": {"hosts": ["service-one"],
                       "http": [{"match": [{"headers": {"end-user": {"exact": "jason"}}}],
                                 "route": [{"destination": {"host": "service-two", "subset": "canary"}}]},
                                {"route": [{"destination": {"host": "service-one"}, "weight": 80},
                                           {"destination": {"host": "service-two"}, "weight": 20}]}]}}
    stray = kit.route_rule("stray", "service-two", {})
    stray["spec"]["route"] = [{"host": "nowhere.default.svc.cluster.local", "port": 80, "weight": 100}]
    docs = [*kit.tutorial_objects(), destination_rule(loadBalancer={"simple": "LEAST_REQUEST"}), to_two, stray]
    registry = build_registry(SourcedDocument("m.yaml", d) for d in docs)
    assert registry.errors == ()
    builder = ConfigBuilder(registry)
    config = builder.build(kit.node("service-one-a", "10.1.0.11"))
    assert builder.warnings == ["RouteRule default/stray: spec.route[0].host: no Service "
                                "'nowhere.default.svc.cluster.local' with port 80; rule not applied"]
    (rc,) = [rc for rc in config.route_configs if rc.name == "80"]
    (vhost,) = [vh for vh in rc.virtual_hosts if vh.name == f"{one}:80"]
    jason, split, _ = vhost.routes
    assert [c.cluster for c in jason.clusters] == [f"outbound|80|canary|{TWO}"]
    assert [(c.cluster, c.weight) for c in split.clusters] == [(f"outbound|80||{one}", 80), (f"outbound|80||{TWO}", 20)]
    clusters = {c.name: c for c in config.clusters}
    assert clusters[f"outbound|80|canary|{TWO}"].lb_policy == pc.LEAST_REQUEST
    endpoints = {e.cluster_name: [x.address for x in e.endpoints] for e in config.endpoints}
    assert endpoints[f"outbound|80|canary|{TWO}"] == ["10.1.0.22"]
