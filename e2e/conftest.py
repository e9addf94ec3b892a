"""The e2e suite's cluster: a local mesh with its own state directory and namespace prefix.

Every command the suite runs goes through bash exactly as docs/tutorial.md writes it (with
MESHBOX_LOCAL_STATE and MESHBOX_LOCAL_PREFIX pointing at this suite's cluster), and is recorded so
test_tutorial.py can check that every command of the tutorial was exercised.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import need  # type: ignore[import-not-found]

E2E = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
RAN: set[str] = set()


def normalized(command: str) -> str:
    """A command with request ids replaced, as the tutorial writes them."""
    return UUID.sub("<id>", command.strip())


@dataclass
class Mesh:
    """One local cluster and a shell that talks to it."""

    state: Path
    prefix: str
    env: dict[str, str] = field(default_factory=dict)

    def sh(self, *lines: str, check: bool = True, timeout: float = 120) -> str:
        """Run tutorial lines in one bash (variables carry over); return stdout."""
        RAN.update(normalized(line) for line in lines)
        result = subprocess.run(["bash", "-c", "\n".join(lines)], cwd=E2E, env=self.env, capture_output=True,
                                text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{lines} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def netns(self) -> list[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        return [line.split()[0] for line in out.splitlines() if line.startswith(f"{self.prefix}-")]

    def processes(self) -> list[tuple[int, int]]:
        """(PID, start time) of every process the cluster's state records (empty when it has none)."""
        try:
            ledger = json.loads((self.state / "state.json").read_text())["ledger"]
        except FileNotFoundError:
            return []
        return [(e["pid"], e["start"]) for e in ledger if e["type"] == "process"]

    def leftovers(self, processes: list[tuple[int, int]] = ()) -> list[str]:  # type: ignore[assignment]
        """Anything of this cluster still on the machine: namespaces, /etc/netns dirs, processes, state."""
        found = [f"netns {n}" for n in self.netns()]
        found += [f"process {pid}" for pid, start in processes if _running(pid, start)]
        found += [f"/etc/netns/{p.name}" for p in Path("/etc/netns").glob(f"{self.prefix}-*")]
        ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
        found += [f"process {line.strip()}" for line in ps.splitlines()
                  if str(self.state) in line or f" {self.prefix}-" in line]
        if self.state.exists():
            found.append(f"state dir {self.state}")
        return found


def _running(pid: int, start: int) -> bool:
    """Whether that very process (PID and start time) still runs; zombies count as gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z" and int(fields[19]) == start


def make_mesh(tmp: Path) -> Mesh:
    need(os.geteuid() == 0, "the e2e suite needs root (network namespaces, iptables, setpriv)")
    for tool in ("ip", "iptables", "setpriv", "nsenter", "unshare", "curl"):
        need(subprocess.run(["which", tool], capture_output=True, check=False).returncode == 0,
             f"needs {tool} (make bootstrap installs it)")
    prefix = "e" + uuid.uuid4().hex[:6]
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               MESHBOX_LOCAL_STATE=str(tmp / "state"), MESHBOX_LOCAL_PREFIX=prefix)
    return Mesh(tmp / "state", prefix, env)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """A running local mesh for one test module; taken down and checked to be gone afterwards."""
    cluster = make_mesh(tmp_path_factory.mktemp("mesh"))
    try:
        cluster.sh("meshctl local up")
        yield cluster
    finally:
        processes = cluster.processes()
        cluster.sh("meshctl local down", check=False)
        left = cluster.leftovers(processes)
        assert not left, f"meshctl local down left things behind: {left}"


@pytest.fixture(scope="session")
def ran_commands() -> set[str]:
    """Every (normalized) command the e2e suite has run so far."""
    return RAN
