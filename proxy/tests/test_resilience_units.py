"""The pure pieces of the proxy's resilience: retry conditions and backoff, the cluster limits,
outlier detection, consistent hashing and random balancing (no sockets: their inputs are values)."""

from __future__ import annotations

import random
from collections import Counter

from meshbox.api.retry_on import GRPC_RETRY_ON
from meshbox.proxy.attempt_outcomes import CONNECT_FAILURE, NO_ANSWER, RESET, TRY_TIMEOUT
from meshbox.proxy.circuit_breaker import BreakerSettings, ClusterLimits
from meshbox.proxy.cluster_resilience import ClusterGuard, ResilienceSettings
from meshbox.proxy.consistent_hash import COOKIE, HashKey, HashRing, client_ip, cookie_value
from meshbox.proxy.load_balancer import random_choice
from meshbox.proxy.metrics import Stats
from meshbox.proxy.outlier_detection import OutlierDetector, OutlierSettings
from meshbox.proxy.retry_policy import compile_retry_policy
from meshbox.proxy.snapshot import make_picker
from meshbox.proxy.upstream_hosts import UpstreamHost


def test_retry_conditions_as_envoy_defines_them() -> None:
    five = compile_retry_policy(["5xx"], [], GRPC_RETRY_ON, 0.0, 0.0)
    assert five.retries_response(500, []) and five.retries_response(503, []) and not five.retries_response(404, [])
    assert five.retries(CONNECT_FAILURE) and five.retries(RESET) and five.retries(TRY_TIMEOUT)
    gateway = compile_retry_policy(["gateway-error"], [], GRPC_RETRY_ON, 0.0, 0.0)
    assert [s for s in (500, 501, 502, 503, 504) if gateway.retries_response(s, [])] == [502, 503, 504]
    assert gateway.retries(CONNECT_FAILURE) and gateway.retries(RESET)
    connect = compile_retry_policy(["connect-failure"], [], GRPC_RETRY_ON, 0.0, 0.0)
    assert connect.retries(CONNECT_FAILURE) and not connect.retries(RESET) and not connect.on_response
    reset = compile_retry_policy(["reset"], [], GRPC_RETRY_ON, 0.0, 0.0)
    assert reset.retries(RESET) and reset.retries(TRY_TIMEOUT) and not reset.retries(CONNECT_FAILURE)
    four = compile_retry_policy(["retriable-4xx"], [], GRPC_RETRY_ON, 0.0, 0.0)
    assert four.retries_response(409, []) and not four.retries_response(400, [])
    codes = compile_retry_policy(["retriable-status-codes"], [418, 503], GRPC_RETRY_ON, 0.0, 0.0)
    assert codes.retries_response(418, []) and not codes.retries_response(500, [])
    default = compile_retry_policy([], [], GRPC_RETRY_ON, 0.0, 0.0)
    assert default.retries(CONNECT_FAILURE) and default.retries(TRY_TIMEOUT) and not default.retries(RESET)


def test_grpc_conditions_test_the_grpc_status_header() -> None:
    """What an HTTP/2 codec extends: a trailers-only gRPC answer carries grpc-status in its head."""
    unavailable = compile_retry_policy(["unavailable", "cancelled"], [], GRPC_RETRY_ON, 0.0, 0.0)
    assert unavailable.on_response
    assert unavailable.retries_response(200, [(b"content-type", b"application/grpc"), (b"grpc-status", b"14")])
    assert unavailable.retries_response(200, [(b"grpc-status", b"1")])
    assert not unavailable.retries_response(200, [(b"grpc-status", b"0")])
    assert not unavailable.retries_response(503, [])


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    policy = compile_retry_policy(["5xx"], [], GRPC_RETRY_ON, 0.0, 0.0)
    assert (policy.base_interval, policy.max_interval) == (0.025, 0.25)
    ceilings = [policy.backoff(n, 0.999999) for n in range(1, 7)]
    assert [round(c, 3) for c in ceilings] == [0.025, 0.05, 0.1, 0.2, 0.25, 0.25]
    assert policy.backoff(3, 0.0) == 0.0 and policy.backoff(3, 0.5) == 0.05
    custom = compile_retry_policy(["5xx"], [], GRPC_RETRY_ON, 0.1, 0.15)
    assert custom.backoff(5, 0.999999) <= 0.15


def test_retry_limit_and_budget() -> None:
    limits = ClusterLimits(BreakerSettings())
    assert [limits.admit_retry() for _ in range(4)] == [True, True, True, False]  # Envoy's default: 3
    assert limits.retry_overflow == 1
    limits.retry_done()
    assert limits.admit_retry()
    budget = ClusterLimits(BreakerSettings(budget_percent=20.0, min_retry_concurrency=2))
    for _ in range(20):
        assert budget.admit_request()
    # 20 % of 20 requests in flight: 4 retries.
    assert [budget.admit_retry() for _ in range(5)] == [True, True, True, True, False]
    small = ClusterLimits(BreakerSettings(budget_percent=20.0, min_retry_concurrency=2))
    assert small.admit_request()
    assert [small.admit_retry() for _ in range(3)] == [True, True, False]  # at least min_retry_concurrency


def test_request_and_pending_limits() -> None:
    limits = ClusterLimits(BreakerSettings(max_requests=2, max_connections=1, max_pending_requests=2))
    assert [limits.admit_request() for _ in range(3)] == [True, True, False]
    assert limits.rq_pending_overflow == 1
    limits.request_done()
    assert limits.admit_request()
    waiting = {"a": True, "b": True, "c": True}
    assert limits.queue("a", waiting.get) and limits.queue("b", waiting.get)
    assert not limits.queue("c", waiting.get)
    waiting["a"] = False  # its client went away: its place is given to the next
    assert limits.queue("c", waiting.get)
    assert limits.next_pending(waiting.get) == "b" and limits.next_pending(waiting.get) == "c"
    assert limits.next_pending(waiting.get) is None
    assert limits.cx_overflow == 4 and limits.rq_pending_overflow == 2


def _hosts(n: int) -> list[UpstreamHost]:
    return [UpstreamHost(f"10.0.0.{i + 1}", 8080) for i in range(n)]


def test_outlier_ejection_grows_with_each_ejection_and_ends_at_review() -> None:
    hosts = _hosts(4)
    od = OutlierDetector(OutlierSettings(consecutive_5xx=3, interval=10.0, base_ejection_time=30.0,
                                         max_ejection_percent=50), hosts)
    bad = hosts[0]
    assert not od.report(bad, 500, 0.0) and not od.report(bad, 502, 0.0)
    assert not od.report(bad, 200, 0.0)  # a success breaks the run
    assert [od.report(bad, 503, 1.0) for _ in range(3)] == [False, False, True]
    assert od.ejected == {bad} and od.records[bad].ejected_until == 31.0
    assert not od.review(25.0) and not od.review(30.0)  # (reviewed at 11, 21, 31, ...)
    assert od.review(31.0) and od.ejected == set()
    for _ in range(3):
        od.report(bad, NO_ANSWER, 32.0)
    assert od.records[bad].ejected_until == 32.0 + 60.0  # second ejection: twice the base time


def test_max_ejection_percent_but_at_least_one_and_panic() -> None:
    hosts = _hosts(4)
    od = OutlierDetector(OutlierSettings(consecutive_5xx=1, max_ejection_percent=10), hosts)
    assert od.report(hosts[0], 500, 0.0)  # 10 % of 4 is no host, but one may always be ejected
    assert not od.report(hosts[1], 500, 0.0) and od.ejected == {hosts[0]}
    od_all = OutlierDetector(OutlierSettings(consecutive_5xx=1, max_ejection_percent=100), hosts)
    for host in hosts:
        od_all.report(host, 500, 0.0)
    assert od_all.ejected == set(hosts) and od_all.panic()
    gateway = OutlierDetector(OutlierSettings(consecutive_5xx=0, consecutive_gateway_errors=2), hosts)
    assert not gateway.report(hosts[0], 500, 0.0) and not gateway.report(hosts[0], 502, 0.0)
    assert gateway.report(hosts[0], 504, 0.0)
    healthy = OutlierDetector(OutlierSettings(consecutive_5xx=1, max_ejection_percent=100, min_health_percent=60),
                              hosts)
    healthy.report(hosts[0], 500, 0.0)
    assert not healthy.panic()
    healthy.report(hosts[1], 500, 0.0)
    assert healthy.panic()  # 2 of 4 left: below 60 %


def test_guard_skips_ejected_hosts_and_uses_all_in_panic() -> None:
    hosts = _hosts(3)
    settings = ResilienceSettings(outlier=OutlierSettings(consecutive_5xx=1, max_ejection_percent=100))
    guard = ClusterGuard(settings, "ROUND_ROBIN", hosts, [1, 1, 1], ClusterLimits(settings.breaker), make_picker)
    stats = Stats()
    guard.report(hosts[0], 500, 0.0, stats)
    assert stats.counters == {"outlier_detection_ejections_enforced": 1, "outlier_detection_ejections_active": 1}
    assert {guard.pick([], None, 0.1, stats) for _ in range(10)} == {hosts[1], hosts[2]}
    guard.report(hosts[1], 500, 0.2, stats)
    guard.report(hosts[2], 500, 0.3, stats)
    assert {guard.pick([], None, 0.4, stats) for _ in range(10)} == set(hosts)  # panic: all of them
    assert {guard.pick([], None, 40.0, stats) for _ in range(10)} == set(hosts)  # reviewed: none ejected
    assert stats.counters["outlier_detection_ejections_active"] == 0


def test_ring_hash_is_stable_and_moves_only_the_removed_hosts_keys() -> None:
    hosts = _hosts(5)
    ring = HashRing(hosts, [1] * 5)
    keys = [b"user-%d" % i for i in range(500)]
    before = {k: ring.pick(k, set()) for k in keys}
    assert {k: ring.pick(k, set()) for k in keys} == before
    assert len(set(before.values())) == 5
    shares = Counter(before.values())
    assert min(shares.values()) > 40  # about 100 each
    smaller = HashRing(hosts[:4], [1] * 4)
    moved = [k for k in keys if smaller.pick(k, set()) != before[k]]
    assert all(before[k] is hosts[4] for k in moved)
    # Skipping a host (ejected) sends its keys to the next point, others stay.
    skipped = {k: ring.pick(k, {hosts[0]}) for k in keys}
    assert all(skipped[k] == before[k] for k in keys if before[k] is not hosts[0])
    assert hosts[0] not in skipped.values()
    assert ring.pick(None, set()) in hosts


def test_hash_keys() -> None:
    headers = [(b"cookie", b"a=1; session=abc; b=2"), (b"x-user", b"jason")]
    assert cookie_value(headers, b"session") == b"abc" and cookie_value(headers, b"missing") is None
    assert HashKey(COOKIE, "Session").of(headers, None) is None  # cookie names are case-sensitive
    assert HashKey("header", "X-User").of(headers, None) == b"jason"
    assert client_ip("10.1.2.3:5555") == b"10.1.2.3" and client_ip("[fd00::1]:80") == b"fd00::1"
    assert client_ip(None) is None


def test_random_choice_follows_weights() -> None:
    random.seed(7)
    hosts = _hosts(2)
    pick = random_choice(hosts, [1, 3])
    counts = Counter(pick() for _ in range(4000))
    assert 800 < counts[hosts[0]] < 1200 and 2800 < counts[hosts[1]] < 3200
    even = random_choice(hosts, [1, 1])
    assert {even() for _ in range(50)} == set(hosts)
