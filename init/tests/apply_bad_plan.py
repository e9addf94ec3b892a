"""Run inside a test namespace: apply a plan whose ``BAD`` families the kernel will refuse at commit.

``apply_bad_plan.py BACKEND BAD`` (BAD: "4", "6" or "46"). Good tables get the split-port plan
(-z 15006); a bad table gets the default plan plus a jump from POSTROUTING into the REDIRECT
chain, which passes every user-space check but which the kernel rejects (REDIRECT is only
valid in PREROUTING/OUTPUT). Prints the error and exits 3, or prints "applied" and exits 0.
"""

from __future__ import annotations

import sys

from meshbox.api.defaults import default_mesh_config
from meshbox.init import detect
from meshbox.init.backend import BackendError, run
from meshbox.init.options import FlagValues, capture_options
from meshbox.init.plan import REDIRECT, Family, Rule, TablePlan, build_plan


def plan(family: Family, bad: bool) -> TablePlan:
    if not bad:
        return build_plan(capture_options(FlagValues(inbound_port="15006"), default_mesh_config()), family)
    base = build_plan(capture_options(FlagValues(), default_mesh_config()), family)
    poison = Rule("POSTROUTING", REDIRECT, "meshbox test: the kernel refuses REDIRECT reached from POSTROUTING")
    return TablePlan(family, base.chains, (*base.rules, poison))


if __name__ == "__main__":
    backend, bad = detect.make(sys.argv[1]), sys.argv[2]
    try:
        run(backend, [(family, plan(family, str(family.version) in bad)) for family in Family])
    except BackendError as exc:
        print(exc)
        sys.exit(3)
    print("applied")
