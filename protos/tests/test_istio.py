"""Istio's traffic API → meshbox's model: the YAML of Istio's own traffic-management tasks, translated;
every field meshbox does not implement refused by name; references and conflicts checked."""

from __future__ import annotations

from typing import Any

import pytest
from ruamel.yaml import YAML

from meshbox.api.istio.destination_rule import translate_destination_rule
from meshbox.api.istio.fields import parse_duration
from meshbox.api.istio.findings import Code, Finding
from meshbox.api.istio.legacy import translate_destination_policy, translate_legacy_route_rule
from meshbox.api.istio.objects import is_istio_networking, qualify_host
from meshbox.api.istio.references import HostPorts, resolve
from meshbox.api.istio.service_entry import translate_service_entry
from meshbox.api.istio.virtual_service import translate_virtual_service
from meshbox.api.v1 import proxy_config_pb2 as pc

REVIEWS = "reviews.default.svc.cluster.local"
HOSTS = {REVIEWS: HostPorts(frozenset({9080}), frozenset({9080})),
         "ratings.default.svc.cluster.local": HostPorts(frozenset({9080}), frozenset({9080}))}

DESTINATION_RULE = """
apiVersion: networking.istio.io/{version}
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
"""
ROUTE_BY_HEADER = """
apiVersion: networking.istio.io/{version}
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
"""


def load(text: str) -> dict[str, Any]:
    data = YAML(typ="safe").load(text)
    assert isinstance(data, dict)
    return data


def only(findings: list[Finding]) -> list[tuple[str, str, str]]:
    return [(f.code.id, f.path, f.message) for f in findings]


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_request_routing_by_header_in_every_served_version(version: str) -> None:
    vs_doc, dr_doc = load(ROUTE_BY_HEADER.format(version=version)), load(DESTINATION_RULE.format(version=version))
    assert is_istio_networking(vs_doc) and is_istio_networking(dr_doc)
    vs, findings = translate_virtual_service(vs_doc, source="vs.yaml")
    assert findings == [] and vs is not None
    dr, findings = translate_destination_rule(dr_doc, source="dr.yaml")
    assert findings == [] and dr is not None
    result = resolve([vs], [dr], HOSTS)
    assert result.findings == []
    jason, rest = result.routes["VirtualService default/reviews"].specs
    assert jason.destination == REVIEWS
    assert [(h.name, h.exact) for h in jason.match.headers] == [("end-user", "jason")]
    assert [(d.subset, dict(d.labels), d.weight) for d in jason.route] == [("v2", {"version": "v2"}, 100)]
    assert not rest.match.headers and [d.subset for d in rest.route] == ["v1"]


def test_not_an_istio_object() -> None:
    assert not is_istio_networking({"apiVersion": "networking.istio.io/v2", "kind": "VirtualService"})
    assert not is_istio_networking({"apiVersion": "networking.istio.io/v1", "kind": "Gateway"})
    assert not is_istio_networking({"apiVersion": "v1", "kind": "Service"})


def test_shifting_faults_timeouts_retries() -> None:
    vs, findings = translate_virtual_service(load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  http:
  - match:
    - uri: {prefix: /slow}
      port: 9080
    fault:
      delay: {percentage: {value: 50.5}, fixedDelay: 7s}
      abort: {percent: 10, httpStatus: 500}
    timeout: 0.5s
    retries: {attempts: 3, perTryTimeout: 200ms, retryOn: connect-failure}
    route:
    - destination: {host: reviews, subset: v1, port: {number: 9080}}
      weight: 50
    - destination: {host: reviews, subset: v3, port: {number: 9080}}
      weight: 50
"""), source="vs.yaml")
    assert findings == [] and vs is not None
    (rule,) = vs.rules
    spec = rule.spec
    assert spec.match.path_prefix == "/slow" and spec.port == 9080
    assert [(d.subset, d.weight) for d in spec.route] == [("v1", 50), ("v3", 50)]
    assert spec.fault.delay.percent == 50.5 and spec.fault.delay.fixed_delay.seconds == 7
    assert spec.fault.abort.percent == 10 and spec.fault.abort.http_status == 500
    assert spec.timeout.nanos == 500_000_000
    assert spec.retries.attempts == 3 and spec.retries.per_try_timeout.nanos == 200_000_000


def test_each_match_alternative_is_a_route_in_order() -> None:
    vs, findings = translate_virtual_service(load("""
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match:
    - headers: {end-user: {prefix: ja}}
    - headers: {x-canary: {regex: "yes|true"}}
    route: [{destination: {host: reviews, subset: v2}}]
"""), source="vs.yaml")
    assert findings == [] and vs is not None
    assert [r.path for r in vs.rules] == ["spec.http[0].match[0]", "spec.http[0].match[1]"]
    headers = [r.spec.match.headers[0] for r in vs.rules]
    assert [(h.name, h.WhichOneof("match")) for h in headers] == [("end-user", "prefix"), ("x-canary", "regex")]


CIRCUIT_BREAKER = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
        connectTimeout: 250ms
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"""
MIRROR = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin
spec:
  hosts:
    - httpbin
  http:
  - route:
    - destination:
        host: httpbin
        subset: v1
      weight: 100
    mirror:
      host: httpbin
      subset: v2
    mirrorPercentage:
      value: 100.0
"""


def test_circuit_breaking_and_outlier_detection_translate() -> None:
    dr, findings = translate_destination_rule(load(CIRCUIT_BREAKER), source="cb.yaml")
    assert findings == [] and dr is not None
    policy = dr.spec.policy
    cb, od = policy.circuit_breakers, policy.outlier_detection
    assert (cb.max_connections, cb.max_pending_requests, cb.max_requests_per_connection) == (1, 1, 1)
    assert policy.connect_timeout.nanos == 250_000_000
    assert (od.consecutive_5xx, od.interval.seconds, od.base_ejection_time.seconds, od.max_ejection_percent) == \
        (1, 1, 180, 100)


def test_mirroring_is_translated_and_other_route_features_are_refused_by_name() -> None:
    vs, findings = translate_virtual_service(load(MIRROR), source="mirror.yaml")
    assert vs is not None and findings == []
    (rule,) = vs.rules
    assert [(m.destination.subset, m.destination.host, m.percent, m.all) for m in rule.spec.mirrors] == [
        ("v2", "", 100.0, False)]
    assert rule.mirror_paths == ("spec.http[0].mirror",)
    vs, findings = translate_virtual_service(load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: r}
spec:
  hosts: ["*.example.com", reviews]
  gateways: [bookinfo-gateway]
  http:
  - match: [{uri: {exact: /productpage}, method: {exact: GET}}]
    rewrite: {uri: /v1}
    headers: {request: {set: {x-a: b}}}
    retries: {attempts: 2, retryOn: "5xx,connect-failure,retriable-4xx", backoff: 1s, retryRemoteLocalities: true}
    fault: {abort: {http2Error: CANCEL, percentage: {value: 5}}}
    route: [{destination: {host: ratings}}]
  tcp: [{route: [{destination: {host: reviews}}]}]
"""), source="x.yaml")
    assert vs is None
    assert {f.path: f.message for f in findings} == {
        "spec.tcp": "TCP routes: not implemented by meshbox yet (non-HTTP ports are proxied at L4 to the whole "
                    "Service)",
        "spec.gateways[0]": "gateways: not implemented by meshbox yet (only the sidecars' 'mesh')",
        "spec.hosts[0]": "wildcard hosts: not implemented by meshbox yet",
        "spec.http[0].retries.retryRemoteLocalities": "not implemented by meshbox's proxy yet",
        "spec.http[0].fault.abort.http2Error": "not implemented by meshbox's proxy yet",
        "spec.http[0].match[0].method": "not implemented by meshbox's proxy yet",
        "spec.http[0].match[0].uri.exact": "not implemented by meshbox's proxy yet (it matches path prefixes)",
    }
    assert all(f.code is Code.UNSUPPORTED for f in findings)


def test_load_balancer_connect_timeout_and_refused_policies() -> None:
    dr, findings = translate_destination_rule(load("""
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool: {tcp: {connectTimeout: 250ms}}
    tls: {mode: DISABLE}
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
"""), source="dr.yaml")
    assert findings == [] and dr is not None
    assert dr.spec.destination == "reviews.shop.svc.cluster.local"
    assert dr.spec.policy.lb_policy == pc.LEAST_REQUEST and dr.spec.policy.connect_timeout.nanos == 250_000_000
    assert dr.spec.subsets[0].policy.lb_policy == pc.ROUND_ROBIN
    _, findings = translate_destination_rule(load("""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: PASSTHROUGH}
    tls: {mode: ISTIO_MUTUAL}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v1, labels: {version: 1}}
"""), source="dr.yaml")
    assert only(findings) == [
        ("MB0105", "spec.trafficPolicy.loadBalancer.simple",
         "PASSTHROUGH: not implemented by meshbox's proxy yet (it has ROUND_ROBIN, LEAST_REQUEST, LEAST_CONN, "
         "RANDOM)"),
        ("MB0105", "spec.trafficPolicy.tls.mode",
         "ISTIO_MUTUAL: not implemented by meshbox yet (sidecars talk plain TCP; only DISABLE)"),
        ("MB0100", "spec.subsets[1].labels.version", "label values must be strings, got 1 (quote it in YAML)"),
        ("MB0100", "spec.subsets[1].name", "duplicate subset 'v1'"),
        ("MB0100", "spec.subsets[1].labels", "a subset needs labels (meshbox selects its pods by them)"),
    ]


def test_malformed_objects_name_the_field() -> None:
    _, findings = translate_virtual_service(load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: reviews
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 70
    - destination: {host: reviews, subset: v2}
      weight: 20
    timeout: soon
    retires: {attempts: 1}
"""), source="vs.yaml")
    got = only(findings)
    assert ("MB0100", "spec.hosts", "expected a list, got a string") in got
    assert ("MB0100", "spec.http[0].timeout", "expected a duration such as '2s' or '500ms', got 'soon'") in got
    assert ("MB0100", "spec.http[0].route", "destination weights must add up to 100, got 90") in got
    assert any(p == "spec.http[0].retires" and m.startswith("not a field of Istio's HTTPRoute (known: ")
               for _, p, m in got)


def test_references_conflicts_and_the_previous_version() -> None:
    dr, _ = translate_destination_rule(load(DESTINATION_RULE.format(version="v1")), source="dr.yaml")
    good, _ = translate_virtual_service(load(ROUTE_BY_HEADER.format(version="v1")), source="vs.yaml")
    assert dr is not None and good is not None
    first = resolve([good], [dr], HOSTS)
    assert first.findings == []

    bad_doc = load(ROUTE_BY_HEADER.format(version="v1"))
    bad_doc["spec"]["http"][0]["route"][0]["destination"]["subset"] = "v9"
    bad, _ = translate_virtual_service(bad_doc, source="vs.yaml")
    other_doc = load(ROUTE_BY_HEADER.format(version="v1"))
    other_doc["metadata"]["name"] = "reviews-too"
    other, _ = translate_virtual_service(other_doc, source="other.yaml")
    ghost_doc = load(ROUTE_BY_HEADER.replace("reviews", "ghost").format(version="v1"))
    ghost, _ = translate_virtual_service(ghost_doc, source="ghost.yaml")
    assert bad is not None and other is not None and ghost is not None

    again = resolve([bad, other, ghost], [dr, dr], HOSTS, previous=first.routes)
    assert [str(f) for f in again.findings] == [
        "dr.yaml: DestinationRule default/reviews: spec.host: reviews.default.svc.cluster.local already has "
        "DestinationRule default/reviews; this one is not applied [MB0104]",
        "vs.yaml: VirtualService default/reviews: spec.http[0].route[0].destination.subset: subset 'v9' of "
        "reviews.default.svc.cluster.local is not defined (DestinationRule default/reviews defines v1, v2, v3); "
        "its previous version keeps serving [MB0102]",
        "other.yaml: VirtualService default/reviews-too: spec.hosts[0]: reviews.default.svc.cluster.local is "
        "already routed by VirtualService default/reviews; this VirtualService is not applied [MB0103]",
        "ghost.yaml: VirtualService default/ghost: spec.hosts[0]: no Service or ServiceEntry has host "
        "ghost.default.svc.cluster.local [MB0101]",
        "ghost.yaml: VirtualService default/ghost: spec.http[0].route[0].destination.subset: subset 'v2' of "
        "ghost.default.svc.cluster.local is not defined (no DestinationRule for this host) [MB0102]",
        "ghost.yaml: VirtualService default/ghost: spec.http[1].route[0].destination.subset: subset 'v1' of "
        "ghost.default.svc.cluster.local is not defined (no DestinationRule for this host) [MB0102]",
    ]
    assert list(again.routes) == ["VirtualService default/reviews"]
    assert again.routes["VirtualService default/reviews"] is first.routes["VirtualService default/reviews"]


def test_ports_must_exist_and_be_http() -> None:
    vs, _ = translate_virtual_service(load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews, port: {number: 3306}}}]
  - match: [{port: 9090}]
    route: [{destination: {host: reviews}}]
"""), source="vs.yaml")
    assert vs is not None
    hosts = {REVIEWS: HostPorts(frozenset({3306, 9080}), frozenset({9080}))}
    assert [(f.code, f.path) for f in resolve([vs], [], hosts).findings] == [
        (Code.UNKNOWN_PORT, "spec.http[0]"), (Code.UNKNOWN_PORT, "spec.http[1].match[0]")]


@pytest.mark.parametrize(("text", "seconds", "nanos"), [
    ("2s", 2, 0), ("0.5s", 0, 500_000_000), ("1m30s", 90, 0), ("500ms", 0, 500_000_000), ("1h", 3600, 0),
    ("250us", 0, 250_000)])
def test_durations(text: str, seconds: int, nanos: int) -> None:
    d = parse_duration(text)
    assert d is not None and (d.seconds, d.nanos) == (seconds, nanos)


@pytest.mark.parametrize("text", ["", "2", "s", "2 s", "-1s", "1x", "1s2"])
def test_bad_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_host_qualification() -> None:
    assert qualify_host("reviews", "shop") == "reviews.shop.svc.cluster.local"
    assert qualify_host("reviews.prod", "shop") == "reviews.prod.svc.cluster.local"
    assert qualify_host("reviews.prod.svc", "shop") == "reviews.prod.svc.cluster.local"
    assert qualify_host("Api.Example.com.", "shop") == "api.example.com"


EXTERNAL = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: payments
spec:
  hosts:
  - payments.example.com
  addresses:
  - 10.96.50.1
  ports:
  - number: 80
    name: http
    protocol: HTTP
  - number: 5432
    name: db
    protocol: TCP
    targetPort: 15432
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
  - address: 192.0.2.10
    ports:
      http: 8080
  - address: 192.0.2.11
"""


def test_static_service_entry() -> None:
    entry, findings = translate_service_entry(load(EXTERNAL), source="se.yaml")
    assert findings == [] and entry is not None
    assert (entry.host, entry.fqdn, entry.address) == ("payments.example.com", "payments.example.com", "10.96.50.1")
    assert [(p.name, p.number, p.target, p.http) for p in entry.ports] == [("http", 80, 0, True),
                                                                           ("db", 5432, 15432, False)]
    assert [(e.address, dict(e.ports)) for e in entry.endpoints] == [("192.0.2.10", {"http": 8080}),
                                                                     ("192.0.2.11", {})]


def test_service_entry_forms_meshbox_does_not_implement() -> None:
    _, findings = translate_service_entry(load("""
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: external-svc-https}
spec:
  hosts: [api.dropboxapi.com, www.googleapis.com]
  ports: [{number: 443, name: https, protocol: TLS}]
  location: MESH_EXTERNAL
  resolution: DYNAMIC_DNS
  endpoints: [{address: us.foo.bar.com, ports: {https: 8443}, labels: {version: v1}}]
  exportTo: ["."]
"""), source="se.yaml")
    assert sorted(only(findings)) == [
        ("MB0105", "spec.endpoints[0].labels", "not implemented by meshbox yet"),
        ("MB0105", "spec.exportTo", "exportTo: not implemented by meshbox yet (every entry applies mesh-wide)"),
        ("MB0105", "spec.hosts", "2 hosts: exactly one host per ServiceEntry is implemented (write one entry per "
                                 "host)"),
        ("MB0105", "spec.ports[0].protocol", "TLS without spec.addresses: not implemented by meshbox yet; an entry "
                                             "without an address is picked by the Host header of HTTP/1.1 requests, "
                                             "so only HTTP ports can be served (give the entry one address in "
                                             "spec.addresses)"),
        ("MB0105", "spec.resolution", "DYNAMIC_DNS: not implemented by meshbox's proxy yet (it forwards to the "
                                      "endpoints' addresses: use STATIC or DNS)"),
    ]


SEED_RULE = """
apiVersion: config.istio.io/v1alpha2
kind: RouteRule
metadata:
  name: reviews-test-v2
spec:
  destination:
    name: reviews
  precedence: 2
  match:
    request:
      headers:
        cookie:
          regex: "^(.*?;)?(user=jason)(;.*)?$"
        uri:
          prefix: /reviews
  route:
  - labels:
      version: v2
  httpReqTimeout:
    simpleTimeout:
      timeout: 1s
  httpReqRetries:
    simpleRetry:
      attempts: 3
      perTryTimeout: 200ms
  httpFault:
    delay:
      percent: 10
      fixedDelay: 5s
"""


def test_seed_era_route_rule_and_destination_policy() -> None:
    rule, findings = translate_legacy_route_rule(load(SEED_RULE), source="rule.yaml")
    assert findings == [] and rule is not None
    spec = rule.spec
    assert (spec.destination, spec.precedence, spec.match.path_prefix) == (REVIEWS, 2, "/reviews")
    assert [(h.name, h.regex) for h in spec.match.headers] == [("cookie", "^(.*?;)?(user=jason)(;.*)?$")]
    assert [(dict(d.labels), d.weight) for d in spec.route] == [({"version": "v2"}, 100)]
    assert spec.timeout.seconds == 1 and spec.retries.attempts == 3
    assert spec.fault.delay.percent == 10 and spec.fault.delay.fixed_delay.seconds == 5

    policy, findings = translate_destination_policy(load("""
apiVersion: config.istio.io/v1alpha2
kind: DestinationPolicy
metadata: {name: reviews-lb}
spec:
  destination: {name: reviews}
  loadBalancing: {name: LEAST_CONN}
"""), source="policy.yaml")
    assert findings == [] and policy is not None
    assert policy.spec.destination == REVIEWS and policy.spec.policy.lb_policy == pc.LEAST_REQUEST

    _, findings = translate_destination_policy(load("""
apiVersion: config.istio.io/v1alpha2
kind: DestinationPolicy
metadata: {name: reviews-cb}
spec:
  destination: {name: reviews, labels: {version: v1}}
  circuitBreaker: {simpleCb: {maxConnections: 100}}
"""), source="policy.yaml")
    assert only(findings) == [
        ("MB0105", "spec.destination.labels", "policies for some pods of the destination only: not implemented by "
                                              "meshbox yet"),
    ]
    _, findings = translate_legacy_route_rule(load(SEED_RULE.replace("  httpFault:", "  l4Fault: {terminate: {}}\n"
                                                                     "  httpFault:")), source="rule.yaml")
    assert only(findings) == [("MB0105", "spec.l4Fault", "not implemented by meshbox's proxy yet")]


def test_routes_to_another_host() -> None:
    vs, findings = translate_virtual_service(load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: ratings, subset: v1}}]
  - route:
    - {destination: {host: reviews}, weight: 90}
    - {destination: {host: ghost}, weight: 10}
"""), source="vs.yaml")
    assert findings == [] and vs is not None
    ratings = "ratings.default.svc.cluster.local"
    dr, _ = translate_destination_rule(load(DESTINATION_RULE.format(version="v1").replace("reviews", "ratings")),
                                       source="dr.yaml")
    assert dr is not None
    result = resolve([vs], [dr], HOSTS)
    assert only(result.findings) == [("MB0101", "spec.http[1].route[1].destination.host",
                                      "no Service or ServiceEntry has host ghost.default.svc.cluster.local")]
    hosts = {**HOSTS, "ghost.default.svc.cluster.local": HostPorts(frozenset({80, 81}), frozenset({80, 81}))}
    assert only(resolve([vs], [dr], hosts).findings) == [
        ("MB0106", "spec.http[1].route[1].destination.port.number",
         "is required: ghost.default.svc.cluster.local has several ports (80, 81)")]
    hosts["ghost.default.svc.cluster.local"] = HostPorts(frozenset({80}), frozenset({80}))
    resolved = resolve([vs], [dr], hosts)
    assert resolved.findings == []
    jason, split = resolved.routes["VirtualService default/reviews"].specs
    assert [(d.host, d.port, d.subset, dict(d.labels)) for d in jason.route] == [(ratings, 9080, "v1",
                                                                                {"version": "v1"})]
    assert [(d.host, d.port, d.weight) for d in split.route] == [("", 0, 90),
                                                                ("ghost.default.svc.cluster.local", 80, 10)]


def test_grpc_fault_status_and_grpc_retry_conditions_translate() -> None:
    """fault.abort.grpcStatus (a status name) and the gRPC retryOn conditions reach the route (issue #14)."""
    vs, findings = translate_virtual_service(load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - retries: {attempts: 2, retryOn: "unavailable,connect-failure,resource-exhausted"}
    fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 5}}}
    route: [{destination: {host: echo}}]
"""), source="echo.yaml")
    assert findings == [] and vs is not None
    (rule,) = vs.rules
    assert rule.spec.fault.abort.grpc_status == 14 and rule.spec.fault.abort.percent == 5
    assert list(rule.spec.retries.retry_on) == ["unavailable", "connect-failure", "resource-exhausted"]
    _, findings = translate_virtual_service(load("""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - fault: {abort: {grpcStatus: NOT_A_STATUS}}
    route: [{destination: {host: echo}}]
"""), source="echo.yaml")
    assert [(f.path, f.message.split(" (")[0]) for f in findings] == [
        ("spec.http[0].fault.abort.grpcStatus", "unknown gRPC status 'NOT_A_STATUS'")]
