"""Route actions from Istio VirtualServices and meshbox RouteRules through discovery's registry into
proxy routes: mirrors become subset clusters, headers / rewrite / redirect / rate limit are carried over,
and a mirror to an undefined subset or unknown host is reported like a route destination."""

from __future__ import annotations

from typing import Any

from meshbox.discovery.config_builder import ConfigBuilder
from meshbox.discovery.registry import SourcedDocument, build_registry

TWO = "service-two.default.svc.cluster.local"
ONE = "service-one.default.svc.cluster.local"


def _docs(kit: Any, http: list[dict[str, Any]]) -> list[dict[str, Any]]:
    dr = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
          "metadata": {"name": "service-two", "namespace": "default"},
          "spec": {"host": "service-two", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                      {"name": "v2", "labels": {"version": "v2"}}]}}
    vs = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
          "metadata": {"name": "service-two", "namespace": "default"}, "spec": {"hosts": ["service-two"],
                                                                                "http": http}}
    return [*kit.tutorial_objects(), dr, vs]


def _routes(kit: Any, docs: list[dict[str, Any]]) -> tuple[Any, list[Any]]:
    registry = build_registry(SourcedDocument("istio.yaml", d) for d in docs)
    config = ConfigBuilder(registry).build(kit.node("service-one-a", "10.1.0.11"))
    (rc,) = [rc for rc in config.route_configs if rc.name == "80"]
    (vhost,) = [vh for vh in rc.virtual_hosts if vh.name == f"{TWO}:80"]
    return registry, config, list(vhost.routes)


def test_virtual_service_actions_become_proxy_route_actions(kit: Any) -> None:
    http = [
        {"match": [{"uri": {"prefix": "/old"}}], "redirect": {"uri": "/new", "redirectCode": 302}},
        {"match": [{"uri": {"prefix": "/api/"}}], "rewrite": {"uri": "/", "authority": "api.internal"},
         "headers": {"request": {"set": {"X-Api": "1"}, "remove": ["cookie"]},
                     "response": {"add": {"x-served-by": "mesh"}}},
         "route": [{"destination": {"host": "service-two", "subset": "v1"}, "weight": 90,
                    "headers": {"request": {"add": {"x-dest": "v1"}}}},
                   {"destination": {"host": "service-two", "subset": "v2"}, "weight": 10}]},
        {"route": [{"destination": {"host": "service-two", "subset": "v1"}}],
         "mirror": {"host": "service-two", "subset": "v2"}, "mirrorPercentage": {"value": 25.0}},
        {"match": [{"headers": {"x-copy": {"exact": "1"}}}],
         "route": [{"destination": {"host": "service-two", "subset": "v1"}}],
         "mirrors": [{"destination": {"host": "service-one"}}]},
    ]
    registry, config, routes = _routes(kit, _docs(kit, http))
    assert registry.errors == ()
    redirect, api, mirrored, copied, _ = routes
    assert (redirect.redirect.path, redirect.redirect.code) == ("/new", 302)
    assert (api.rewrite.prefix, api.rewrite.authority) == ("/", "api.internal")
    assert [(h.name, h.value) for h in api.request_headers.set] == [("x-api", "1")]
    assert list(api.request_headers.remove) == ["cookie"]
    assert [(h.name, h.value) for h in api.response_headers.add] == [("x-served-by", "mesh")]
    assert [(c.cluster, [(h.name, h.value) for h in c.request_headers.add]) for c in api.clusters] == [
        (f"outbound|80|v1|{TWO}", [("x-dest", "v1")]), (f"outbound|80|v2|{TWO}", [])]
    assert [(m.cluster, m.percent, m.all) for m in mirrored.mirrors] == [(f"outbound|80|v2|{TWO}", 25.0, False)]
    assert [(m.cluster, m.all) for m in copied.mirrors] == [(f"outbound|80||{ONE}", True)]
    clusters = {c.name for c in config.clusters}
    assert {f"outbound|80|v2|{TWO}", f"outbound|80||{ONE}"} <= clusters
    (v2,) = [a for a in config.endpoints if a.cluster_name == f"outbound|80|v2|{TWO}"]
    assert [e.address for e in v2.endpoints] == ["10.1.0.22"]


def test_mirror_references_are_checked(kit: Any) -> None:
    http = [{"route": [{"destination": {"host": "service-two", "subset": "v1"}}],
             "mirrors": [{"destination": {"host": "service-two", "subset": "v9"}},
                         {"destination": {"host": "nowhere"}, "percentage": {"value": 5}}]}]
    registry, _, routes = _routes(kit, _docs(kit, http))
    assert [e.split(": ", 2)[2] for e in registry.errors] == [
        "spec.http[0].mirrors[0].destination.subset: subset 'v9' of service-two.default.svc.cluster.local is not "
        "defined (DestinationRule default/service-two defines v1, v2) [MB0102]",
        "spec.http[0].mirrors[1].destination.host: no Service or ServiceEntry has host "
        "nowhere.default.svc.cluster.local [MB0101]",
    ]
    assert [r.mirrors for r in routes] == [[]]  # not applied


def test_route_rule_rate_limit_and_headers(kit: Any) -> None:
    rule = kit.route_rule("limited", "service-two", {"v1": 100},
                          rateLimit={"maxTokens": 100, "tokensPerFill": 10, "fillInterval": "1s"},
                          responseHeaders={"set": [{"name": "x-limited", "value": "yes"}]})
    registry, _, routes = _routes(kit, [*kit.tutorial_objects(), rule])
    assert registry.errors == ()
    limited = routes[0]
    assert (limited.rate_limit.max_tokens, limited.rate_limit.tokens_per_fill,
            limited.rate_limit.fill_interval.seconds) == (100, 10, 1)
    assert [(h.name, h.value) for h in limited.response_headers.set] == [("x-limited", "yes")]
