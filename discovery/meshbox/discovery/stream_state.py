"""The server side of one discovery stream as a state machine with no I/O.

Feed it the agent's requests (:meth:`StreamState.on_request`) and new config versions
(:meth:`StreamState.on_versions`); it answers with the sends to make, in make-before-break
order. Rules (xDS state of the world):

- the first request must carry a Node with an id; each type is subscribed by a request
  without a nonce, whose version_info is what the agent already runs (empty on first start):
  it is sent the type only when that differs from the current version;
- a request echoing the latest nonce of its type is an ACK (agent now runs that version) or,
  with error_detail, a NACK (agent keeps its previous version; the same content is not resent);
- a request echoing any older nonce is stale and ignored;
- a type is pushed again only when its version differs from the one last sent.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from meshbox.api.v1 import discovery_pb2
from meshbox.discovery.payloads import PUSH_ORDER


class ProtocolError(ValueError):
    """The agent broke the protocol; the stream is ended with INVALID_ARGUMENT and this message."""


class RequestKind(Enum):
    SUBSCRIBE = "subscribe"
    ACK = "ack"
    NACK = "nack"
    STALE = "stale"


@dataclass(frozen=True)
class Send:
    type_url: str
    version: str
    nonce: str


@dataclass(frozen=True)
class RequestResult:
    kind: RequestKind
    sends: list[Send]
    latency: float | None = None  # seconds from the send to its ACK/NACK
    error: str = ""  # a NACK's error detail


# Sync states of one resource type of one proxy, as `istioctl proxy-status` names them (plus NACKED).
SYNCED = "SYNCED"  # the proxy ACKed the version discovery serves it now
STALE = "STALE"  # sent and not answered yet, or a newer version is being prepared for it
NOT_SENT = "NOT SENT"  # discovery has sent this type nothing on this stream
NACKED = "NACKED"  # the proxy refused the latest version (and keeps running its last good one)


@dataclass(frozen=True)
class TypeSync:
    """Where one resource type of one proxy stands."""

    status: str
    current: str  # the version discovery serves this node now ("" when none)
    sent: str  # the version last sent on this stream ("" when none)
    acked: str  # the version the proxy ACKed (or subscribed with)
    error: str = ""  # a NACK's error detail


@dataclass
class _TypeState:
    subscribed: bool = False
    sent_version: str | None = None  # None: nothing sent on this stream yet
    sent_nonce: str = ""
    sent_at: float = 0.0
    answered: bool = True  # the latest send was ACKed or NACKed
    acked_version: str = ""
    nack_error: str = ""


@dataclass
class StreamState:
    """Versions, nonces and acknowledgements of one stream."""

    new_nonce: Callable[[], str]
    node: discovery_pb2.Node | None = None
    versions: dict[str, str] = field(default_factory=dict)  # current version per type for this node
    _types: dict[str, _TypeState] = field(default_factory=lambda: {t: _TypeState() for t in PUSH_ORDER})

    def on_request(self, request: discovery_pb2.DiscoveryRequest, now: float) -> RequestResult:
        """One request from the agent → what it means and what to send."""
        if self.node is None:
            if not request.node.id:
                raise ProtocolError("the first request on a stream must carry node.id (\"<pod>.<namespace>\")")
            if request.node.pod_ip:
                try:
                    ipaddress.ip_address(request.node.pod_ip)
                except ValueError:
                    raise ProtocolError(f"node.pod_ip: not an IP address: {request.node.pod_ip!r}") from None
            self.node = request.node
        state = self._types.get(request.type_url)
        if state is None:
            raise ProtocolError(f"unknown type_url {request.type_url!r}; known: {', '.join(PUSH_ORDER)}")
        if not request.response_nonce:
            state.subscribed = True
            state.acked_version = request.version_info
            sends = self._maybe_send(request.type_url, state, now, have=request.version_info)
            if not sends:
                state.sent_version = request.version_info
            return RequestResult(RequestKind.SUBSCRIBE, sends)
        if request.response_nonce != state.sent_nonce:
            return RequestResult(RequestKind.STALE, [])
        latency = now - state.sent_at if not state.answered else None
        state.answered = True
        if request.HasField("error_detail") and (request.error_detail.code or request.error_detail.message):
            state.nack_error = request.error_detail.message
            return RequestResult(RequestKind.NACK, [], latency, request.error_detail.message)
        state.acked_version = request.version_info
        state.nack_error = ""
        return RequestResult(RequestKind.ACK, [], latency)

    def on_versions(self, versions: Mapping[str, str], now: float) -> list[Send]:
        """New config for this node: the subscribed types whose version changed, in push order."""
        self.versions = dict(versions)
        sends = []
        for type_url in PUSH_ORDER:
            state = self._types[type_url]
            if state.subscribed:
                sends.extend(self._maybe_send(type_url, state, now, have=state.sent_version))
        return sends

    def _maybe_send(self, type_url: str, state: _TypeState, now: float, *, have: str | None) -> list[Send]:
        current = self.versions.get(type_url)
        if current is None or current == have:
            return []
        state.sent_version = current
        state.sent_nonce = self.new_nonce()
        state.sent_at = now
        state.answered = False
        return [Send(type_url, current, state.sent_nonce)]

    def acked_version(self, type_url: str) -> str:
        return self._types[type_url].acked_version

    def nack_error(self, type_url: str) -> str:
        return self._types[type_url].nack_error

    def sync(self, type_url: str) -> TypeSync:
        """The sync state of one type, for /debug/syncz."""
        state = self._types[type_url]
        current = self.versions.get(type_url, "")
        sent = state.sent_version or ""
        if not state.answered:
            status = STALE
        elif state.nack_error:
            status = NACKED
        elif state.sent_version is None or not current:
            status = NOT_SENT
        elif state.acked_version == current:
            status = SYNCED
        else:
            status = STALE
        return TypeSync(status, current, sent, state.acked_version, state.nack_error)

    def in_sync(self) -> bool:
        """Every subscribed type ACKed at its current version."""
        return all(
            s.acked_version == self.versions.get(t) for t, s in self._types.items() if s.subscribed
        )
