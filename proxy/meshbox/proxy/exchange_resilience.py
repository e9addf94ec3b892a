"""The exchange core's resilience: retries (conditions, backoff, the cluster's retry limit, the body
kept to send again), circuit breaking (requests counted, overflow answered 503 UO) and the outcomes
outlier detection learns from. Same rules as the rest of the core: no I/O, no clock.

Nothing here runs for a route without a retry policy and a cluster without a guard, except the
legacy retries (failed connects, per-try timeouts), which go through :meth:`_may_retry` and :meth:`_retry` too.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from meshbox.proxy.attempt_outcomes import NO_ANSWER, RETRY_BODY_LIMIT
from meshbox.proxy.codec.events import ResponseHead
from meshbox.proxy.exchange import ARM, CLOSE_UP, DELAY_TIMER, OPEN, ROUTE_TIMER, Exchange
from meshbox.proxy.exchange_state import ExchangeState
from meshbox.proxy.snapshot import RouteRuntime

if TYPE_CHECKING:
    # Loaded with a config whose clusters have resilience settings (see snapshot.ClusterRuntime).
    from meshbox.proxy.cluster_resilience import ClusterGuard

OVERFLOW = b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
# Exchange.held bits: what the exchange counts against its cluster's limits until it is logged.
HELD_REQUEST = 1
HELD_RETRY = 2


class ExchangeResilience(ExchangeState):
    """Retries, circuit breaking and outlier reporting of one client connection's exchanges."""

    def _retry_setup(self, ex: Exchange, route: RouteRuntime) -> None:
        """A route with retries: keep a request body to send again; look at response heads when its
        policy retries on them."""
        policy = route.retry_policy
        ex.response_retry = policy is not None and policy.on_response
        head = ex.head
        if head is not None and (head.chunked or head.content_length):
            ex.replay = []

    def _keep_body(self, ex: Exchange, data: bytes) -> None:
        """Keep request body bytes (as framed upstream) for a retry while within RETRY_BODY_LIMIT."""
        replay = ex.replay
        if replay is None:
            return
        ex.replay_size += len(data)
        if ex.replay_size > RETRY_BODY_LIMIT:
            ex.replay = None
        else:
            replay.append(data)

    def _replayable(self, ex: Exchange) -> bool:
        """The request can go out again: complete, no response byte sent, and no body or a kept one."""
        head = ex.head
        if ex.response_started or not ex.request_done or head is None:
            return False
        return (not head.chunked and not head.content_length) or ex.replay is not None

    def _may_retry(self, ex: Exchange) -> bool:
        """Whether the cluster's retry limit (or budget) lets ``ex`` retry; an exchange holds its one
        slot across all its retries. No: counted as an overflow."""
        if ex.held & HELD_RETRY:
            return True
        cluster = ex.cluster
        assert cluster is not None
        if not cluster.limits.admit_retry():
            self.ctx.stats.incr("upstream_rq_retry_overflow")
            return False
        ex.held |= HELD_RETRY
        ex.limits = cluster.limits
        return True

    def _retry(self, ex: Exchange, now: float, fresh: bool = False) -> None:
        """Another attempt (the last one is detached): after the route's backoff when it has a retry
        policy, with the kept request body."""
        route = ex.route
        assert route is not None
        ex.retries_left -= 1
        self.ctx.stats.incr("upstream_rq_retry")
        replay = ex.replay
        if replay:
            ex.pending = list(replay)
        policy = route.retry_policy
        if policy is not None:
            wait = policy.backoff(route.retries - ex.retries_left, random.random())
            if wait > 0:
                self.actions.append((ARM, DELAY_TIMER, ex, wait))
                return
        self._connect(ex, now, fresh)

    def _retry_failure(self, ex: Exchange, failure: int) -> bool:
        """Whether an attempt that failed with ``failure`` (retry_policy bits) may be retried: retries
        left, and the route's policy retries it (no policy: failed connects and per-try timeouts)."""
        if ex.retries_left <= 0:
            return False
        route = ex.route
        policy = route.retry_policy if route is not None else None
        return policy.retries(failure) if policy is not None else True

    def _exhausted(self, ex: Exchange, flag: str) -> str:
        """``flag`` plus URX when the route's retry policy would have retried but no attempt is left."""
        route = ex.route
        if route is not None and route.retry_policy is not None and route.retries and ex.retries_left <= 0:
            return flag + ",URX" if flag != "-" else "URX"
        return flag

    def _retry_response(self, ex: Exchange, head: ResponseHead, now: float) -> bool:
        """A final response head arrived on a route that retries on responses. True: it is not passed
        on, another attempt is under way."""
        route = ex.route
        policy = route.retry_policy if route is not None else None
        if policy is None or not policy.retries_response(head.status, head.headers):
            return False
        if ex.retries_left <= 0:
            ex.response_flags = self._exhausted(ex, ex.response_flags)
            self.ctx.stats.incr("upstream_rq_retry_limit_exceeded")
            return False
        if not self._replayable(ex):
            return False
        if not self._may_retry(ex):
            # Over the cluster's retry limit: the response goes on, flagged UO (as Envoy does).
            ex.response_flags = "UO"
            return False
        self._report(ex, head.status, now)
        up = self._detach(ex)
        # Envoy resets the stream; on HTTP/1.1 the connection is closed (its body is of no use).
        self.actions.append((CLOSE_UP, up))
        self._retry(ex, now)
        return True

    # -- circuit breaking and endpoint picking -------------------------------------------------------
    def _guarded_connect(self, ex: Exchange, guard: ClusterGuard, now: float, fresh: bool) -> None:
        """``_connect`` for a cluster with a guard: count the request (503 UO over max_requests), pick an
        endpoint the outlier detector did not eject, by hash when the cluster hashes."""
        # ex.limits marks the exchange for _release when it is logged (outcomes, counts given back).
        ex.limits = guard.limits
        if guard.counting and not ex.held & HELD_REQUEST:
            if not guard.limits.admit_request():
                self.overflowed(ex, now)
                return
            ex.held |= HELD_REQUEST
        head = ex.head
        host = guard.pick(head.headers if head is not None else [], self.remote, now, self.ctx.stats)
        if host is None:
            self._local_reply(ex, 503, b"no healthy upstream", "UH", now)
            return
        ex.host = host
        ex.upstream_host = host.host
        self.actions.append((OPEN, ex, host, fresh))

    def overflowed(self, ex: Exchange, now: float) -> None:
        """No room for ``ex`` (max_requests in flight, or max pending requests waiting): 503, flag UO."""
        if self.exchange is not ex:
            return
        self.ctx.stats.incr("upstream_rq_pending_overflow")
        # No connection was made: the log shows no upstream host, as Envoy's does.
        ex.upstream_host = None
        self._local_reply(ex, 503, OVERFLOW, "UO", now)
        self.flush()

    def queued(self, ex: Exchange) -> None:
        """``ex`` waits for a connection slot (max_connections): its route timeout runs meanwhile."""
        if self.exchange is ex and ex.request_done and not ex.timed and ex.route is not None:
            ex.timed = True
            self.actions.append((ARM, ROUTE_TIMER, ex, ex.route.timeout))

    # -- outcomes ----------------------------------------------------------------------------------
    def _report(self, ex: Exchange, status: int, now: float) -> None:
        """One attempt's outcome on ``ex.host``, for the cluster's outlier detection."""
        cluster = ex.cluster
        guard = cluster.guard if cluster is not None else None
        if guard is not None and guard.outlier is not None:
            guard.report(ex.host, status, now, self.ctx.stats)

    def _release(self, ex: Exchange, now: float) -> None:
        """``ex`` is over: give back what it held of its cluster's limits, report its last attempt."""
        limits = ex.limits
        if limits is None:
            return
        if ex.held & HELD_REQUEST:
            limits.request_done()
        if ex.held & HELD_RETRY:
            limits.retry_done()
        ex.held = 0
        ex.limits = None
        if ex.host is None:
            return
        flags = ex.response_flags
        if ex.response_started:
            self._report(ex, ex.response_code, now)
        elif flags.startswith(("UF", "UC", "UPE")):
            self._report(ex, NO_ANSWER, now)
        elif flags.startswith("UT") and ex.sent_at:
            # (Not when it timed out still waiting for a connection slot: the endpoint never saw it.)
            self._report(ex, 504, now)
