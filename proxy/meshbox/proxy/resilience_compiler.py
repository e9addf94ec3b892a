"""Retry policies and cluster resilience settings from their messages (meshbox.api.v1 RetryPolicy,
CircuitBreakers, OutlierDetection, HashPolicy); run where config_compiler runs (it loads protobuf)."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration

from meshbox.api.retry_on import GRPC_RETRY_ON
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.proxy.circuit_breaker import DEFAULT_BUDGET_PERCENT, DEFAULT_MIN_RETRY_CONCURRENCY, BreakerSettings
from meshbox.proxy.cluster_resilience import ResilienceSettings
from meshbox.proxy.consistent_hash import COOKIE, DEFAULT_RING_SIZE, HEADER, SOURCE_IP
from meshbox.proxy.outlier_detection import OutlierSettings
from meshbox.proxy.retry_policy import RetryPolicy, compile_retry_policy


def _seconds(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9


def compile_retry(retries: pc.RetryPolicy) -> RetryPolicy | None:
    """None when the route has no retries or only the default ones (failed connects, per-try timeouts)."""
    if not retries.attempts or not (retries.retry_on or retries.HasField("backoff_base_interval")):
        return None
    return compile_retry_policy(retries.retry_on, retries.retriable_status_codes, GRPC_RETRY_ON,
                                _seconds(retries.backoff_base_interval), _seconds(retries.backoff_max_interval))


def compile_resilience(cluster: pc.Cluster) -> ResilienceSettings | None:
    """None when the cluster has none of its own (the proxy then never loads cluster_resilience)."""
    cb = cluster.circuit_breakers
    budget = cb.retry_budget if cb.HasField("retry_budget") else None
    breaker = BreakerSettings(
        max_connections=cb.max_connections, max_pending_requests=cb.max_pending_requests,
        max_requests=cb.max_requests, max_retries=cb.max_retries,
        max_requests_per_connection=cb.max_requests_per_connection,
        budget_percent=(budget.budget_percent or DEFAULT_BUDGET_PERCENT) if budget is not None else None,
        min_retry_concurrency=(budget.min_retry_concurrency if budget is not None else 0)
        or DEFAULT_MIN_RETRY_CONCURRENCY,
    )
    outlier = None
    if cluster.HasField("outlier_detection"):
        od = cluster.outlier_detection
        outlier = OutlierSettings(
            consecutive_5xx=od.consecutive_5xx, consecutive_gateway_errors=od.consecutive_gateway_errors,
            interval=_seconds(od.interval) or 10.0, base_ejection_time=_seconds(od.base_ejection_time) or 30.0,
            max_ejection_percent=od.max_ejection_percent, min_health_percent=od.min_health_percent)
    hash_on = None
    ring_size = DEFAULT_RING_SIZE
    if cluster.lb_policy == pc.RING_HASH:
        hp = cluster.hash_policy
        kind = hp.WhichOneof("key")
        if kind == "header_name":
            hash_on = (HEADER, hp.header_name)
        elif kind == "cookie_name":
            hash_on = (COOKIE, hp.cookie_name)
        elif kind == "use_source_ip" and hp.use_source_ip:
            hash_on = (SOURCE_IP, "")
        ring_size = hp.minimum_ring_size or DEFAULT_RING_SIZE
    settings = ResilienceSettings(breaker=breaker, outlier=outlier, hash_on=hash_on, ring_size=ring_size)
    return None if settings == ResilienceSettings() else settings
