"""The `local` fixture: a `meshctl local` cluster with its own state directory and prefix, always
taken down and checked to be gone (root)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshbox.cluster.host import ProcessRef, alive

MESHCTL = str(Path(sys.executable).parent / "meshctl")


@dataclass
class Local:
    """A meshctl local cluster with its own state directory and prefix."""

    state: Path
    prefix: str

    def run(self, *args: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([MESHCTL, "local", "--state-dir", str(self.state), *args], capture_output=True,
                                text=True, input=input_text, timeout=120, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"meshctl local {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def netns(self) -> list[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        return [line.split()[0] for line in out.splitlines() if line.startswith(f"{self.prefix}-")]

    def pod(self, app: str) -> str:
        return self.run("get", "pods", "-l", f"app={app}", "-o", "jsonpath={.items[0].metadata.name}").stdout

    def processes(self) -> list[tuple[int, int]]:
        """(PID, start time) of the processes the state records."""
        try:
            ledger = json.loads((self.state / "state.json").read_text())["ledger"]
        except FileNotFoundError:
            return []
        return [(e["pid"], e["start"]) for e in ledger if e["type"] == "process"]

    def assert_gone(self, processes: list[tuple[int, int]]) -> None:
        assert self.netns() == []
        assert not any(p.name.startswith(f"{self.prefix}-") for p in Path("/etc/netns").glob("*"))
        assert not self.state.exists()
        assert [pid for pid, start in processes if alive(ProcessRef(pid, start))] == []

    def state_json(self) -> dict[str, Any]:
        return json.loads((self.state / "state.json").read_text())  # type: ignore[no-any-return]

    def until(self, what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
        """Poll ``check`` (bounded) until it holds; AssertionError naming ``what`` otherwise."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout:.0f}s: {what}")
            time.sleep(0.2)


@pytest.fixture
def local(root: None, tmp_path: Path) -> Iterator[Local]:
    """A cluster that is always taken down, and checked to be gone."""
    cluster = Local(tmp_path / "state", "t" + uuid.uuid4().hex[:6])
    try:
        yield cluster
    finally:
        processes = cluster.processes()
        subprocess.run([MESHCTL, "local", "--state-dir", str(cluster.state), "down"], capture_output=True,
                       timeout=120, check=False)
        cluster.assert_gone(processes)
