"""The agent's side of the discovery stream as a state machine, with no I/O.

It turns DiscoveryResponses into the next ProxyConfig to apply and into the
DiscoveryRequests (ACK/NACK) to send back. The I/O edge (discovery_client.py) feeds it
responses, applies :meth:`DiscoveryStream.candidate` to the proxy and reports back with
:meth:`applied` or :meth:`rejected`.

Rules (xDS state of the world):
- nothing is applied until every type has been received at least once; from then on,
  every response yields a new candidate made of the latest resources of all four types;
- a candidate that applies ACKs every type whose latest response was not ACKed yet (so a
  type NACKed earlier because its partner type had not arrived is ACKed once it has);
- a rejected candidate NACKs the types received since the last attempt, echoing their
  nonces, with the last ACKed version and the error; the proxy keeps its last good config;
- on reconnect the first requests carry the last ACKed version of each type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import Message

from meshbox.agent.resources import TYPE_URLS, ResourceError, assemble, decode, short_name
from meshbox.api.v1 import discovery_pb2, proxy_config_pb2

INVALID_ARGUMENT = 3  # gRPC status code carried in a NACK's error_detail


@dataclass
class _TypeState:
    """What the agent knows about one resource type."""

    version: str = ""  # of the latest response that decoded
    nonce: str = ""  # of the latest response, decoded or not
    decoded_nonce: str = ""
    resources: list[Message] | None = None  # None until the first good response
    acked_version: str = ""
    acked_nonce: str = ""


@dataclass
class DiscoveryStream:
    """Per-type versions, nonces and resources; the last applied config."""

    node: discovery_pb2.Node
    _types: dict[str, _TypeState] = field(default_factory=lambda: {t: _TypeState() for t in TYPE_URLS})
    _pending: list[str] = field(default_factory=list)
    _applied: bytes | None = None

    def connect_requests(self) -> list[discovery_pb2.DiscoveryRequest]:
        """The requests that open a (new) stream: one per type, with the last ACKed version.

        Nonces belong to one stream, so they are forgotten here.
        """
        for state in self._types.values():
            state.nonce = state.decoded_nonce = state.acked_nonce = ""
        self._pending.clear()
        return [
            discovery_pb2.DiscoveryRequest(node=self.node, type_url=t, version_info=self._types[t].acked_version)
            for t in TYPE_URLS
        ]

    def receive(self, response: discovery_pb2.DiscoveryResponse) -> list[discovery_pb2.DiscoveryRequest]:
        """Take in one response; returns requests to send at once (a NACK when it cannot be decoded)."""
        state = self._types.get(response.type_url)
        if state is None:
            # A type we never asked for has no stream state to NACK against; answering with
            # an unknown type_url would only confuse the server, so it is reported and dropped.
            raise ResourceError(f"response for a type the agent did not request: {response.type_url!r}")
        state.nonce = response.nonce
        try:
            resources = decode(response)
        except ResourceError as exc:
            return [self._nack(response.type_url, str(exc))]
        state.version = response.version_info
        state.decoded_nonce = response.nonce
        state.resources = resources
        if response.type_url not in self._pending:
            self._pending.append(response.type_url)
        return []

    @property
    def complete(self) -> bool:
        """Whether every type has been received at least once."""
        return all(state.resources is not None for state in self._types.values())

    def candidate(self) -> proxy_config_pb2.ProxyConfig | None:
        """The config to apply now, or None (nothing new, or not every type received yet)."""
        if not self._pending or not self.complete:
            return None
        return assemble({t: state.resources or [] for t, state in self._types.items()})

    def is_applied(self, config: proxy_config_pb2.ProxyConfig) -> bool:
        """Whether ``config`` is exactly what the proxy already runs (e.g. resent after a reconnect)."""
        return self._applied is not None and config.SerializeToString(deterministic=True) == self._applied

    def applied(self, config: proxy_config_pb2.ProxyConfig) -> list[discovery_pb2.DiscoveryRequest]:
        """``config`` now runs in the proxy: ACK every type whose latest response is not ACKed yet."""
        self._applied = config.SerializeToString(deterministic=True)
        self._pending.clear()
        acks = []
        for type_url in TYPE_URLS:
            state = self._types[type_url]
            if state.nonce and state.nonce == state.decoded_nonce and state.nonce != state.acked_nonce:
                state.acked_version = state.version
                state.acked_nonce = state.nonce
                acks.append(
                    discovery_pb2.DiscoveryRequest(
                        node=self.node, type_url=type_url, version_info=state.version, response_nonce=state.nonce
                    )
                )
        return acks

    def rejected(self, error: str) -> list[discovery_pb2.DiscoveryRequest]:
        """The candidate was refused: NACK the types received since the last attempt."""
        nacks = [self._nack(t, error) for t in self._pending]
        self._pending.clear()
        return nacks

    def acked_versions(self) -> dict[str, str]:
        """Short type name → last ACKed version (for logs and the status page)."""
        return {short_name(t): s.acked_version for t, s in self._types.items()}

    def _nack(self, type_url: str, error: str) -> discovery_pb2.DiscoveryRequest:
        state = self._types[type_url]
        return discovery_pb2.DiscoveryRequest(
            node=self.node,
            type_url=type_url,
            version_info=state.acked_version,
            response_nonce=state.nonce,
            error_detail=discovery_pb2.ErrorDetail(code=INVALID_ARGUMENT, message=error),
        )
