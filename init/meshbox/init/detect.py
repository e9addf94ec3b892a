"""Facts about the pod's network namespace: which backend to use, whether the pod has IPv6."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from meshbox.init.backend import Backend, BackendError
from meshbox.init.legacy import LegacyBackend
from meshbox.init.nft import NftBackend
from meshbox.init.plan import Family

BACKENDS = ("auto", "legacy", "nft")
IF_INET6 = Path("/proc/net/if_inet6")
_SCOPE_LINK = 0x20
_SCOPE_HOST = 0x10


def choose(requested: str, legacy_reason: str | None, nft_reason: str | None,
           legacy_has_rules: bool, nft_has_rules: bool) -> str:
    """Pick a backend name; ``*_reason`` is None when that backend works here, else why not.

    auto prefers legacy (python-iptables) unless only nft works, or nft already holds rules in
    this namespace's nat table and legacy holds none (the node uses nft: follow it, so rules
    are not split between two backends).
    """
    reasons = {"legacy": legacy_reason, "nft": nft_reason}
    if requested != "auto":
        reason = reasons[requested]
        if reason is not None:
            raise BackendError(f"--backend {requested} cannot work here: {reason}")
        return requested
    if legacy_reason is None and nft_reason is None:
        return "nft" if nft_has_rules and not legacy_has_rules else "legacy"
    if legacy_reason is None:
        return "legacy"
    if nft_reason is None:
        return "nft"
    raise BackendError(f"no iptables backend works here: legacy: {legacy_reason}; nft: {nft_reason}")


def make(name: str) -> Backend:
    return LegacyBackend() if name == "legacy" else NftBackend()


def detect_backend(requested: str) -> Backend:
    """The backend to use for ``--backend requested`` (auto: see ``choose``)."""
    legacy, nft = LegacyBackend(), NftBackend()
    legacy_reason = legacy.unavailable(Family.IPV4) if requested in ("auto", "legacy") else None
    nft_reason = nft.unavailable(Family.IPV4) if requested in ("auto", "nft") else None
    both = requested == "auto" and legacy_reason is None and nft_reason is None
    name = choose(requested, legacy_reason, nft_reason,
                  legacy.has_rules() if both else False, nft.has_rules() if both else False)
    return legacy if name == "legacy" else nft


def ipv6_addresses(if_inet6: str) -> list[str]:
    """Global IPv6 addresses (not loopback, not link-local) from /proc/net/if_inet6 text."""
    found = []
    for line in if_inet6.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        address, scope, device = fields[0], int(fields[3], 16), fields[5]
        if device == "lo" or scope & (_SCOPE_LINK | _SCOPE_HOST):
            continue
        found.append(str(ipaddress.IPv6Address(int(address, 16))))
    return found


def pod_has_ipv6() -> bool:
    """True when this network namespace has a global IPv6 address (IPv6 disabled: False)."""
    try:
        text = IF_INET6.read_text()
    except OSError:
        return False
    return bool(ipv6_addresses(text))
