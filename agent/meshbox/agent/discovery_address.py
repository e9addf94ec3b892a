"""Checking a discovery server address (``host:port``, IPv6 as ``[addr]:port``)."""

from __future__ import annotations


class AddressError(ValueError):
    """A discovery address that is not host:port."""


def check_address(address: str) -> tuple[str, int]:
    """Split ``address`` into (host, port); raises AddressError saying what is wrong."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise AddressError(f"discovery address {address!r} must be HOST:PORT, e.g. meshbox-discovery:15010")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise AddressError(f"discovery address {address!r}: an IPv6 host is written [addr]:port")
        host = host[1:-1]
    elif ":" in host:
        raise AddressError(f"discovery address {address!r}: write an IPv6 host in brackets, [addr]:port")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise AddressError(f"discovery address {address!r}: port must be 1..65535, got {port_text!r}")
    return host, int(port_text)
