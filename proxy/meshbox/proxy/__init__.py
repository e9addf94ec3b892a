"""meshbox proxy: the sidecar data plane (L7 HTTP/1.1 and L4 TCP on asyncio + uvloop)."""
