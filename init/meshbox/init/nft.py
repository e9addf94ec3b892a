"""The nf_tables backend, for nodes whose kernel has no ip_tables: iptables-nft-restore.

One ``iptables-nft-restore --noflush`` run is one nf_tables transaction, so each table
changes atomically. The current meshbox state is read with ``iptables-nft-save`` and the
restore input removes it and adds the plan in the same transaction.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator, Sequence

from meshbox.api.commands import run_command
from meshbox.init.backend import BackendError, TableTransaction
from meshbox.init.plan import TABLE, Family, TablePlan
from meshbox.init.save_format import MeshboxState, meshbox_state, parse_nat_save, plan_state, transition_script

TOOL_TIMEOUT_SECONDS = 30.0
_EMPTY = MeshboxState(chains=[], jumps=[])


def _tool(family: Family, kind: str) -> str:
    return f"{'ip' if family is Family.IPV4 else 'ip6'}tables-nft-{kind}"


def _run(args: list[str], stdin: str | None = None) -> str:
    return run_command(args, input_text=stdin, timeout=TOOL_TIMEOUT_SECONDS, error=BackendError)


def read_state(family: Family) -> MeshboxState:
    """meshbox's part of the family's nf_tables nat table."""
    return meshbox_state(parse_nat_save(_run([_tool(family, "save"), "-t", TABLE])))


def _restore(family: Family, script: str) -> None:
    _run([_tool(family, "restore"), "--noflush"], stdin=script)


class NftTransaction:
    """The restore input that replaces meshbox's part of one table, and the state it replaces."""

    def __init__(self, family: Family, desired: TablePlan | None) -> None:
        self.family = family
        self._before = read_state(family)
        target = plan_state(desired) if desired is not None else _EMPTY
        self.changes = not (self._before.empty and target.empty)
        self._script = transition_script(self._before, target)

    def commit(self) -> None:
        if self.changes:
            try:
                _restore(self.family, self._script)
            except BackendError as exc:
                raise BackendError(f"nft {self.family.value} nat table: {exc}") from exc

    def rollback(self) -> None:
        if self.changes:
            try:
                _restore(self.family, transition_script(read_state(self.family), self._before))
            except BackendError as exc:
                raise BackendError(f"nft {self.family.value} nat table: rollback failed: {exc}") from exc

    def close(self) -> None:
        """Nothing is held: an unsent restore input is simply dropped."""


class NftBackend:
    """nf_tables through iptables-nft-restore / ip6tables-nft-restore."""

    name = "nft"

    def unavailable(self, family: Family) -> str | None:
        for kind in ("save", "restore"):
            if shutil.which(_tool(family, kind)) is None:
                return f"{_tool(family, kind)} is not installed"
        try:
            read_state(family)
        except BackendError as exc:
            return str(exc)
        return None

    def in_use(self, family: Family) -> bool:
        # iptables-nft-save creates nothing, so asking is free of side effects.
        return self.unavailable(family) is None

    def has_rules(self) -> bool:
        return any(chain.specs for chain in
                   parse_nat_save(_run([_tool(Family.IPV4, "save"), "-t", TABLE])).values())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        # iptables-nft takes no file lock: each restore is one nf_tables transaction, and a
        # concurrent change makes it fail whole (nothing applied), never half.
        yield

    def begin_all(self, work: Sequence[tuple[Family, TablePlan | None]]) -> list[TableTransaction]:
        return [NftTransaction(family, plan) for family, plan in work]
