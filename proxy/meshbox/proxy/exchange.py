"""What the exchange core and the I/O layer share: the Exchange record and the actions the core returns.

An action is a tuple whose first item is one of the opcodes below (tuples, not objects: a request
produces several and this is the hot path). ``up`` is the I/O layer's handle of an upstream connection;
the core only compares it and hands it back.

=================  ==========================================================================
(WRITE_DOWN, b)    write bytes ``b`` to the client
(OPEN, ex, host)   get a connection to ``host`` for ``ex``: an idle pooled one (report it with
                   ``core.attached(ex, up, True, now)``) or a new one (``attached`` / ``connect_failed``)
(WRITE_UP, up, b)  write bytes ``b`` to upstream connection ``up``
(EXPECT, up, ex)   ``up`` carries ``ex`` now: its response parser expects the answer to ``ex.head``
(RELEASE, up)      ``up`` is done and reusable: back to its host's idle pool
(CLOSE_UP, up)     close ``up``
(TUNNEL, up, ex)   after a 101 both connections copy raw bytes; call ``core.tunnel_closed`` at the end
(ARM, kind, key, s)  call ``core.timer_fired(kind, key, now)`` ``s`` seconds from now (re-arming replaces)
(DISARM, kind, key)  forget that timer
(LOG, ex)          ``ex`` is finished: write its access log line and metrics
(PAUSE, ) / (RESUME, )  stop / restart reading from the client
(CLOSE_DOWN, )     close the client connection (after writing what was asked before)
=================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Sequence

from meshbox.proxy.access_log import LogRecord
from meshbox.proxy.codec.events import RequestHead
from meshbox.proxy.snapshot import ClusterRuntime, ListenerRuntime, RouteRuntime
from meshbox.proxy.upstream_hosts import UpstreamHost

WRITE_DOWN, OPEN, WRITE_UP, EXPECT, RELEASE, CLOSE_UP, TUNNEL, ARM, DISARM, LOG, PAUSE, RESUME, CLOSE_DOWN = range(13)
# Timer kinds: the route timeout (key: the exchange), the per-try timeout (key: the upstream connection),
# a fault-injection delay (key: the exchange) and the client connection's head/body/idle timer (key: None).
ROUTE_TIMER, TRY_TIMER, DELAY_TIMER, CLIENT_TIMER = range(4)


class Exchange(LogRecord):
    """One request and its response; also its access log record. ``start`` and ``sent_at`` are times
    the I/O layer passed in (the core never reads a clock)."""

    __slots__ = (
        "chunked_out", "close_after", "cluster", "head", "host", "listener", "pending", "pending_size",
        "request_bytes", "request_done", "response_started", "retries_left", "route", "sent_at", "start", "timed",
        "up",
    )

    def __init__(self, head: RequestHead | None, remote: str | None, local: str | None, now: float) -> None:
        super().__init__(remote, local)
        self.head = head
        self.start = now
        if head is not None:
            self.method = head.method
            self.path = head.target
            self.protocol = "HTTP/1.1" if head.version == b"1.1" else "HTTP/1.0"
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
