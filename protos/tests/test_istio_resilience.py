"""Istio's resilience fields translated (retries' conditions and backoff, connectionPool,
outlierDetection, retryBudget, consistentHash, RANDOM; the v1alpha2 circuitBreaker), the fields
still refused named, and the proxy-config rules on the fields they become."""

from __future__ import annotations

from typing import Any

import pytest
from ruamel.yaml import YAML

from meshbox.api.istio.destination_rule import translate_destination_rule
from meshbox.api.istio.findings import Finding
from meshbox.api.istio.legacy import translate_destination_policy
from meshbox.api.istio.virtual_service import translate_virtual_service
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.v1 import routing_pb2
from meshbox.api.validation import ValidationError, validate_proxy_config, validate_route_rule


def load(text: str) -> dict[str, Any]:
    data = YAML(typ="safe").load(text)
    assert isinstance(data, dict)
    return data


def only(findings: list[Finding]) -> list[tuple[str, str, str]]:
    return [(f.code.id, f.path, f.message) for f in findings]


def _vs(retries: str) -> tuple[Any, list[Finding]]:
    return translate_virtual_service(load(f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: ratings}}
spec:
  hosts: [ratings]
  http:
  - route: [{{destination: {{host: ratings}}}}]
    retries: {retries}
"""), source="vs.yaml")


def _dr(policy: str) -> tuple[Any, list[Finding]]:
    return translate_destination_rule(load(f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: ratings}}
spec:
  host: ratings
  trafficPolicy: {policy}
"""), source="dr.yaml")


def test_retry_conditions_backoff_and_status_numbers() -> None:
    vs, findings = _vs('{attempts: 3, perTryTimeout: 2s, retryOn: "gateway-error,connect-failure,503,429,'
                       'retriable-status-codes,unavailable", backoff: 50ms}')
    assert findings == [] and vs is not None
    retries = vs.rules[0].spec.retries
    assert list(retries.retry_on) == ["gateway-error", "connect-failure", "retriable-status-codes", "unavailable"]
    assert list(retries.retriable_status_codes) == [503, 429]
    assert retries.backoff_base_interval.nanos == 50_000_000 and retries.attempts == 3


def test_unimplemented_and_unknown_retry_conditions() -> None:
    vs, findings = _vs('{attempts: 1, retryOn: "5xx,envoy-ratelimited,5xxx,999", retryIgnorePreviousHosts: true}')
    assert vs is None
    assert sorted(only(findings)) == sorted([
        ("MB0105", "spec.http[0].retries.retryIgnorePreviousHosts", "not implemented by meshbox's proxy yet"),
        ("MB0105", "spec.http[0].retries.retryOn",
         "envoy-ratelimited: not implemented by meshbox's proxy yet (it has 5xx, gateway-error, reset, "
         "connect-failure, refused-stream, retriable-4xx, retriable-status-codes, cancelled, deadline-exceeded, "
         "internal, resource-exhausted, unavailable)"),
        ("MB0100", "spec.http[0].retries.retryOn",
         "unknown retry condition '5xxx' (known: 5xx, gateway-error, reset, connect-failure, refused-stream, "
         "retriable-4xx, retriable-status-codes, cancelled, deadline-exceeded, internal, resource-exhausted, "
         "unavailable)"),
        ("MB0100", "spec.http[0].retries.retryOn", "status code 999 is not 100..599"),
    ])


def test_connection_pool_outlier_defaults_and_retry_budget() -> None:
    dr, findings = _dr("""
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 1000, maxRequestsPerConnection: 10, maxRetries: 4}
    outlierDetection: {consecutiveGatewayErrors: 7}
    retryBudget: {percent: 25, minRetryConcurrency: 5}
""")
    assert findings == [] and dr is not None
    policy = dr.spec.policy
    cb = policy.circuit_breakers
    assert (cb.max_connections, cb.max_pending_requests, cb.max_requests, cb.max_requests_per_connection,
            cb.max_retries) == (100, 10, 1000, 10, 4)
    assert (cb.retry_budget.budget_percent, cb.retry_budget.min_retry_concurrency) == (25.0, 5)
    od = policy.outlier_detection
    # Istio's defaults where the rule is silent: 5 consecutive 5xx, 10 % ejected at most.
    assert (od.consecutive_5xx, od.consecutive_gateway_errors, od.max_ejection_percent) == (5, 7, 10)
    assert not od.HasField("interval")  # the proxy's default (10s)
    legacy_errors, _ = _dr("{outlierDetection: {consecutiveErrors: 3}}")
    assert legacy_errors is not None
    assert (legacy_errors.spec.policy.outlier_detection.consecutive_5xx,
            legacy_errors.spec.policy.outlier_detection.consecutive_gateway_errors) == (0, 3)
    empty_budget, _ = _dr("{retryBudget: {}}")
    assert empty_budget is not None and empty_budget.spec.policy.circuit_breakers.HasField("retry_budget")


@pytest.mark.parametrize(("lb", "field", "value"), [
    ("{simple: RANDOM}", None, None),
    ("{consistentHash: {httpHeaderName: X-User}}", "header_name", "x-user"),
    ("{consistentHash: {httpCookie: {name: session}, ringHash: {minimumRingSize: 4096}}}", "cookie_name", "session"),
    ("{consistentHash: {useSourceIp: true, minimumRingSize: 2048}}", "use_source_ip", True),
])
def test_load_balancers(lb: str, field: str | None, value: Any) -> None:
    dr, findings = _dr(f"{{loadBalancer: {lb}}}")
    assert findings == [] and dr is not None
    policy = dr.spec.policy
    if field is None:
        assert policy.lb_policy == pc.RANDOM
        return
    assert policy.lb_policy == pc.RING_HASH and getattr(policy.hash_policy, field) == value
    assert policy.hash_policy.minimum_ring_size in (0, 2048, 4096)


def test_refused_pool_outlier_and_hash_fields() -> None:
    dr, findings = _dr("""
    connectionPool:
      tcp: {tcpKeepalive: {time: 7200s}}
      http: {idleTimeout: 1s}
    outlierDetection: {splitExternalLocalOriginErrors: true}
    loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}, maglev: {tableSize: 65537}}}
""")
    assert dr is None
    assert sorted(f.path for f in findings) == [
        "spec.trafficPolicy.connectionPool.http.idleTimeout",
        "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive",
        "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl",
        "spec.trafficPolicy.loadBalancer.consistentHash.maglev",
        "spec.trafficPolicy.outlierDetection.splitExternalLocalOriginErrors",
    ]
    assert "it never sets the cookie" in {f.path: f.message for f in findings}[
        "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl"]
    _, findings = _dr("{loadBalancer: {simple: RANDOM, consistentHash: {httpHeaderName: a, useSourceIp: true}}}")
    assert sorted(only(findings)) == [
        ("MB0100", "spec.trafficPolicy.loadBalancer", "simple and consistentHash exclude each other"),
        ("MB0100", "spec.trafficPolicy.loadBalancer.consistentHash",
         "one hash key only, got httpHeaderName, useSourceIp"),
    ]


def test_seed_era_circuit_breaker() -> None:
    policy, findings = translate_destination_policy(load("""
apiVersion: config.istio.io/v1alpha2
kind: DestinationPolicy
metadata: {name: reviews-cb}
spec:
  destination: {name: reviews}
  loadBalancing: {name: RANDOM}
  circuitBreaker:
    simpleCb:
      maxConnections: 100
      httpMaxPendingRequests: 1000
      httpMaxRequestsPerConnection: 10
      httpConsecutiveErrors: 7
      sleepWindow: 15m
      httpDetectionInterval: 5m
"""), source="policy.yaml")
    assert findings == [] and policy is not None
    p = policy.spec.policy
    assert p.lb_policy == pc.RANDOM
    assert (p.circuit_breakers.max_connections, p.circuit_breakers.max_pending_requests,
            p.circuit_breakers.max_requests_per_connection) == (100, 1000, 10)
    assert (p.outlier_detection.consecutive_5xx, p.outlier_detection.base_ejection_time.seconds,
            p.outlier_detection.interval.seconds, p.outlier_detection.max_ejection_percent) == (7, 900, 300, 10)


def _config(**cluster: Any) -> pc.ProxyConfig:
    config = pc.ProxyConfig(clusters=[pc.Cluster(name="c", **cluster)])
    return config


def test_proxy_config_rules_on_the_new_fields() -> None:
    def problem(config: pc.ProxyConfig) -> str:
        with pytest.raises(ValidationError) as info:
            validate_proxy_config(config, source="cfg")
        return str(info.value)

    assert "clusters[0].hash_policy: RING_HASH needs a key" in problem(_config(lb_policy=pc.RING_HASH))
    assert "clusters[0].hash_policy: applies to lb_policy RING_HASH only" in problem(
        _config(hash_policy=pc.HashPolicy(header_name="x")))
    assert "clusters[0].outlier_detection.max_ejection_percent: must be 0..100" in problem(
        _config(outlier_detection=pc.OutlierDetection(max_ejection_percent=101)))
    assert "retry_budget.budget_percent: must be 0..100" in problem(
        _config(circuit_breakers=pc.CircuitBreakers(retry_budget=pc.RetryBudget(budget_percent=150))))
    validate_proxy_config(_config(lb_policy=pc.RING_HASH, hash_policy=pc.HashPolicy(use_source_ip=True)))
    rule = routing_pb2.RouteRuleSpec(destination="ratings", retries=pc.RetryPolicy(attempts=1, retry_on=["5xxx"]))
    with pytest.raises(ValidationError) as info:
        validate_route_rule(rule, source="rule.yaml")
    assert "spec.retries.retry_on: unknown condition(s) 5xxx" in str(info.value)
    rule.retries.retry_on[:] = ["5xx"]
    rule.retries.retriable_status_codes.append(42)
    with pytest.raises(ValidationError):
        validate_route_rule(rule)


def test_upstream_protocol_settings() -> None:
    dr, findings = _dr("{connectionPool: {http: {useClientProtocol: true}}}")
    assert findings == [] and dr.spec.policy.upstream_protocol == pc.USE_CLIENT
    for policy in ("DEFAULT", "DO_NOT_UPGRADE"):
        dr, findings = _dr(f"{{connectionPool: {{http: {{h2UpgradePolicy: {policy}}}}}}}")
        assert findings == [] and dr.spec.policy.upstream_protocol == pc.UPSTREAM_PROTOCOL_UNSPECIFIED
    # useClientProtocol makes h2UpgradePolicy ineffective (Istio), so UPGRADE is not refused beside it.
    dr, findings = _dr("{connectionPool: {http: {h2UpgradePolicy: UPGRADE, useClientProtocol: true}}}")
    assert findings == [] and dr.spec.policy.upstream_protocol == pc.USE_CLIENT
    _, findings = _dr("{connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}")
    assert only(findings) == [("MB0105", "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
                               "not implemented by meshbox's proxy yet: HTTP/1.1 clients are not upgraded to "
                               "HTTP/2 upstream")]
    _, findings = _dr("{connectionPool: {http: {h2UpgradePolicy: SOMETIMES, useClientProtocol: 1}}}")
    assert [(path, message) for _, path, message in only(findings)] == [
        ("spec.trafficPolicy.connectionPool.http.useClientProtocol", "expected true or false, got 1"),
        ("spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
         "'SOMETIMES' is not one of DEFAULT, DO_NOT_UPGRADE, UPGRADE"),
    ]
