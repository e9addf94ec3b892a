"""State shared by every connection of one proxy process: the current snapshot, log, stats, codec."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from meshbox.proxy.access_log import AccessLog
from meshbox.proxy.codec import Codec
from meshbox.proxy.deadlines import Deadlines
from meshbox.proxy.metrics import Stats
from meshbox.proxy.peer_metadata import PeerMetadata
from meshbox.proxy.recent_requests import RecentRequests
from meshbox.proxy.request_id import RequestIds
from meshbox.proxy.snapshot import INBOUND, OUTBOUND, Snapshot, Workload, metric_labels
from meshbox.proxy.tracing import Tracer
from meshbox.proxy.upstream_hosts import HostRegistry

if TYPE_CHECKING:
    from meshbox.proxy.workload_tls import WorkloadTls

# Downstream timeouts (seconds; 0 turns one off): a request head must arrive within HEAD_TIMEOUT of its
# first byte, a request body must make progress every BODY_IDLE_TIMEOUT, and a kept-alive client
# connection with no request in progress is closed after IDLE_TIMEOUT.
HEAD_TIMEOUT = 10.0
BODY_IDLE_TIMEOUT = 60.0
IDLE_TIMEOUT = 300.0


@dataclass
class ProxyContext:
    """Per-process data-plane state. ``snapshot`` is replaced whole on config apply (never mutated)."""

    loop: asyncio.AbstractEventLoop
    codec: Codec
    access_log: AccessLog
    workload: Workload
    pod_ip: str | None = None
    # The pod's name (POD_NAME), sent to peers in the metadata exchange.
    pod_name: str = ""
    # Refuse unknown destinations (REGISTRY_ONLY) instead of passing them through (ALLOW_ANY).
    registry_only: bool = False
    # Ports of our own capture listeners: a connection whose original destination is one of them is a loop.
    capture_ports: frozenset[int] = frozenset()
    snapshot: Snapshot | None = None
    head_timeout: float = HEAD_TIMEOUT
    body_idle_timeout: float = BODY_IDLE_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    # The workload certificate (--cert-dir), None when this proxy cannot do mutual TLS.
    tls: WorkloadTls | None = None
    stats: Stats = field(default_factory=Stats)
    hosts: HostRegistry = field(default_factory=HostRegistry)
    request_ids: RequestIds = field(default_factory=RequestIds)
    # The last exchanges and the direction that served each, for meshctl trace (admin /requests).
    recent: RecentRequests = field(default_factory=RecentRequests)
    # Trace propagation and spans (None: trace headers pass through untouched).
    tracer: Tracer | None = None
    # Connections that finish their current exchange and then close (set by /drain_listeners).
    draining: bool = False
    # Open downstream connections, so a drain can close the idle ones.
    connections: set[asyncio.BaseProtocol] = field(default_factory=set)
    # Metric labels for traffic that matched no cluster (no route, passthrough), per direction.
    unknown_labels: dict[str, tuple[str, ...]] = field(init=False)
    # This proxy's end of the metadata exchange with its peers (peer_metadata).
    peer_metadata: PeerMetadata = field(init=False)

    # Per exchange (route timeout, per-try timeout); per client connection (head, body, idle: coarser).
    deadlines: Deadlines = field(init=False)
    connection_deadlines: Deadlines = field(init=False)

    def __post_init__(self) -> None:
        self.deadlines = Deadlines(self.loop)
        self.connection_deadlines = Deadlines(self.loop, resolution=0.1)
        self.unknown_labels = {d: metric_labels(d, self.workload, "") for d in (INBOUND, OUTBOUND)}
        self.access_log.count_drops_in(self.stats)
        self.peer_metadata = PeerMetadata(self.workload, self.pod_name, self.pod_ip, self.stats)
