"""What a backend (legacy x_tables via python-iptables, or nft) provides, and the all-or-nothing apply.

Each IP family has its own nat table, and the kernel commits each table atomically. A run
over several tables therefore prepares every table first (any error: nothing is committed),
then commits them in turn; if a later commit fails, the tables already committed are put
back to the meshbox state they had before (compensation), so a failure leaves every table
as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from meshbox.init.plan import Family, TablePlan


class BackendError(RuntimeError):
    """Programming the tables failed; the message says which table and why."""


class TableTransaction(Protocol):
    """Pending changes to one nat table."""

    family: Family
    changes: bool
    """False when the table already is as desired (commit is then a no-op)."""

    def commit(self) -> None:
        """Apply the pending changes atomically (raise BackendError if the kernel refuses)."""

    def rollback(self) -> None:
        """After a commit: put meshbox's part of the table back as it was before."""

    def close(self) -> None:
        """Finish: drop anything not committed and release what the transaction holds."""


class Backend(Protocol):
    name: str

    def unavailable(self, family: Family) -> str | None:
        """None when this backend can program ``family``'s nat table here, else why not."""

    def in_use(self, family: Family) -> bool:
        """True when the family's nat table exists here, so it may hold meshbox rules (no side effects)."""

    def has_rules(self) -> bool:
        """True when this backend's IPv4 nat table holds any rule (used by --backend auto)."""

    def lock(self) -> AbstractContextManager[None]:
        """Held around a whole run (serialises with other iptables users where the backend needs it)."""

    def begin_all(self, work: Sequence[tuple[Family, TablePlan | None]]) -> list[TableTransaction]:
        """Prepare, for each table, replacing meshbox's part with the plan (None: remove it).

        Raises BackendError with nothing left pending when any table cannot be prepared.
        """


@dataclass(frozen=True)
class Outcome:
    """What a run changed: the families whose tables were committed with changes."""

    changed: tuple[Family, ...]


def _close_all(transactions: Sequence[TableTransaction]) -> None:
    for transaction in transactions:
        transaction.close()


def _commit_all(prepared: Sequence[TableTransaction]) -> None:
    committed: list[TableTransaction] = []
    for transaction in prepared:
        try:
            transaction.commit()
        except BackendError as exc:
            failures = []
            for done in reversed(committed):
                try:
                    done.rollback()
                except BackendError as rollback_exc:
                    failures.append(f"{done.family.value}: {rollback_exc}")
            if failures:
                raise BackendError(f"{exc}; rolling back the tables already programmed also failed "
                                   f"({'; '.join(failures)}): run meshbox-init --cleanup") from exc
            if committed:
                raise BackendError(f"{exc} (the {', '.join(t.family.value for t in committed)} rules "
                                   "were rolled back: nothing changed)") from exc
            raise
        committed.append(transaction)


def run(backend: Backend, work: Sequence[tuple[Family, TablePlan | None]]) -> Outcome:
    """Replace meshbox's part of each family's nat table with its plan, all or nothing."""
    with backend.lock():
        prepared = backend.begin_all(work)
        try:
            _commit_all(prepared)
        finally:
            _close_all(prepared)
    return Outcome(changed=tuple(t.family for t in prepared if t.changes))
