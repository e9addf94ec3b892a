"""Run inside a test namespace: do EntryEncoder's entries equal the ones python-iptables' Rule API builds?

``compare_entries.py 4|6`` (one family per process: libxtables loads REDIRECT for one family
only). For several plans it builds every rule twice — with ``EntryEncoder`` and with the
documented Rule API (create_match, attribute assignment, create_target, final_check,
``Rule.rule``) — and prints JSON: the number of rules compared and the ones that differ.
The Rule API looks jump targets up as chains of the nat table, so the chains are created first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from meshbox.api.defaults import default_mesh_config
from meshbox.init.iptc_import import import_iptc
from meshbox.init.options import FlagValues, capture_options
from meshbox.init.plan import IN_REDIRECT, INBOUND, OUTPUT, REDIRECT, Family, Redirect, Rule, TablePlan, build_plan
from meshbox.init.save_format import rule_spec
from meshbox.init.xt_entries import EntryEncoder

FLAG_SETS = [
    FlagValues(outbound_port="15001", proxy_uids="1337"),
    FlagValues(inbound_port="15006", proxy_uids="1337,1338", proxy_gids="1337", inbound_ports="8080,9090",
               outbound_cidrs="10.0.0.0/8,fd00::/8", exclude_outbound_cidrs="10.1.0.0/16,fd00:1::/32",
               exclude_outbound_ports="3306", include_outbound_ports="443,8443"),
    FlagValues(inbound_ports="*", exclude_inbound_ports="22,9090", outbound_cidrs=""),
]


def reference(iptc: Any, rule: Rule, family: Family) -> bytes:
    """The entry as python-iptables' documented Rule API builds it."""
    entry = iptc.Rule() if family is Family.IPV4 else iptc.Rule6()
    entry.protocol = "tcp"
    if rule.destination is not None:
        entry.dst = ("!" if rule.not_destination else "") + rule.destination
    if rule.out_interface is not None:
        entry.out_interface = rule.out_interface
    if rule.dport is not None:
        entry.create_match("tcp").dport = str(rule.dport)
    if rule.uid_owner is not None:
        entry.create_match("owner").uid_owner = str(rule.uid_owner)
    if rule.gid_owner is not None:
        entry.create_match("owner").gid_owner = str(rule.gid_owner)
    entry.create_match("comment").comment = rule.comment
    if isinstance(rule.target, Redirect):
        entry.create_target("REDIRECT").to_ports = str(rule.target.to_port)
    else:
        entry.create_target(rule.target)
    entry.final_check()
    return bytes(entry.rule)


def compare(plans: list[TablePlan], family: Family) -> dict[str, Any]:
    iptc = import_iptc()
    compared, differing = 0, []
    for plan in plans:
        encoder = EntryEncoder(iptc, family)
        for rule in plan.rules:
            compared += 1
            if bytes(encoder.entry(rule)) != reference(iptc, rule, family):
                differing.append(f"-A {rule.chain} {rule_spec(rule)}")
    return {"compared": compared, "differing": differing}


if __name__ == "__main__":
    family = Family.IPV4 if sys.argv[1] == "4" else Family.IPV6
    tool = "iptables-legacy" if family is Family.IPV4 else "ip6tables-legacy"
    for chain in (INBOUND, IN_REDIRECT, OUTPUT, REDIRECT):
        subprocess.run([tool, "-t", "nat", "-N", chain], check=True)
    plans = [build_plan(capture_options(flags, default_mesh_config()), family) for flags in FLAG_SETS]
    print(json.dumps(compare(plans, family)))
