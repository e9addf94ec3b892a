"""Can this process change iptables? (root or CAP_NET_ADMIN in the effective set)."""

from __future__ import annotations

from pathlib import Path

CAP_NET_ADMIN = 12


def effective_capabilities(status_text: str) -> int:
    """The CapEff bit mask from /proc/<pid>/status text (0 when absent)."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def has_net_admin() -> bool:
    """True when the current process holds CAP_NET_ADMIN."""
    caps = effective_capabilities(Path("/proc/self/status").read_text())
    return bool(caps >> CAP_NET_ADMIN & 1)
