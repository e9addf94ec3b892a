"""Metadata exchange between sidecars over HTTP: who is on the other end of a request, for the metric labels.

The wire form is Istio's: ``x-envoy-peer-metadata`` holds a base64 ``google.protobuf.Struct`` with the
keys ``NAMESPACE``, ``WORKLOAD_NAME``, ``NAME`` (the pod) and ``LABELS`` (``app``,
``service.istio.io/canonical-name``), and ``x-envoy-peer-metadata-id`` the sender's node id. The Struct is
written and read here by hand (a few lines of the protobuf wire format) so the proxy loads no protobuf.

- A client-side proxy replaces whatever the app put in these request headers with its own (values
  built once per process), and reads the server's from the response, stripping it before the app sees it.
- A server-side proxy reads the client's from the request, strips it before the app, and answers with
  its own, replacing any the app put in its response.

What was read becomes the peer half of the request's labels (:func:`peer_labels`): ``source_*`` on the
server side; ``destination_*`` on the client side when discovery did not already know the endpoint's
workload. The metadata is only as trustworthy as the connection: over mutual TLS a peer whose
namespace differs from the one its certificate names is ignored (and counted); over plaintext it is
believed, as in Istio.
"""

from __future__ import annotations

import binascii

from meshbox.proxy.codec.events import Headers
from meshbox.proxy.exchange import Exchange
from meshbox.proxy.metrics import Stats
from meshbox.proxy.peer_identity import PeerIdentity
from meshbox.proxy.snapshot import INBOUND, Workload

METADATA = b"x-envoy-peer-metadata"
METADATA_ID = b"x-envoy-peer-metadata-id"
PEER_HEADERS = frozenset((METADATA, METADATA_ID))
UNKNOWN = "unknown"
DESTINATION = "destination"
# Longer values are not parsed (a real one is about 200 bytes); nor are label values this long.
MAX_VALUE = 4096
MAX_LABEL = 253
# The keys whose first present value is a workload's app, in meshbox.api.workload's order.
_APP_KEYS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")

Peer = tuple[str, str, str]  # (workload, namespace, app)
_PARSED: dict[bytes, Peer | None] = {}
_LABELS: dict[tuple[tuple[str, ...], Peer], tuple[str, ...]] = {}
# Mutual TLS identity → the namespace it names: a connection's peer repeats on every request over it.
_NAMESPACES: dict[str, str] = {}
_CACHE_MAX = 4096


class MalformedMetadata(ValueError):
    """A peer metadata value that is not a base64 Struct of string values (or nested Structs)."""


# -- the protobuf wire format of google.protobuf.Struct / Value --------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_struct(fields: dict[str, str | dict[str, str]]) -> bytes:
    """A Struct of string values and nested Structs of string values, serialized (keys sorted)."""
    out = []
    for key in sorted(fields):
        value = fields[key]
        # Value.string_value is field 3, Value.struct_value field 5.
        encoded = _field(3, value.encode()) if isinstance(value, str) else _field(5, encode_struct(dict(value)))
        out.append(_field(1, _field(1, key.encode()) + _field(2, encoded)))
    return b"".join(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise MalformedMetadata("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(data: bytes) -> list[tuple[int, bytes]]:
    """(field number, payload) of each length-delimited field; other wire types are skipped."""
    out: list[tuple[int, bytes]] = []
    at = 0
    while at < len(data):
        tag, at = _read_varint(data, at)
        wire = tag & 7
        if wire == 2:
            size, at = _read_varint(data, at)
            if at + size > len(data):
                raise MalformedMetadata("truncated field")
            out.append((tag >> 3, data[at:at + size]))
            at += size
        elif wire == 0:
            _, at = _read_varint(data, at)
        elif wire == 1 or wire == 5:
            at += 8 if wire == 1 else 4
        else:
            raise MalformedMetadata(f"wire type {wire}")
    if at != len(data):
        raise MalformedMetadata("truncated fixed-size field")
    return out


def decode_struct(data: bytes, depth: int = 0) -> dict[str, str | dict[str, str]]:
    """A serialized Struct: string values kept, one level of nested Structs kept, other values skipped."""
    out: dict[str, str | dict[str, str]] = {}
    for number, entry in _fields(data):
        if number != 1:
            continue
        key = ""
        value: str | dict[str, str] | None = None
        for inner, payload in _fields(entry):
            if inner == 1:
                key = payload.decode("utf-8", "replace")
            elif inner == 2:
                for kind, content in _fields(payload):
                    if kind == 3:
                        value = content.decode("utf-8", "replace")
                    elif kind == 5 and depth == 0:
                        value = {k: v for k, v in decode_struct(content, 1).items() if isinstance(v, str)}
        if value is not None:
            out[key] = value
    return out


# -- what the headers say --------------------------------------------------------------------------
def _label_value(value: object) -> str:
    if not isinstance(value, str) or not value:
        return UNKNOWN
    if len(value) > MAX_LABEL or not value.isprintable():
        raise MalformedMetadata("unprintable or overlong value")
    return value


def parse(value: bytes) -> Peer:
    """(workload, namespace, app) of an ``x-envoy-peer-metadata`` value; MalformedMetadata when it is not one."""
    if len(value) > MAX_VALUE:
        raise MalformedMetadata("too long")
    try:
        data = binascii.a2b_base64(value)
    except binascii.Error as exc:
        raise MalformedMetadata(f"not base64: {exc}") from None
    return parse_struct(data)


def parse_struct(data: bytes) -> Peer:
    """(workload, namespace, app) of a serialized metadata Struct; MalformedMetadata when it is not one."""
    fields = decode_struct(data)
    workload = _label_value(fields.get("WORKLOAD_NAME"))
    namespace = _label_value(fields.get("NAMESPACE"))
    if workload == UNKNOWN or namespace == UNKNOWN:
        raise MalformedMetadata("no WORKLOAD_NAME or NAMESPACE")
    labels = fields.get("LABELS")
    app = workload
    if isinstance(labels, dict):
        for key in _APP_KEYS:
            if labels.get(key):
                app = _label_value(labels[key])
                break
    return (workload, namespace, app)


def own_struct(workload: Workload, pod: str) -> bytes:
    """This proxy's metadata as a serialized Struct (empty when it does not know its own workload)."""
    if workload.name == UNKNOWN or workload.namespace == UNKNOWN:
        return b""
    fields: dict[str, str | dict[str, str]] = {
        "NAMESPACE": workload.namespace, "WORKLOAD_NAME": workload.name,
        "LABELS": {"app": workload.app, "service.istio.io/canonical-name": workload.app},
    }
    if pod:
        fields["NAME"] = pod
    return encode_struct(fields)


def own_headers(workload: Workload, pod: str, pod_ip: str | None) -> Headers:
    """This proxy's two headers (none when it does not know its own workload: nothing worth saying)."""
    struct = own_struct(workload, pod)
    if not struct:
        return []
    value = binascii.b2a_base64(struct, newline=False)
    node = f"sidecar~{pod_ip or ''}~{pod or workload.name}.{workload.namespace}~{workload.namespace}.svc.cluster.local"
    return [(METADATA, value), (METADATA_ID, node.encode())]


def peer_labels(labels: tuple[str, ...], peer: Peer) -> tuple[str, ...]:
    """Request labels (from ``reporter`` on, any number of them) with the peer's workload, namespace and
    app put in: the source on the server side, the destination on the client side unless already known."""
    key = (labels, peer)
    full = _LABELS.get(key)
    if full is None:
        if labels[0] == DESTINATION:
            full = (labels[0], *peer, *labels[4:])
        elif labels[4] == UNKNOWN:
            full = (*labels[:4], *peer, *labels[7:])
        else:
            full = labels
        if len(_LABELS) >= _CACHE_MAX:
            _LABELS.clear()
        _LABELS[key] = full
    return full


def namespace_of(spiffe_uri: str | None) -> str:
    """The namespace a SPIFFE ID names (``spiffe://<trust domain>/ns/<ns>/sa/<sa>``), else ""."""
    if not spiffe_uri:
        return ""
    parts = spiffe_uri.split("/")
    return parts[4] if len(parts) == 7 and parts[3] == "ns" and parts[5] == "sa" else ""


class PeerMetadata:
    """This proxy's end of the exchange: its own headers and the reading of the peer's."""

    __slots__ = ("own", "stats", "struct")

    def __init__(self, workload: Workload, pod: str, pod_ip: str | None, stats: Stats) -> None:
        self.own = own_headers(workload, pod, pod_ip)
        # The same, as the Struct a TCP connection's preamble carries (peer_exchange).
        self.struct = own_struct(workload, pod)
        self.stats = stats

    def request(self, ex: Exchange, headers: Headers, direction: str, peer: PeerIdentity | None) -> Headers:
        """The request headers to forward for ``ex``: on an inbound listener the client sidecar's metadata
        read into ``ex.peer`` and removed; on an outbound one the app's replaced by this proxy's."""
        if direction == INBOUND:
            headers, ex.peer = self.take(headers, peer.uri if peer is not None else None)
            return headers
        return self.replace(headers)

    def response(self, ex: Exchange, headers: Headers) -> Headers:
        """The response headers to forward for ``ex``: on an inbound listener the app's metadata replaced by
        this proxy's; on an outbound one the server sidecar's read into ``ex.peer`` and removed."""
        listener = ex.listener
        if listener is not None and listener.direction == INBOUND:
            return self.replace(headers)
        host = ex.host
        headers, ex.peer = self.take(headers, host.peer_uri if host is not None else None)
        return headers

    def replace(self, headers: Headers) -> Headers:
        """``headers`` with any peer headers (the app's: never believed) replaced by this proxy's."""
        for name, _ in headers:
            if name in PEER_HEADERS:
                headers = [h for h in headers if h[0] not in PEER_HEADERS]
                break
        if self.own:
            headers.extend(self.own)
        return headers

    def take(self, headers: Headers, peer_uri: str | None) -> tuple[Headers, Peer | None]:
        """``headers`` without the peer headers, and the peer they described (None: absent, malformed, or
        not in the namespace of the mutual TLS identity ``peer_uri``)."""
        value: bytes | None = None
        received = headers
        for name, _ in received:
            if name in PEER_HEADERS:
                headers = [h for h in received if h[0] not in PEER_HEADERS]
                for n, v in received:
                    if n == METADATA:
                        value = v
                        break
                break
        if value is None:
            return headers, None
        return headers, self.believed(self._parsed(value), peer_uri)

    def believed(self, peer: Peer | None, peer_uri: str | None) -> Peer | None:
        """``peer``, unless it claims another namespace than the mutual TLS identity ``peer_uri`` names."""
        if peer is not None and peer_uri is not None:
            namespace = _NAMESPACES.get(peer_uri)
            if namespace is None:
                if len(_NAMESPACES) >= _CACHE_MAX:
                    _NAMESPACES.clear()
                namespace = _NAMESPACES[peer_uri] = namespace_of(peer_uri)
            if namespace and namespace != peer[1]:
                self.stats.incr("peer_metadata_namespace_mismatch")
                return None
        return peer

    def _parsed(self, value: bytes) -> Peer | None:
        try:
            return _PARSED[value]
        except KeyError:
            pass
        try:
            peer: Peer | None = parse(value)
        except MalformedMetadata:
            self.stats.incr("peer_metadata_malformed")
            peer = None
        if len(_PARSED) >= _CACHE_MAX:
            _PARSED.clear()
        _PARSED[value] = peer
        return peer
