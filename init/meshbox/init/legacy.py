"""The legacy x_tables backend, driven through python-iptables (libiptc).

libiptc works on a private copy of a table: every change below is made to that copy
(``autocommit=False``) and ``commit()`` hands the whole table to the kernel in one
replace, which the kernel applies atomically or not at all. ``close()`` without a
commit drops the copy. Like iptables itself, a run holds the xtables lock so no other
iptables command changes the table between our read and our commit.

When a run covers both IPv4 and IPv6, each table is worked on in its own forked worker
process: libxtables keeps one global registry of extensions, and once REDIRECT (libxt_NAT)
is loaded for one family it cannot be loaded for the other in the same process (re-running
the extension's init aborts the process with "target already registered"). The parent
then never loads an extension. A run over one table (the common IPv4-only pod) stays in
this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshbox.init.backend import BackendError, TableTransaction
from meshbox.init.iptc_import import import_iptc
from meshbox.init.plan import BUILTIN_CHAINS, CHAIN_PREFIX, TABLE, Family, TablePlan
from meshbox.init.xt_entries import EntryEncoder

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

LOCK_WAIT_SECONDS = 10.0
WORKER_TIMEOUT_SECONDS = 30.0


def _iptc() -> Any:
    """python-iptables, imported on first use (it loads libxtables, which may be missing)."""
    try:
        return import_iptc()
    except Exception as exc:  # the library raises several kinds when libxtables is missing
        raise BackendError(f"python-iptables cannot load libiptc/libxtables: {exc}") from exc


def _table(family: Family) -> Any:
    """A fresh private copy of the family's nat table (pending changes of an earlier copy are dropped)."""
    iptc = _iptc()
    try:
        table = (iptc.Table(TABLE, autocommit=False) if family is Family.IPV4
                 else iptc.Table6(TABLE, autocommit=False))
        table.refresh()
    except iptc.IPTCError as exc:
        raise BackendError(f"legacy {family.value} nat table: {exc}") from exc
    return table


def _raw(entry: Any) -> bytes:
    """A rule's kernel entry as bytes: a copy that outlives the table copy it came from."""
    return bytes(entry.rule)


def _reason(exc: Exception) -> str:
    # python-iptables puts libiptc's bytes message into its text as a bytes repr.
    return str(exc).replace("b'", "'")


def _buffer(raw: bytes) -> Any:
    return (ctypes.c_ubyte * len(raw)).from_buffer_copy(raw)


@dataclass
class _Snapshot:
    """meshbox's part of a table as raw entries, enough to put it back."""

    chains: dict[str, list[bytes]] = field(default_factory=dict)
    jumps: list[tuple[str, int, bytes]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.chains and not self.jumps


def _raw_entries(table: Any, chain: str) -> list[Any]:
    """A chain's entries as libiptc returns them: nothing decoded, so no extension is loaded."""
    entries = []
    entry = table.first_rule(chain)
    while entry:
        entries.append(entry)
        entry = table.next_rule(entry)
    return entries


def _snapshot(table: Any) -> _Snapshot:
    iptc = _iptc()
    snap = _Snapshot()
    for chain in table.chains:
        if chain.name.startswith(CHAIN_PREFIX):
            snap.chains[chain.name] = [_raw(entry) for entry in chain.rules]
    for name in BUILTIN_CHAINS:
        if not table.is_chain(name):
            continue
        # Look at jump targets on the raw entries; decode only meshbox's jumps.
        for index, entry in enumerate(_raw_entries(table, name)):
            if (table.get_target(entry) or b"").startswith(CHAIN_PREFIX.encode()):
                snap.jumps.append((name, index, _raw(table.create_rule(entry, iptc.Chain(table, name)))))
    return snap


def _remove_meshbox(table: Any, snap: _Snapshot) -> None:
    iptc = _iptc()
    for name in dict.fromkeys(chain for chain, _, _ in snap.jumps):
        chain = iptc.Chain(table, name)
        for entry in reversed(chain.rules):
            if entry.target.name.startswith(CHAIN_PREFIX):
                chain.delete_rule(entry)
    for name in snap.chains:
        table.flush_entries(name)
    for name in snap.chains:
        table.delete_chain(name)


def _add_plan(table: Any, plan: TablePlan) -> None:
    encoder = EntryEncoder(_iptc(), plan.family)
    for name in plan.chains:
        table.create_chain(name)
    for rule in plan.rules:
        table.append_entry(rule.chain, encoder.entry(rule))


def _add_snapshot(table: Any, snap: _Snapshot) -> None:
    for name in snap.chains:
        table.create_chain(name)
    for name, entries in snap.chains.items():
        for raw in entries:
            table.append_entry(name, _buffer(raw))
    for name, index, raw in sorted(snap.jumps, key=lambda jump: jump[1]):
        table.insert_entry(name, _buffer(raw), index)


class _TableCopy:
    """Pending changes to one nat table held in libiptc's private copy (in this process or a worker)."""

    def __init__(self, family: Family, desired: TablePlan | None) -> None:
        self.family = family
        iptc = _iptc()
        self._table = _table(family)
        try:
            self._before = _snapshot(self._table)
            self.changes = not (self._before.empty and desired is None)
            _remove_meshbox(self._table, self._before)
            if desired is not None:
                _add_plan(self._table, desired)
        except (iptc.IPTCError, iptc.XTablesError, ValueError) as exc:
            self.discard()
            raise BackendError(f"legacy {family.value} nat table: cannot build the rules: {exc}") from exc

    def commit(self) -> None:
        if not self.changes:
            return
        try:
            self._table.commit()
        except _iptc().IPTCError as exc:
            raise BackendError(f"legacy {self.family.value} nat table: the kernel refused the rules: "
                               f"{_reason(exc)}") from exc
        finally:
            self.discard()

    def rollback(self) -> None:
        if not self.changes:
            return
        iptc = _iptc()
        table = _table(self.family)
        try:
            _remove_meshbox(table, _snapshot(table))
            _add_snapshot(table, self._before)
            table.commit()
        except iptc.IPTCError as exc:
            raise BackendError(f"legacy {self.family.value} nat table: rollback failed: {exc}") from exc
        finally:
            table.close()

    def discard(self) -> None:
        # Frees the private copy without reading the table again (refresh() would).
        self._table.close()

    def close(self) -> None:
        self.discard()


def _worker(conn: Connection, family: Family, desired: TablePlan | None) -> None:
    """Body of the per-table worker process: prepare, then obey commit / rollback / done."""
    try:
        copy = _TableCopy(family, desired)
    except BackendError as exc:
        conn.send(("error", str(exc)))
        return
    conn.send(("ready", copy.changes))
    while True:
        try:
            command = conn.recv()
        except EOFError:  # the parent went away: drop whatever is pending
            copy.discard()
            return
        if command == "done":
            copy.discard()
            return
        try:
            copy.commit() if command == "commit" else copy.rollback()
        except BackendError as exc:
            conn.send(("error", str(exc)))
            return
        conn.send(("ok", ""))
        if command == "rollback":
            return


class LegacyTransaction:
    """One nat table's pending changes, held by a worker process until it is closed."""

    def __init__(self, family: Family, desired: TablePlan | None) -> None:
        self.family = family
        # Imported here: only dual-stack runs fork workers, and the import is start-up time.
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_worker, args=(child, family, desired), daemon=True,
                                        name=f"meshbox-init-{family.value}")
        self._process.start()
        child.close()
        kind, value = self._receive()
        if kind == "error":
            self.close()
            raise BackendError(str(value))
        self.changes = bool(value)

    def _receive(self) -> tuple[str, object]:
        if not self._conn.poll(WORKER_TIMEOUT_SECONDS):
            raise BackendError(f"legacy {self.family.value} worker did not answer in {WORKER_TIMEOUT_SECONDS:.0f}s")
        try:
            kind, value = self._conn.recv()
        except EOFError:
            raise BackendError(f"legacy {self.family.value} worker exited unexpectedly "
                               f"(exit code {self._process.exitcode})") from None
        return kind, value

    def _ask(self, command: str) -> None:
        try:
            self._conn.send(command)
        except OSError:
            raise BackendError(f"legacy {self.family.value} worker is gone") from None
        kind, value = self._receive()
        if kind == "error":
            self.close()
            raise BackendError(str(value))

    def commit(self) -> None:
        self._ask("commit")

    def rollback(self) -> None:
        self._ask("rollback")
        self.close()

    def close(self) -> None:
        """Let the worker exit (it drops anything uncommitted) and reap it."""
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send("done")
            self._process.join(WORKER_TIMEOUT_SECONDS)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._conn.close()


def _lock_path() -> str:
    # The path iptables itself locks (XTABLES_LOCKFILE overrides it there too).
    return os.environ.get("XTABLES_LOCKFILE", "/run/xtables.lock")


class LegacyBackend:
    """x_tables through python-iptables (the kernel's ip_tables / ip6_tables)."""

    name = "legacy"

    def unavailable(self, family: Family) -> str | None:
        try:
            _table(family)
        except BackendError as exc:
            return str(exc)
        return None

    def in_use(self, family: Family) -> bool:
        # Reading the table through libiptc would create it in this namespace; the kernel's
        # list of instantiated tables does not.
        names = Path(f"/proc/net/{'ip' if family is Family.IPV4 else 'ip6'}_tables_names")
        try:
            return TABLE in names.read_text().split()
        except OSError:
            return False

    def has_rules(self) -> bool:
        table = _table(Family.IPV4)
        # first_rule reads the raw entry without decoding it, so no extension gets loaded here.
        return any(table.first_rule(chain.name) for chain in table.chains)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        path = _lock_path()
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            raise BackendError(f"cannot open the xtables lock {path}: {exc.strerror}") from exc
        try:
            deadline = time.monotonic() + LOCK_WAIT_SECONDS
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                        raise BackendError(f"another iptables user holds {path} for more than "
                                           f"{LOCK_WAIT_SECONDS:.0f}s") from exc
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    def begin_all(self, work: Sequence[tuple[Family, TablePlan | None]]) -> list[TableTransaction]:
        """One table: worked on in this process. Several: one forked worker each (see module doc)."""
        if len(work) == 1:
            return [_TableCopy(*work[0])]
        prepared: list[TableTransaction] = []
        try:
            for family, plan in work:
                prepared.append(LegacyTransaction(family, plan))
        except BaseException:
            for transaction in prepared:
                transaction.close()
            raise
        return prepared
