"""The address a connection was sent to before iptables REDIRECT rewrote it (SO_ORIGINAL_DST)."""

from __future__ import annotations

import socket
from typing import Any

# linux/netfilter_ipv4.h SO_ORIGINAL_DST and linux/netfilter_ipv6/ip6_tables.h IP6T_SO_ORIGINAL_DST.
SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80


def original_dst(sock: Any) -> tuple[str, int] | None:
    """(ip, port) the client connected to, or None when the connection was not redirected by NAT."""
    try:
        if sock.family == socket.AF_INET:
            raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), int.from_bytes(raw[2:4], "big")
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), int.from_bytes(raw[2:4], "big")
    except OSError:
        return None
    return None
