"""The push hub: the current snapshot, every open stream, and fan-out of changes to them.

Runs inside the event loop; no sockets here (the gRPC edge feeds requests in and drains
each session's outbox).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Hashable

from meshbox.api.identity import WorkloadIdentity
from meshbox.api.v1 import discovery_pb2
from meshbox.api.validation import ValidationError
from meshbox.discovery.metrics import Metrics
from meshbox.discovery.node_identity import NodeRefused, check_node
from meshbox.discovery.payloads import PUSH_ORDER, Payload, short_type
from meshbox.discovery.registry import Registry
from meshbox.discovery.snapshot import Snapshot
from meshbox.discovery.stream_state import RequestKind, RequestResult, Send, StreamState

log = logging.getLogger("meshbox.discovery")
FAN_OUT_SLICE = 50


class StreamSession:
    """One agent's stream: its protocol state, its current payloads and the bytes to write."""

    def __init__(self, hub: Hub, nonce_prefix: str, identity: WorkloadIdentity | None = None) -> None:
        self._hub = hub
        self.identity = identity  # from the client certificate; None on a plaintext stream
        counter = itertools.count(1)
        self.state = StreamState(new_nonce=lambda: f"{nonce_prefix}-{next(counter)}")
        self.payloads: dict[str, Payload] = {}
        self._own: tuple[Hashable, dict[str, bytes]] | None = None  # inbound key, encoded inbound half
        # Unsent responses, newest per type: a reader that falls behind gets the latest state, not a backlog.
        self._unsent: dict[str, bytes] = {}
        self._wake = asyncio.Event()

    @property
    def node_id(self) -> str:
        return self.state.node.id if self.state.node else "<unknown node>"

    def handle(self, request: discovery_pb2.DiscoveryRequest) -> RequestResult:
        """Take one request (raises ProtocolError, or NodeRefused); queues whatever must be sent."""
        if self.state.node is None and request.node.id:
            self._authorize(request.node)
        if self.state.node is None and request.node.id and self._hub.snapshot is not None:
            self._load(self._hub.snapshot, request.node)
        result = self.state.on_request(request, time.monotonic())
        self._hub.observe(self, request.type_url, result)
        self._queue(result.sends)
        return result

    def _authorize(self, node: discovery_pb2.Node) -> None:
        """With TLS, only the pod running as the client certificate's identity gets its node's config."""
        if not self._hub.verify_nodes:
            return
        if self.identity is None:
            raise NodeRefused("no client certificate identity on this stream")
        if self._hub.snapshot is None:
            raise NodeRefused("the registry is not loaded yet; cannot tell whose node this is")
        check_node(node, self.identity, self._hub.snapshot.registry)

    def refresh(self, snapshot: Snapshot) -> None:
        """A new snapshot: push the types whose content changed for this node."""
        if self.state.node is not None and self._load(snapshot, self.state.node):
            self._queue(self.state.on_versions({t: p.version for t, p in self.payloads.items()}, time.monotonic()))

    def _load(self, snapshot: Snapshot, node: discovery_pb2.Node) -> bool:
        try:
            key = snapshot.inbound_key(node)
            if self._own is None or self._own[0] != key:
                self._own = (key, snapshot.own(node))
            self.payloads = snapshot.combine(node, self._own[1])
        except ValidationError as exc:
            # Cannot happen for a valid registry and node; if it does, the node keeps its last good config.
            log.error("config for %s not pushed: %s", node.id, exc)
            return False
        self.state.versions = {t: p.version for t, p in self.payloads.items()}
        return True

    def _queue(self, sends: list[Send]) -> None:
        for send in sends:
            self._unsent[send.type_url] = self.payloads[send.type_url].encode(send.nonce)
        if sends:
            self._wake.set()

    async def next_writes(self) -> list[bytes]:
        """Wait for responses to send; returns them in make-before-break order."""
        await self._wake.wait()
        self._wake.clear()
        batch = []
        for type_url in PUSH_ORDER:
            if type_url in self._unsent:
                batch.append(self._unsent.pop(type_url))
                self._hub.metrics.pushes.labels(short_type(type_url)).inc()
        return batch


class Hub:
    """Holds the snapshot being served and fans each new one out to every stream."""

    def __init__(self, metrics: Metrics | None = None, *, trust_domain: str | None = None) -> None:
        self.metrics = metrics or Metrics()
        # Set when streams run over mutual TLS: each node must belong to its stream's client identity.
        self.trust_domain = trust_domain
        self.snapshot: Snapshot | None = None
        self.sessions: set[StreamSession] = set()
        self._ids = itertools.count(1)
        # Nonces differ across server restarts too, so no agent can mistake an old one for a new one.
        self._boot = secrets.token_hex(4)
        self._fan_out: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.snapshot is not None

    @property
    def verify_nodes(self) -> bool:
        return self.trust_domain is not None

    def open_session(self, identity: WorkloadIdentity | None = None) -> StreamSession:
        session = StreamSession(self, nonce_prefix=f"{self._boot}-{next(self._ids)}", identity=identity)
        self.sessions.add(session)
        self.metrics.connected_proxies.set(len(self.sessions))
        return session

    def close_session(self, session: StreamSession) -> None:
        self.sessions.discard(session)
        self.metrics.connected_proxies.set(len(self.sessions))

    def syncz(self) -> list[dict[str, object]]:
        """Every proxy on a stream: who it is and, per resource type, the version it runs vs the one it
        should (``GET /debug/syncz``, read by ``meshctl proxy-status``)."""
        proxies: list[dict[str, object]] = []
        for session in self.sessions:
            node = session.state.node
            if node is None:
                continue
            types: dict[str, dict[str, str]] = {}
            for type_url in PUSH_ORDER:
                sync = session.state.sync(type_url)
                types[short_type(type_url)] = {"status": sync.status, "current": sync.current, "sent": sync.sent,
                                               "acked": sync.acked, "error": sync.error}
            proxies.append({"id": node.id, "pod": node.pod_name, "namespace": node.pod_namespace,
                            "pod_ip": node.pod_ip,
                            "identity": session.identity.spiffe_id if session.identity is not None else "",
                            "types": types})
        return sorted(proxies, key=lambda p: str(p["id"]))

    def update(self, registry: Registry) -> None:
        """Serve ``registry`` from now on and push what changed to every stream."""
        snapshot = Snapshot(registry, previous=self.snapshot, trust_domain=self.trust_domain)
        self.metrics.rebuilds.inc()
        self.metrics.registry_errors.set(len(registry.errors))
        for problem in snapshot.problems:
            log.warning("registry: %s", problem)
        self.snapshot = snapshot
        # Kept: the event loop holds tasks only weakly.
        self._fan_out = asyncio.create_task(self._push_to_all(snapshot))

    async def _push_to_all(self, snapshot: Snapshot) -> None:
        # In slices, so the first streams' writes go out while later payloads are still being built.
        sessions = list(self.sessions)
        for start in range(0, len(sessions), FAN_OUT_SLICE):
            if self.snapshot is not snapshot:
                return  # a newer snapshot's fan-out covers every session
            for session in sessions[start:start + FAN_OUT_SLICE]:
                session.refresh(snapshot)
            await asyncio.sleep(0)

    def observe(self, session: StreamSession, type_url: str, result: RequestResult) -> None:
        kind = short_type(type_url)
        if result.latency is not None:
            self.metrics.push_latency.labels(kind).observe(result.latency)
        if result.kind is RequestKind.NACK:
            self.metrics.nacks.labels(kind).inc()
            log.warning("%s rejected %s: %s", session.node_id, kind, result.error)
        elif result.kind is RequestKind.STALE:
            self.metrics.stale_requests.inc()
