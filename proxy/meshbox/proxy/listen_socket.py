"""Listening sockets made here rather than by the event loop from a host name.

Given a host, uvloop resolves it with getaddrinfo on libuv's thread pool, which starts four worker
threads (and glibc heaps for them) that the proxy never needs again. Binding the socket ourselves
keeps the process single-threaded.
"""

from __future__ import annotations

import socket


def listening_socket(host: str, port: int, *, reuse_port: bool = False, backlog: int = 1024) -> socket.socket:
    """A non-blocking TCP socket bound to host:port (an IP address; ``::`` is IPv6 only) and listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
