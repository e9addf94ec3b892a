"""Registry → per-node ProxyConfig: naming, listeners, endpoints, inbound side, route rules."""

from __future__ import annotations

from typing import Any

import pytest

from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.validation import validate_proxy_config
from meshbox.discovery.config_builder import ConfigBuilder
from meshbox.discovery.registry import SourcedDocument, build_registry

TWO = "service-two.default.svc.cluster.local"


def registry_of(docs: list[dict[str, Any]]) -> Any:
    return build_registry(SourcedDocument("test.yaml", d) for d in docs)


def by_name(items: Any, attr: str = "name") -> dict[str, Any]:
    return {getattr(i, attr): i for i in items}


def test_tutorial_outbound_and_inbound(kit: Any) -> None:
    registry = registry_of(kit.tutorial_objects())
    assert registry.errors == ()
    config = ConfigBuilder(registry).build(kit.node("service-one-a", "10.1.0.11"))
    validate_proxy_config(config)

    clusters = by_name(config.clusters)
    assert set(clusters) == {
        "outbound|80||service-one.default.svc.cluster.local", f"outbound|80||{TWO}",
        "inbound|8080||service-one.default.svc.cluster.local",
    }
    assert clusters[f"outbound|80||{TWO}"].service == TWO

    endpoints = by_name(config.endpoints, "cluster_name")
    two = endpoints[f"outbound|80||{TWO}"].endpoints
    assert [(e.address, e.port, e.labels["version"]) for e in two] == [("10.1.0.21", 8080, "v1"),
                                                                       ("10.1.0.22", 8080, "v2")]
    # Each endpoint names the workload behind it (the pod's name, as no ReplicaSet hash ends it; the app label).
    assert [(e.workload.name, e.workload.namespace, e.workload.app) for e in two] == [
        ("service-two-v1", "default", "service-two"), ("service-two-v2", "default", "service-two")]
    inbound = endpoints["inbound|8080||service-one.default.svc.cluster.local"].endpoints
    assert [(e.address, e.port) for e in inbound] == [("127.0.0.1", 8080)]
    assert not inbound[0].HasField("workload")

    listeners = {(lis.direction, lis.address, lis.port): lis for lis in config.listeners}
    out = listeners[(pc.OUTBOUND, "10.96.0.12", 80)]
    assert out.protocol == pc.HTTP and out.route_config == "80"
    inb = listeners[(pc.INBOUND, "10.1.0.11", 8080)]
    assert inb.protocol == pc.HTTP
    assert len(config.listeners) == 3

    route = by_name(config.route_configs)["80"]
    vhost = by_name(route.virtual_hosts)[f"{TWO}:80"]
    assert set(vhost.domains) == {
        "service-two", "service-two:80", "service-two.default", "service-two.default:80",
        "service-two.default.svc", "service-two.default.svc:80", TWO, f"{TWO}:80", "10.96.0.12", "10.96.0.12:80",
    }
    assert [wc.cluster for wc in vhost.routes[-1].clusters] == [f"outbound|80||{TWO}"]


def test_tcp_port_and_named_target_port(kit: Any) -> None:
    registry = registry_of([
        kit.service("db", "10.96.0.30", port=5432, target="pg", port_name="tcp-pg"),
        kit.pod("db-0", "db", "10.1.0.30", port=5432, port_name="pg"),
    ])
    config = ConfigBuilder(registry).build(kit.node("db-0", "10.1.0.30"))
    listener = next(lis for lis in config.listeners if lis.direction == pc.OUTBOUND)
    assert listener.protocol == pc.TCP and listener.cluster == "outbound|5432||db.default.svc.cluster.local"
    assert not config.route_configs
    inbound = next(lis for lis in config.listeners if lis.direction == pc.INBOUND)
    assert (inbound.address, inbound.port, inbound.cluster) == ("10.1.0.30", 5432,
                                                                "inbound|5432||db.default.svc.cluster.local")


def test_endpoint_slices_take_precedence_over_pod_selection(kit: Any) -> None:
    slice_doc = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "service-two-abc", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "service-two"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.1.0.22"], "conditions": {"ready": True},
             "targetRef": {"kind": "Pod", "name": "service-two-v2", "namespace": "default"}},
            {"addresses": ["10.1.0.99"], "conditions": {"ready": False}},
        ],
    }
    registry = registry_of([*kit.tutorial_objects(), slice_doc])
    config = ConfigBuilder(registry).build(kit.node("x", "10.1.0.50"))
    eps = by_name(config.endpoints, "cluster_name")[f"outbound|80||{TWO}"].endpoints
    assert [(e.address, e.labels["version"]) for e in eps] == [("10.1.0.22", "v2")]
    assert eps[0].workload.name == "service-two-v2"


def test_unready_and_finished_pods_are_not_endpoints(kit: Any) -> None:
    unready = kit.pod("service-two-v3", "service-two", "10.1.0.23", "v3")
    unready["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    done = kit.pod("service-two-v4", "service-two", "10.1.0.24", "v4")
    done["status"]["phase"] = "Succeeded"
    registry = registry_of([*kit.tutorial_objects(), unready, done])
    config = ConfigBuilder(registry).build(kit.node("x", "10.1.0.50"))
    eps = by_name(config.endpoints, "cluster_name")[f"outbound|80||{TWO}"].endpoints
    assert {e.address for e in eps} == {"10.1.0.21", "10.1.0.22"}


def test_route_rule_weighted_subsets_with_timeout_retries_fault(kit: Any) -> None:
    rule = kit.route_rule("two-canary", "service-two", {"v1": 75, "v2": 25}, precedence=1,
                          timeout="2s", retries={"attempts": 2}, fault={"abort": {"percent": 10, "http_status": 503}})
    header_rule = kit.route_rule("two-header", "service-two", {"v2": 100}, precedence=5,
                                 match={"headers": [{"name": "x-user", "exact": "tester"}], "path_prefix": "/api"})
    registry = registry_of([*kit.tutorial_objects(), rule, header_rule])
    config = ConfigBuilder(registry).build(kit.node("service-one-a", "10.1.0.11"))
    validate_proxy_config(config)
    vhost = by_name(by_name(config.route_configs)["80"].virtual_hosts)[f"{TWO}:80"]
    first, second, default = vhost.routes
    assert first.match.prefix == "/api" and first.match.headers[0].exact == "tester"
    assert [(w.cluster, w.weight) for w in first.clusters] == [(f"outbound|80|v2|{TWO}", 100)]
    assert [(w.cluster, w.weight) for w in second.clusters] == [(f"outbound|80|v1|{TWO}", 75),
                                                                (f"outbound|80|v2|{TWO}", 25)]
    assert second.timeout.seconds == 2 and second.retries.attempts == 2
    assert second.fault.abort.http_status == 503 and second.fault.abort.percent == 10
    assert [w.cluster for w in default.clusters] == [f"outbound|80||{TWO}"]
    endpoints = by_name(config.endpoints, "cluster_name")
    assert [e.address for e in endpoints[f"outbound|80|v1|{TWO}"].endpoints] == ["10.1.0.21"]
    assert [e.address for e in endpoints[f"outbound|80|v2|{TWO}"].endpoints] == ["10.1.0.22"]
    # Rules shape only service-two's routes.
    one = by_name(by_name(config.route_configs)["80"].virtual_hosts)["service-one.default.svc.cluster.local:80"]
    assert len(one.routes) == 1


def test_invalid_route_rule_is_left_out_and_reported(kit: Any) -> None:
    bad = kit.route_rule("bad", "service-two", {"v1": 60, "v2": 60})
    typo = kit.route_rule("typo", "service-two", {"v1": 100})
    typo["spec"]["retrys"] = {"attempts": 1}
    registry = registry_of([*kit.tutorial_objects(), bad, typo])
    assert len(registry.errors) == 2
    assert "RouteRule default/bad" in registry.errors[0] and "spec.route" in registry.errors[0]
    assert "must add up to 100, got 120" in registry.errors[0]
    assert "spec.retrys" in registry.errors[1] and "no such field" in registry.errors[1]
    config = ConfigBuilder(registry).build(kit.node("service-one-a", "10.1.0.11"))
    assert not any("|v1|" in c.name for c in config.clusters)


def test_rule_for_unknown_service_is_warned(kit: Any) -> None:
    builder = ConfigBuilder(registry_of([*kit.tutorial_objects(), kit.route_rule("r", "nope", {"v1": 100})]))
    assert builder.warnings == ["RouteRule default/r: spec.destination: no Service 'nope'; rule not applied"]


@pytest.mark.parametrize(("doc_change", "expected"), [
    (lambda d: d["spec"].pop("clusterIP"), "Service default/service-one: spec.clusterIP: is required"),
    (lambda d: d["spec"]["ports"][0].update(port=70000), "spec.ports[0].port: expected a port number"),
    (lambda d: d["spec"].update(clusterIP="10.96.0.300"), "spec.clusterIP: not an IP address"),
    (lambda d: d["spec"].update(selector={"app": 3}), "spec.selector.app: label values must be strings"),
])
def test_bad_service_is_reported_by_field(kit: Any, doc_change: Any, expected: str) -> None:
    objects = kit.tutorial_objects()
    doc_change(objects[0])
    registry = registry_of(objects)
    assert len(registry.errors) == 1 and expected in registry.errors[0], registry.errors
    assert [s.name for s in registry.services] == ["service-two"]


def test_headless_service_and_pod_without_ip(kit: Any) -> None:
    headless = kit.service("hl", "None")
    pending = kit.pod("service-two-new", "service-two", "10.1.0.29")
    del pending["status"]
    registry = registry_of([*kit.tutorial_objects(), headless, pending])
    assert registry.errors == ()
    config = ConfigBuilder(registry).build(kit.node("service-two-new", ""))
    assert not any(lis.direction == pc.INBOUND for lis in config.listeners)
    assert not any("hl." in c.name for c in config.clusters)


def test_short_name_domain_only_within_namespace(kit: Any) -> None:
    other = kit.service("service-two", "10.96.1.12", namespace="other")
    builder = ConfigBuilder(registry_of([*kit.tutorial_objects(), other]))
    config = builder.build(kit.node("p", "10.1.0.90", namespace="other"))
    hosts = by_name(by_name(config.route_configs)["80"].virtual_hosts)
    assert "service-two" not in hosts[f"{TWO}:80"].domains
    assert "service-two" in hosts["service-two.other.svc.cluster.local:80"].domains


def test_duplicate_objects_keep_the_first(kit: Any) -> None:
    objects = kit.tutorial_objects()
    registry = build_registry([SourcedDocument("a.yaml", objects[0]),
                               SourcedDocument("b.yaml", kit.service("service-one", "10.96.9.9"))])
    assert registry.services[0].cluster_ip == "10.96.0.11"
    assert registry.errors == ("b.yaml: Service default/service-one: duplicate of the object in a.yaml; ignored",)


def test_v1_endpoints_object_with_named_port_and_pod_labels(kit: Any) -> None:
    endpoints = {
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "service-two", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": "10.1.0.21", "targetRef": {"kind": "Pod", "name": "service-two-v1"}},
                                   {"ip": "10.1.0.77"}],
                     "notReadyAddresses": [{"ip": "10.1.0.78"}],
                     "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}],
    }
    registry = registry_of([*kit.tutorial_objects(), endpoints])
    config = ConfigBuilder(registry).build(kit.node("x", "10.1.0.50"))
    eps = by_name(config.endpoints, "cluster_name")[f"outbound|80||{TWO}"].endpoints
    assert [(e.address, e.port, dict(e.labels)) for e in eps] == [
        ("10.1.0.21", 8080, {"app": "service-two", "version": "v1"}), ("10.1.0.77", 8080, {})]
    bad = dict(endpoints, subsets=[{"addresses": [{"ip": "not-an-ip"}]}])
    errors = registry_of([bad]).errors
    assert errors == ("test.yaml: Endpoints default/service-two: subsets[0].addresses[0].ip: "
                      "not an IP address: 'not-an-ip'",)
