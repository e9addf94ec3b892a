"""iptables-save text: render a plan (for --dry-run and iptables-restore) and read a saved nat table.

Rules are rendered exactly as ``iptables-save`` prints them (option order, ``-m tcp`` after
``-p tcp``, comment quoting), so a dry run can be compared line by line with the table
after a real run. Pure functions only.
"""

from __future__ import annotations

import itertools
import shlex
import string
from dataclasses import dataclass, field

from meshbox.init.plan import BUILTIN_CHAINS, CHAIN_PREFIX, TABLE, Redirect, Rule, TablePlan

_NO_QUOTE = frozenset(string.ascii_letters + string.digits + "_-")


def quote_comment(text: str) -> str:
    """Quote a comment the way iptables-save does (bare when it is one plain word).

    Rule comments never hold quotes or backslashes (plan.Rule refuses them), so no escaping.
    """
    if text and all(ch in _NO_QUOTE for ch in text):
        return text
    return f'"{text}"'


def rule_spec(rule: Rule) -> str:
    """The rule's options after ``-A <chain>``, in iptables-save order."""
    parts: list[str] = []
    if rule.destination is not None:
        parts += (["!"] if rule.not_destination else []) + ["-d", rule.destination]
    if rule.out_interface is not None:
        parts += ["-o", rule.out_interface]
    parts += ["-p", "tcp"]
    if rule.dport is not None:
        parts += ["-m", "tcp", "--dport", str(rule.dport)]
    if rule.uid_owner is not None:
        parts += ["-m", "owner", "--uid-owner", str(rule.uid_owner)]
    if rule.gid_owner is not None:
        parts += ["-m", "owner", "--gid-owner", str(rule.gid_owner)]
    parts += ["-m", "comment", "--comment", quote_comment(rule.comment)]
    if isinstance(rule.target, Redirect):
        parts += ["-j", "REDIRECT", "--to-ports", str(rule.target.to_port)]
    else:
        parts += ["-j", rule.target]
    return " ".join(parts)


def _chain_order(plan: TablePlan) -> list[str]:
    # iptables-save lists built-in chains first, then user chains by name.
    return [*BUILTIN_CHAINS, *sorted(plan.chains)]


def plan_lines(plan: TablePlan) -> list[str]:
    """Chain declarations and ``-A`` lines of a plan, in iptables-save order."""
    lines = [f":{chain} - [0:0]" for chain in sorted(plan.chains)]
    for chain in _chain_order(plan):
        lines += [f"-A {chain} {rule_spec(rule)}" for rule in plan.rules_in(chain)]
    return lines


def render_plan(plan: TablePlan) -> str:
    """The plan as iptables-restore input (``--noflush``: only meshbox chains are touched)."""
    tool = "iptables-restore" if plan.family.version == 4 else "ip6tables-restore"
    body = "\n".join(plan_lines(plan))
    return f"# meshbox-init plan, {plan.family.value} ({tool} --noflush)\n*{TABLE}\n{body}\nCOMMIT\n"


def _jump_target(spec: str) -> str | None:
    try:
        words = shlex.split(spec)
    except ValueError:
        return None
    for flag, value in itertools.pairwise(words):
        if flag in ("-j", "-g", "--jump", "--goto"):
            return value
    return None


@dataclass
class SavedChain:
    """One chain of a saved table: its rule specs (text after ``-A <chain> ``) in order."""

    name: str
    specs: list[str] = field(default_factory=list)


@dataclass
class MeshboxState:
    """The part of a nat table meshbox owns: its chains and the jumps into them from built-in chains."""

    chains: list[SavedChain]
    jumps: list[tuple[str, int, str]]
    """(built-in chain, 0-based position in that chain, rule spec)."""

    @property
    def empty(self) -> bool:
        return not self.chains and not self.jumps


def parse_nat_save(text: str) -> dict[str, SavedChain]:
    """The chains of the ``*nat`` section of iptables-save output (empty when there is none)."""
    chains: dict[str, SavedChain] = {}
    in_nat = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            in_nat = line == f"*{TABLE}"
        elif not in_nat:
            continue
        elif line.startswith(":"):
            name = line[1:].split()[0]
            chains.setdefault(name, SavedChain(name))
        elif line.startswith("-A "):
            _, name, *rest = line.split(" ", 2)
            chains.setdefault(name, SavedChain(name)).specs.append(rest[0] if rest else "")
    return chains


def meshbox_state(chains: dict[str, SavedChain]) -> MeshboxState:
    """Pick out meshbox's chains and the built-in chains' jumps into them."""
    owned = [chain for name, chain in chains.items() if name.startswith(CHAIN_PREFIX)]
    jumps = []
    for name in BUILTIN_CHAINS:
        for index, spec in enumerate(chains.get(name, SavedChain(name)).specs):
            target = _jump_target(spec)
            if target is not None and target.startswith(CHAIN_PREFIX):
                jumps.append((name, index, spec))
    return MeshboxState(chains=owned, jumps=jumps)


def transition_script(current: MeshboxState, desired: MeshboxState) -> str:
    """iptables-restore ``--noflush`` input that turns ``current`` into ``desired`` in one commit.

    Declaring a chain flushes it; obsolete meshbox chains are flushed before any is deleted
    (they may refer to each other); desired jumps are re-inserted at their saved positions,
    in ascending order, so the built-in chains end up as they were.
    """
    desired_names = {chain.name for chain in desired.chains}
    lines = [f"*{TABLE}"]
    lines += [f":{chain.name} - [0:0]" for chain in desired.chains]
    lines += [f"-D {chain} {spec}" for chain, _, spec in current.jumps]
    obsolete = [chain.name for chain in current.chains if chain.name not in desired_names]
    lines += [f"-F {name}" for name in obsolete]
    lines += [f"-X {name}" for name in obsolete]
    for chain in desired.chains:
        lines += [f"-A {chain.name} {spec}" for spec in chain.specs]
    for chain_name, index, spec in sorted(desired.jumps, key=lambda jump: jump[1]):
        lines.append(f"-I {chain_name} {index + 1} {spec}" if index >= 0 else f"-A {chain_name} {spec}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def plan_state(plan: TablePlan) -> MeshboxState:
    """A plan as the MeshboxState it produces (jumps appended: position -1)."""
    chains = [SavedChain(name, [rule_spec(rule) for rule in plan.rules_in(name)]) for name in plan.chains]
    jumps = [(rule.chain, -1, rule_spec(rule)) for rule in plan.jumps]
    return MeshboxState(chains=chains, jumps=jumps)
