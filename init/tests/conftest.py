"""A two-namespace world for meshbox-init tests: a pod and a peer, joined by a veth pair.

pod  10.99.0.1/24  fd99::1/64   probe servers (the "sidecar" and the app) on 15001 15006 8080 9090
peer 10.99.0.2/24  fd99::2/64   probe server (a host outside the pod) on 80 81 8080
     10.98.0.5/32 (on lo, routed from the pod via 10.99.0.2)
"""

from __future__ import annotations

import json
import re
import select
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PROBE = Path(__file__).resolve().parent / "probe.py"
MESHBOX_INIT = str(Path(sys.executable).parent / "meshbox-init")
POD_IP, PEER_IP, FAR_IP = "10.99.0.1", "10.99.0.2", "10.98.0.5"
POD_IP6, PEER_IP6 = "fd99::1", "fd99::2"
APP_UID = 1000
POD_PORTS = (15001, 15006, 8080, 9090)
PEER_PORTS = (80, 81, 8080)
READY_TIMEOUT = 10.0


def wait_ready(proc: subprocess.Popen[bytes]) -> None:
    """Block until a probe server prints ``ready`` (bounded)."""
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    assert readable and proc.stdout.readline().strip() == b"ready", "probe server did not start"


@dataclass
class Pod:
    """The pod namespace, its peer, and helpers to run meshbox-init and dial from inside the pod."""

    ns: Any
    peer: Any
    python: str

    def init(self, *args: str, uid: int | None = None) -> subprocess.CompletedProcess[str]:
        """Run meshbox-init in the pod namespace (as root unless ``uid``)."""
        prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"] if uid else []
        return self.ns.run(*prefix, self.python, MESHBOX_INIT, *args, check=False)

    def init_ok(self, *args: str) -> str:
        done = self.init(*args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def dial(self, *targets: str, uid: int = APP_UID, gid: int | None = None, ns: Any = None) -> list[dict[str, Any]]:
        """Connect to each target from a process with this uid/gid; the answers, in order."""
        where = ns or self.ns
        done = where.run("setpriv", f"--reuid={uid}", f"--regid={gid if gid is not None else uid}",
                         "--clear-groups", "--", self.python, "-I", "-S", str(PROBE), "dial", *targets)
        return json.loads(done.stdout)

    def lands(self, target: str, **kwargs: Any) -> tuple[str, int, str | None] | str:
        """(server, port it landed on, original destination) for one connection, or the error."""
        answer = self.dial(target, **kwargs)[0]
        if "error" in answer:
            return str(answer["error"])
        return answer["server"], answer["port"], answer["orig"]

    def save(self, backend: str = "legacy", family: int = 4) -> str:
        return nat_save(self.ns, backend, family)


def nat_save(ns: Any, backend: str = "legacy", family: int = 4) -> str:
    """The namespace's nat table as iptables-save prints it, minus timestamps and counters."""
    tool = f"{'ip' if family == 4 else 'ip6'}tables-{backend}-save"
    text = ns.run(tool, "-t", "nat").stdout
    lines = [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in text.splitlines() if not line.startswith("#")]
    return "\n".join(lines)


@pytest.fixture
def pod(netns: Any, uid1337_python: str) -> Pod:
    pod_ns, peer_ns = netns("pod"), netns("peer")
    netns.link(pod_ns, f"{POD_IP}/24", peer_ns, f"{PEER_IP}/24")
    for ns, ip6 in ((pod_ns, POD_IP6), (peer_ns, PEER_IP6)):
        dev = ns.run("ip", "-o", "-4", "addr", "show", "scope", "global").stdout.split()[1]
        ns.run("ip", "-6", "addr", "add", f"{ip6}/64", "dev", dev, "nodad")
    peer_ns.run("ip", "addr", "add", f"{FAR_IP}/32", "dev", "lo")
    pod_ns.run("ip", "route", "add", "10.98.0.0/16", "via", PEER_IP)
    for ns, name, ports in ((pod_ns, "pod", POD_PORTS), (peer_ns, "peer", PEER_PORTS)):
        proc = ns.popen(uid1337_python, "-I", "-S", str(PROBE), "serve", name, *map(str, ports),
                        stdout=subprocess.PIPE)
        wait_ready(proc)
    return Pod(pod_ns, peer_ns, uid1337_python)
