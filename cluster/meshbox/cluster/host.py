"""The edge of the local cluster: running ip/iptables, starting and stopping processes.

Processes are identified by PID *and* start time (field 22 of /proc/PID/stat), so a recycled
PID is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshbox.api.commands import run_command


class HostError(RuntimeError):
    """A command that builds the cluster failed; the message has the command and its stderr."""


def run(argv: Sequence[str], *, input_text: str | None = None, timeout: float = 30) -> str:
    """Run a command, return its stdout; HostError naming the command on failure."""
    return run_command(argv, input_text=input_text, timeout=timeout, error=HostError)


def run_quietly(argv: Sequence[str]) -> bool:
    """Run a cleanup command whose failure only means 'already gone'."""
    return subprocess.run(list(argv), capture_output=True, check=False).returncode == 0


@dataclass(frozen=True)
class ProcessRef:
    """A process we started: its PID and kernel start time."""

    pid: int
    start: int

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "start": self.start}

    @classmethod
    def from_json(cls, data: Mapping[str, int]) -> ProcessRef:
        return cls(int(data["pid"]), int(data["start"]))


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return text[text.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """Kernel start time of a PID, or None when it does not exist."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def alive(ref: ProcessRef) -> bool:
    """Whether the very process we started still runs (zombies count as exited)."""
    fields = _stat(ref.pid)
    return bool(fields) and fields[0] != "Z" and int(fields[19]) == ref.start  # type: ignore[index]


def spawn(argv: Sequence[str], *, log: Path, env: Mapping[str, str]) -> ProcessRef:
    """Start a detached process (own session) writing stdout and stderr to ``log``."""
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=dict(env), start_new_session=True, close_fds=True)
        except FileNotFoundError:
            raise HostError(f"{argv[0]}: not installed") from None
    began = start_time(proc.pid)
    return ProcessRef(proc.pid, began if began is not None else -1)


def _terminate(refs: Sequence[ProcessRef], grace: float, signal_one: Callable[[int, int], None]) -> None:
    """SIGTERM, then SIGKILL what is left after ``grace`` seconds; gone already is fine."""
    running = [r for r in refs if alive(r)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if sig is signal.SIGKILL:
            deadline = time.monotonic() + grace
            while any(alive(r) for r in running) and time.monotonic() < deadline:
                time.sleep(0.05)
        for ref in running:
            if alive(ref):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    signal_one(ref.pid, sig)


def stop(refs: Sequence[ProcessRef], grace: float = 5.0) -> None:
    """SIGTERM each process's group, SIGKILL what is left after ``grace`` seconds; gone already is fine."""
    _terminate(refs, grace, os.killpg)


def netns_pids(netns: str) -> list[int]:
    """PIDs of every process inside a network namespace (empty if it does not exist)."""
    result = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=False)
    return [int(p) for p in result.stdout.split()] if result.returncode == 0 else []


def kill_netns_processes(netns: str, grace: float = 3.0) -> None:
    """Stop whatever still runs in a namespace we made (e.g. started just before a crash)."""
    _terminate([ProcessRef(pid, start_time(pid) or -1) for pid in netns_pids(netns)], grace, os.kill)


def netns_exists(netns: str) -> bool:
    """Whether ``ip netns`` knows the namespace."""
    return Path("/run/netns", netns).exists() or Path("/var/run/netns", netns).exists()


def http_status(netns: str, url: str, timeout: float = 1.0) -> int:
    """HTTP status of a GET made inside a namespace (0 when nothing answers)."""
    result = subprocess.run(["ip", "netns", "exec", netns, "curl", "-s", "-o", "/dev/null", "-m", str(timeout),
                             "-w", "%{http_code}", url], capture_output=True, text=True, check=False)
    return int(result.stdout) if result.stdout.strip().isdigit() else 0


def tcp_open(netns: str, port: int) -> bool:
    """Whether something accepts TCP on 127.0.0.1:port inside a namespace."""
    script = f"exec 3<>/dev/tcp/127.0.0.1/{port}"
    return subprocess.run(["ip", "netns", "exec", netns, "bash", "-c", script], capture_output=True,
                          check=False, timeout=5).returncode == 0


def wait_for_exec(ref: ProcessRef, command: str, timeout: float = 10.0) -> None:
    """Wait until a process we started has exec'd ``command`` (its /proc comm); HostError if it dies or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(ref):
            raise HostError(f"process {ref.pid} exited before running {command}")
        try:
            if Path(f"/proc/{ref.pid}/comm").read_text().strip() == command:
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise HostError(f"process {ref.pid} did not run {command} within {timeout:.0f}s")
