"""Consistent hashing (lb_policy RING_HASH): the key a request hashes to (a header, a cookie or the
client's address) and a ring of points per endpoint (Envoy's ring hash: a key goes to the first
point at or after its hash, so adding or removing an endpoint moves only its share of keys)."""

from __future__ import annotations

import bisect
import random

# CPython's own BLAKE2, not hashlib: importing hashlib maps OpenSSL's libcrypto (3.4 MB resident) into
# every proxy, which never uses it otherwise.
from _blake2 import blake2b

from meshbox.proxy.upstream_hosts import UpstreamHost

HEADER = "header"
COOKIE = "cookie"
SOURCE_IP = "source_ip"
DEFAULT_RING_SIZE = 1024
MAX_RING_SIZE = 1 << 20


def hash64(data: bytes) -> int:
    """A 64-bit hash, stable across processes and runs (unlike ``hash``)."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


def cookie_value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of cookie ``name`` in the request's Cookie headers (RFC 6265 5.4 pairs), or None."""
    for n, v in headers:
        if n == b"cookie":
            for pair in v.split(b";"):
                key, eq, value = pair.strip().partition(b"=")
                if eq and key == name:
                    return value
    return None


def client_ip(remote: str | None) -> bytes | None:
    """The address part of ``ip:port`` / ``[ip6]:port``."""
    if not remote:
        return None
    host = remote.rpartition(":")[0]
    return host.strip("[]").encode() or None


class HashKey:
    """What a request is hashed on: ``kind`` HEADER / COOKIE (``name`` lower-case) or SOURCE_IP."""

    __slots__ = ("kind", "name")

    def __init__(self, kind: str, name: str = "") -> None:
        self.kind = kind
        # Header names are matched lower-case (as parsed); cookie names are case-sensitive (RFC 6265).
        self.name = (name if kind == COOKIE else name.lower()).encode()

    def of(self, headers: list[tuple[bytes, bytes]], remote: str | None) -> bytes | None:
        """The request's key, or None when it has none (the request is then balanced at random)."""
        if self.kind == SOURCE_IP:
            return client_ip(remote)
        if self.kind == COOKIE:
            return cookie_value(headers, self.name)
        name = self.name
        for n, v in headers:
            if n == name:
                return v
        return None


class HashRing:
    """Points on a 64-bit ring, each owned by an endpoint, in proportion to the endpoints' weights."""

    __slots__ = ("hosts", "owners", "points")

    def __init__(self, hosts: list[UpstreamHost], weights: list[int], minimum_size: int = DEFAULT_RING_SIZE) -> None:
        self.hosts = hosts
        size = min(max(minimum_size or DEFAULT_RING_SIZE, len(hosts)), MAX_RING_SIZE)
        total = sum(weights) or 1
        # Points per unit of weight, rounded up to a power of two: an endpoint that joins or leaves
        # then seldom changes the others' points, so only its own share of keys moves.
        per_weight = 1 << max(0, (-(-size // total) - 1).bit_length())
        while per_weight > 1 and per_weight * total > MAX_RING_SIZE:
            per_weight >>= 1
        ring: list[tuple[int, int]] = []
        for index, (host, weight) in enumerate(zip(hosts, weights, strict=True)):
            count = per_weight * weight
            prefix = host.host.encode() + b"_"
            ring += [(hash64(prefix + b"%d" % i), index) for i in range(count)]
        ring.sort()
        self.points = [p for p, _ in ring]
        self.owners = [hosts[i] for _, i in ring]

    def pick(self, key: bytes | None, skip: set[UpstreamHost]) -> UpstreamHost | None:
        """The owner of the first point at or after the key's hash that is not in ``skip`` (all in
        ``skip``: the first owner anyway). No key: any endpoint not in ``skip``."""
        owners = self.owners
        n = len(owners)
        if not n:
            return None
        start = bisect.bisect_left(self.points, hash64(key)) if key is not None else random.randrange(n)
        for step in range(n if skip else 1):
            host = owners[(start + step) % n]
            if host not in skip:
                return host
        return owners[start % n]
