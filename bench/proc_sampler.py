"""CPU time and memory of a process tree, read from /proc (Linux only).

A server under benchmark may fork workers (nginx's master/worker, a proxy with
--concurrency N), so every reading covers the process and all its live descendants.
CPU time includes the reaped children's time (cutime/cstime), so a worker that exits
between two samples is still counted once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat the benchmarks use."""

    pid: int
    ppid: int
    user_ticks: int  # utime + cutime
    system_ticks: int  # stime + cstime


def read_stat(pid: int) -> ProcStat:
    """Parse /proc/<pid>/stat; the command name may contain spaces and parentheses."""
    raw = (PROC / str(pid) / "stat").read_text()
    # Fields after the last ')' start at field 3 (state); see proc(5).
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return ProcStat(pid=pid, ppid=int(fields[1]), user_ticks=utime + cutime, system_ticks=stime + cstime)


def _all_stats() -> Iterator[ProcStat]:
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                yield read_stat(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited while we were looking


def process_tree(pid: int) -> list[int]:
    """pid followed by all its live descendants; raises ProcessLookupError if pid is gone."""
    if not (PROC / str(pid)).exists():
        raise ProcessLookupError(f"no process {pid}")
    children: dict[int, list[int]] = {}
    for stat in _all_stats():
        children.setdefault(stat.ppid, []).append(stat.pid)
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by pid and its descendants."""
    user = system = 0
    for member in process_tree(pid):
        try:
            stat = read_stat(member)
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited after the tree was listed; its time moved to the parent's cutime
        user += stat.user_ticks
        system += stat.system_ticks
    return user / CLOCK_TICKS_PER_S, system / CLOCK_TICKS_PER_S


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by pid and its descendants."""
    return sum(tree_cpu_split(pid))


def _status_kb(pid: int, key: str) -> int:
    for line in (PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0  # kernel threads and zombies have no memory lines


def tree_rss_bytes(pid: int, *, peak: bool = False) -> int:
    """Resident memory of pid and its descendants (VmRSS, or VmHWM, the peak, when peak=True)."""
    key = "VmHWM" if peak else "VmRSS"
    total = 0
    for member in process_tree(pid):
        try:
            total += _status_kb(member, key) * 1024
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def tree_pss_bytes(pid: int) -> int:
    """Proportional set size of pid and its descendants: shared pages split among their users.

    Unlike RSS, the python binary, libc and libcrypto pages that every process maps count
    only in part, so this is what the tree really adds to the machine (smaps_rollup).
    """
    total = 0
    for member in process_tree(pid):
        try:
            lines = (PROC / str(member) / "smaps_rollup").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += sum(int(line.split()[1]) * 1024 for line in lines if line.startswith("Pss:"))
    return total


def pin_tree(pid: int, cpus: set[int]) -> None:
    """Move every thread of pid and its descendants to the given CPUs."""
    for member in process_tree(pid):
        try:
            tasks = [int(task.name) for task in (PROC / str(member) / "task").iterdir()]
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                os.sched_setaffinity(tid, cpus)
            except ProcessLookupError:
                continue


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (user, nice, system, irq, softirq, steal; /proc/stat)."""
    fields = (PROC / "stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS_PER_S
