"""What the exchange core and the I/O layer share: the Exchange record and the actions the core returns.

An action is a tuple whose first item is one of the opcodes below (tuples, not objects: a request
produces several and this is the hot path). ``up`` is the I/O layer's handle of an upstream connection;
the core only compares it and hands it back.

=================  ==========================================================================
(WRITE_DOWN, b)    write bytes ``b`` to the client
(OPEN, ex, host, fresh)  get a connection to ``host`` for ``ex``: an idle pooled one unless ``fresh``
                   (report it with ``core.attached(ex, up, now)``), else a new one (``attached`` /
                   ``connect_failed``)
(START_UP, up, ex, b)  ``up`` carries ``ex`` now (its response parser expects the answer to
                   ``ex.head``): write the request bytes ``b`` to it
(WRITE_UP, up, b)  write more bytes ``b`` (request body) to upstream connection ``up``
(RELEASE, up)      ``up`` is done and reusable: back to its host's idle pool
(CLOSE_UP, up)     close ``up``
(TUNNEL, up, ex)   after a 101 both connections copy raw bytes; call ``core.tunnel_closed`` at the end
(ARM, kind, key, s)  call ``core.timer_fired(kind, key, now)`` ``s`` seconds from now (re-arming replaces)
(DISARM, kind, key)  forget that timer
(LOG, ex, ms)      ``ex`` is finished (after ``ms`` milliseconds): write its access log line and metrics
(PAUSE, ) / (RESUME, )  stop / restart reading from the client
(CLOSE_DOWN, )     close the client connection (after writing what was asked before)
(MIRROR, cluster, b, s)  send the request bytes ``b`` to an endpoint of ``cluster`` and discard the
                   answer, giving up after ``s`` seconds (meshbox.proxy.mirroring)
=================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from meshbox.proxy.access_log import LogRecord
from meshbox.proxy.circuit_breaker import ClusterLimits
from meshbox.proxy.codec.events import RequestHead
from meshbox.proxy.snapshot import ClusterRuntime, ListenerRuntime, RouteRuntime
from meshbox.proxy.tracing import Span
from meshbox.proxy.upstream_hosts import UpstreamHost

# Final ints: compiled code compares them as machine integers.
WRITE_DOWN: Final = 0
OPEN: Final = 1
WRITE_UP: Final = 2
START_UP: Final = 3
RELEASE: Final = 4
CLOSE_UP: Final = 5
TUNNEL: Final = 6
ARM: Final = 7
DISARM: Final = 8
LOG: Final = 9
PAUSE: Final = 10
RESUME: Final = 11
CLOSE_DOWN: Final = 12
# (Numbered apart from the others: a route action's opcode.)
MIRROR: Final = 50
# Timer kinds: the route timeout (key: the exchange), the per-try timeout (key: the upstream connection),
# a fault-injection delay (key: the exchange) and the client connection's head/body/idle timer (key: None).
ROUTE_TIMER: Final = 0
TRY_TIMER: Final = 1
DELAY_TIMER: Final = 2
CLIENT_TIMER: Final = 3


class Exchange(LogRecord):
    """One request and its response; also its access log record. ``start`` and ``sent_at`` are times
    the I/O layer passed in (the core never reads a clock)."""

    __slots__ = (
        "chunked_out", "close_after", "cluster", "head", "held", "host", "limits", "listener", "peer",
        "pending", "pending_size", "replay", "replay_size", "request_bytes", "request_done", "response_retry",
        "response_started", "retries_left", "route", "sent_at", "span", "start", "timed", "up",
    )

    def __init__(self, head: RequestHead | None, remote: str | None, local: str | None, now: float) -> None:
        super().__init__(remote, local)
        self.head = head
        self.start = now
        if head is not None:
            self.method = head.method
            self.path = head.target
            version = head.version
            self.protocol = "HTTP/1.1" if version == b"1.1" else "HTTP/2" if version == b"2" else "HTTP/1.0"
            self.request_headers = head.headers
        self.listener: ListenerRuntime | None = None
        self.route: RouteRuntime | None = None
        self.cluster: ClusterRuntime | None = None
        self.host: UpstreamHost | None = None
        # The I/O layer's handle of the upstream connection carrying the current attempt.
        self.up: object | None = None
        self.request_bytes: bytes = b""
        # Request body waiting for an upstream connection (a list once something waits).
        self.pending: Sequence[bytes] = ()
        self.pending_size: int = 0
        self.request_done: bool = False
        self.response_started: bool = False
        self.chunked_out: bool = False
        self.close_after: bool = False
        self.sent_at: float = 0.0
        self.retries_left: int = 0
        # The route timeout is armed (it spans every attempt).
        self.timed: bool = False
        # This exchange's trace span when the proxy traces (meshbox.proxy.tracing).
        self.span: Span | None = None
        # Resilience (exchange_resilience): the cluster limits it counts against until logged (and
        # which: HELD_* bits), the request body kept for a retry, whether response heads may be retried.
        self.limits: ClusterLimits | None = None
        self.held: int = 0
        self.replay: list[bytes] | None = None
        self.replay_size: int = 0
        self.response_retry: bool = False
        # The workload at the other end, from the metadata exchange: (workload, namespace, app).
        self.peer: tuple[str, str, str] | None = None
