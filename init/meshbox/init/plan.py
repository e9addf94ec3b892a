"""The rule plan: which chains and rules meshbox puts in the nat table, and why.

Pure data built from CaptureOptions; backends turn it into kernel state and
``save_format`` turns it into iptables-save text. Every rule carries a comment
saying why it exists (it shows up in ``iptables-save`` on the node).

Layout (nat table, per IP family):

    PREROUTING  -p tcp -> MESHBOX_INBOUND       (only when inbound capture is on)
    OUTPUT      -p tcp -> MESHBOX_OUTPUT
    MESHBOX_INBOUND      RETURN for the sidecar's own ports and -d ports, then
                         -> MESHBOX_IN_REDIRECT (all ports, or only the -b list)
    MESHBOX_IN_REDIRECT  REDIRECT to the inbound capture port
    MESHBOX_OUTPUT       proxy -> own pod IP over lo (Service VIP to itself) -> MESHBOX_INBOUND;
                         RETURN for the proxy's UIDs/GIDs, for lo, -o ports;
                         -q ports -> MESHBOX_REDIRECT; RETURN for -x CIDRs;
                         -> MESHBOX_REDIRECT (all, or only the -i CIDRs)
    MESHBOX_REDIRECT     REDIRECT to the outbound capture port
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meshbox.init.options import ALL, CaptureOptions

CHAIN_PREFIX = "MESHBOX_"
INBOUND = "MESHBOX_INBOUND"
IN_REDIRECT = "MESHBOX_IN_REDIRECT"
OUTPUT = "MESHBOX_OUTPUT"
REDIRECT = "MESHBOX_REDIRECT"
BUILTIN_CHAINS = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")
RETURN = "RETURN"
TABLE = "nat"


class Family(enum.Enum):
    """IP family; each has its own nat table (iptables / ip6tables)."""

    IPV4 = "IPv4"
    IPV6 = "IPv6"

    @property
    def loopback(self) -> str:
        """The loopback network in iptables-save spelling."""
        return "127.0.0.0/8" if self is Family.IPV4 else "::1/128"

    @property
    def version(self) -> int:
        return 4 if self is Family.IPV4 else 6


@dataclass(frozen=True)
class Redirect:
    """The REDIRECT target: hand the connection to a local port, keeping the original destination."""

    to_port: int


@dataclass(frozen=True)
class Rule:
    """One TCP rule (every meshbox rule matches ``-p tcp``) in a nat chain."""

    chain: str
    target: str | Redirect
    comment: str
    destination: str | None = None
    not_destination: bool = False
    out_interface: str | None = None
    dport: int | None = None
    uid_owner: int | None = None
    gid_owner: int | None = None

    def __post_init__(self) -> None:
        # iptables-save escapes these and not every restore parses the escapes back.
        bad = [ch for ch in self.comment if ch in "\"'\\\n"]
        if bad:
            raise ValueError(f"rule comment must not contain {bad[0]!r}: {self.comment!r}")
        if len(self.comment) > 255:
            raise ValueError(f"rule comment longer than 255 characters: {self.comment!r}")


@dataclass(frozen=True)
class TablePlan:
    """Chains to create and rules to add (rules in built-in chains are appended jumps)."""

    family: Family
    chains: tuple[str, ...]
    rules: tuple[Rule, ...]

    def rules_in(self, chain: str) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if rule.chain == chain)

    @property
    def jumps(self) -> tuple[Rule, ...]:
        """Rules in the kernel's built-in chains (the entry points into meshbox's chains)."""
        return tuple(rule for rule in self.rules if rule.chain in BUILTIN_CHAINS)


def _inbound_rules(options: CaptureOptions) -> list[Rule]:
    rules = [
        Rule(INBOUND, RETURN, f"meshbox: {own.role} port {own.port} belongs to the sidecar, never captured",
             dport=own.port)
        for own in options.own_ports
    ]
    if options.inbound_ports == ALL:
        rules += [Rule(INBOUND, RETURN, f"meshbox: inbound port {port} excluded by -d", dport=port)
                  for port in options.exclude_inbound_ports]
        rules.append(Rule(INBOUND, IN_REDIRECT, "meshbox: all other inbound TCP goes to the sidecar"))
    else:
        rules += [Rule(INBOUND, IN_REDIRECT, f"meshbox: inbound port {port} captured by -b", dport=port)
                  for port in options.inbound_ports if port not in options.exclude_inbound_ports]
    return rules


def _outbound_rules(options: CaptureOptions, family: Family) -> list[Rule]:
    rules: list[Rule] = []
    if options.captures_inbound:
        rules += [Rule(OUTPUT, INBOUND, f"meshbox: proxy (uid {uid}) calling its own pod IP through a Service "
                       "VIP goes to the inbound side", destination=family.loopback, not_destination=True,
                       out_interface="lo", uid_owner=uid)
                  for uid in options.proxy_uids]
        rules += [Rule(OUTPUT, INBOUND, f"meshbox: proxy (gid {gid}) calling its own pod IP through a Service "
                       "VIP goes to the inbound side", destination=family.loopback, not_destination=True,
                       out_interface="lo", gid_owner=gid)
                  for gid in options.proxy_gids]
    rules += [Rule(OUTPUT, RETURN, f"meshbox: the proxy own traffic (uid {uid}) is never redirected",
                   uid_owner=uid) for uid in options.proxy_uids]
    rules += [Rule(OUTPUT, RETURN, f"meshbox: the proxy own traffic (gid {gid}) is never redirected",
                   gid_owner=gid) for gid in options.proxy_gids]
    rules.append(Rule(OUTPUT, RETURN, "meshbox: app traffic over lo (localhost, own pod IP) stays local",
                      out_interface="lo"))
    rules += [Rule(OUTPUT, RETURN, f"meshbox: outbound port {port} excluded by -o", dport=port)
              for port in options.exclude_outbound_ports]
    rules += [Rule(OUTPUT, REDIRECT, f"meshbox: outbound port {port} always captured (-q)", dport=port)
              for port in options.include_outbound_ports]
    rules += [Rule(OUTPUT, RETURN, f"meshbox: outbound CIDR {net} excluded by -x", destination=str(net))
              for net in options.exclude_outbound_cidrs if net.version == family.version]
    if options.outbound_cidrs == ALL:
        rules.append(Rule(OUTPUT, REDIRECT, "meshbox: all other outbound TCP goes to the sidecar"))
    else:
        rules += [Rule(OUTPUT, REDIRECT, f"meshbox: outbound CIDR {net} captured by -i", destination=str(net))
                  for net in options.outbound_cidrs if net.version == family.version]
    return rules


def build_plan(options: CaptureOptions, family: Family) -> TablePlan:
    """The nat-table plan for one IP family."""
    rules: list[Rule] = []
    if options.captures_inbound:
        rules.append(Rule("PREROUTING", INBOUND, "meshbox: inbound TCP to the pod is checked for capture"))
    rules.append(Rule("OUTPUT", OUTPUT, "meshbox: outbound TCP from the pod is checked for capture"))
    rules += _inbound_rules(options)
    rules.append(Rule(IN_REDIRECT, Redirect(options.inbound_port),
                      f"meshbox: hand inbound TCP to the sidecar on port {options.inbound_port}"))
    rules += _outbound_rules(options, family)
    rules.append(Rule(REDIRECT, Redirect(options.outbound_port),
                      f"meshbox: hand outbound TCP to the sidecar on port {options.outbound_port}"))
    return TablePlan(family=family, chains=(INBOUND, IN_REDIRECT, OUTPUT, REDIRECT), rules=tuple(rules))
