"""The exchange core's hook for inbound security: the client's identity on the access log record, and
the listener's authorization policies applied to the request (``authorization`` decides)."""

from __future__ import annotations

import sys

from meshbox.proxy.codec.events import RequestHead
from meshbox.proxy.exchange import Exchange
from meshbox.proxy.peer_identity import PeerIdentity
from meshbox.proxy.snapshot import ListenerRuntime


def inbound_request_check(peer: PeerIdentity | None, listener: ListenerRuntime, ex: Exchange,
                          head: RequestHead) -> bool:
    """Record the peer on ``ex``; True when the request is denied (after a stderr line saying why)."""
    if peer is not None:
        ex.downstream_peer_uri = peer.uri
        ex.downstream_tls_version = peer.tls_version
    authz = listener.authz
    if authz is None:
        return False
    from meshbox.proxy.authorization import Request  # loaded with the first listener that has policies

    method = head.method.decode("latin-1")
    path = head.target.decode("latin-1")
    reason = authz.check(Request(peer.principal if peer else "", peer.namespace if peer else "", listener.port,
                                 method, path, head.headers))
    if reason is None:
        return False
    print(f"meshbox-proxy: RBAC: access denied: {method} {path} from {ex.downstream_remote} "
          f"({peer.uri if peer else 'no peer certificate'}) to port {listener.port}: {reason}",
          file=sys.stderr, flush=True)
    return True
