"""Rules on the resilience fields of the proxy config (RetryPolicy's conditions and backoff, a
Cluster's circuit breakers, outlier detection and hash policy), as (field path, problem) pairs that
meshbox.api.validation reports."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration

from meshbox.api.retry_on import RETRY_ON, unknown_conditions
from meshbox.api.v1 import proxy_config_pb2 as pc


def _seconds(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9


def retry_policy_problems(retries: pc.RetryPolicy) -> list[tuple[str, str]]:
    """What is wrong with a route's RetryPolicy (paths relative to it)."""
    problems = []
    unknown = unknown_conditions(list(retries.retry_on))
    if unknown:
        problems.append(("retry_on", f"unknown condition(s) {', '.join(unknown)} (known: {', '.join(RETRY_ON)})"))
    for i, code in enumerate(retries.retriable_status_codes):
        if not 100 <= code <= 599:
            problems.append((f"retriable_status_codes[{i}]", f"must be an HTTP status 100..599, got {code}"))
    base, most = _seconds(retries.backoff_base_interval), _seconds(retries.backoff_max_interval)
    if retries.HasField("backoff_max_interval") and most < (base or 0.025):
        problems.append(("backoff_max_interval", f"must not be below the base interval ({most}s < {base or 0.025}s)"))
    return problems


def cluster_problems(cluster: pc.Cluster) -> list[tuple[str, str]]:
    """What is wrong with a Cluster's resilience fields (paths relative to it)."""
    problems = []
    budget = cluster.circuit_breakers.retry_budget
    if not 0 <= budget.budget_percent <= 100:
        problems.append(("circuit_breakers.retry_budget.budget_percent",
                         f"must be 0..100, got {budget.budget_percent}"))
    od = cluster.outlier_detection
    for name in ("max_ejection_percent", "min_health_percent"):
        if getattr(od, name) > 100:
            problems.append((f"outlier_detection.{name}", f"must be 0..100, got {getattr(od, name)}"))
    key = cluster.hash_policy.WhichOneof("key")
    no_key = key is None or (key == "use_source_ip" and not cluster.hash_policy.use_source_ip)
    if cluster.lb_policy == pc.RING_HASH and no_key:
        problems.append(("hash_policy", "RING_HASH needs a key: header_name, cookie_name or use_source_ip"))
    if key is not None and cluster.lb_policy != pc.RING_HASH:
        problems.append(("hash_policy", "applies to lb_policy RING_HASH only"))
    if key in ("header_name", "cookie_name") and not getattr(cluster.hash_policy, key):
        problems.append((f"hash_policy.{key}", "must not be empty"))
    return problems
