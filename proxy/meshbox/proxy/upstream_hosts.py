"""Upstream hosts that outlive config swaps: keep-alive pools and in-flight counts per address:port."""

from __future__ import annotations

from typing import Protocol


class PooledConnection(Protocol):
    """What the pool needs from an idle upstream connection."""

    closed: bool

    def close(self) -> None: ...


class UpstreamHost:
    """One endpoint address. ``idle`` holds kept-alive connections (last in, first out);
    ``active`` counts requests in flight (least-request balancing reads it)."""

    __slots__ = ("active", "address", "host", "idle", "peer_uri", "port", "retired", "tls_last")

    def __init__(self, address: str, port: int) -> None:
        self.address = address
        self.port = port
        self.host = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        self.idle: list[PooledConnection] = []
        self.active = 0
        # No config refers to this host any more: connections finishing on it are closed, not pooled.
        self.retired = False
        # The SPIFFE ID its server presented over mutual TLS (None: never reached over TLS).
        self.peer_uri: str | None = None
        # (client TLS context, SSL object) of the last TLS connection to it: its session is resumed next.
        self.tls_last: tuple[object, object] | None = None

    def __repr__(self) -> str:
        return f"UpstreamHost({self.host}, active={self.active}, idle={len(self.idle)})"


class HostRegistry:
    """address:port → UpstreamHost, shared by every config snapshot so pools survive a swap."""

    def __init__(self) -> None:
        self._hosts: dict[tuple[str, int], UpstreamHost] = {}

    def get(self, address: str, port: int) -> UpstreamHost:
        key = (address, port)
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = UpstreamHost(address, port)
        return host

    def retain(self, keep: set[tuple[str, int]]) -> None:
        """Forget hosts no config refers to any more, closing their idle connections."""
        for key in [k for k in self._hosts if k not in keep]:
            host = self._hosts.pop(key)
            host.retired = True
            for conn in host.idle:
                conn.close()
            host.idle.clear()

    def all(self) -> list[UpstreamHost]:
        return list(self._hosts.values())
