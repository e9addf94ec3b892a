"""meshbox-init's effect on the tables: idempotence, cleanup, bad flags, privileges, all-or-nothing.

Real iptables in network namespaces made by the test; the tables are compared with
iptables-save before and after (timestamps and counters removed).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BACKENDS = ["legacy", "nft"]
BAD_PLAN = str(Path(__file__).resolve().parent / "apply_bad_plan.py")


def _user_rules(pod: Any, backend: str) -> None:
    """Rules meshbox must never touch: a user chain and rules in the built-in chains around ours."""
    for family in ("ip", "ip6"):
        tool = f"{family}tables-{backend}"
        pod.ns.run(tool, "-t", "nat", "-N", "USER_CHAIN")
        pod.ns.run(tool, "-t", "nat", "-A", "USER_CHAIN", "-p", "udp", "-j", "RETURN")
        pod.ns.run(tool, "-t", "nat", "-A", "OUTPUT", "-p", "udp", "--dport", "53", "-j", "USER_CHAIN")
        pod.ns.run(tool, "-t", "nat", "-A", "PREROUTING", "-p", "udp", "-j", "RETURN")


def _saves(pod: Any, backend: str) -> tuple[str, str]:
    return pod.save(backend, 4), pod.save(backend, 6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_running_twice_gives_identical_rules_and_dry_run_matches(pod: Any, backend: str) -> None:
    """(6) Second run = same iptables-save; the dry run prints exactly the lines that end up in the table."""
    _user_rules(pod, backend)
    pod.init_ok("-p", "15001", "-u", "1337", "-x", "192.168.0.0/16", "--backend", backend)
    first = _saves(pod, backend)
    out = pod.init_ok("-p", "15001", "-u", "1337", "-x", "192.168.0.0/16", "--backend", backend)
    assert "already in place" not in out  # the rules were rewritten, not skipped...
    assert _saves(pod, backend) == first  # ...and came out identical
    dry = pod.init_ok("-p", "15001", "-u", "1337", "-x", "192.168.0.0/16", "--dry-run", "--ipv6", "on")
    plans = dry.split("COMMIT\n")
    for plan_text, saved in zip(plans, first, strict=False):
        planned = [line for line in plan_text.splitlines() if line.startswith(("-A", ":"))]
        saved_lines = saved.splitlines()
        assert planned and all(line in saved_lines for line in planned), (planned, saved_lines)
        assert [line for line in saved_lines if "MESHBOX" in line] == [
            line for line in saved_lines if line in planned]
    assert pod.lands("10.99.0.2:80") == ("pod", 15001, "10.99.0.2:80")


@pytest.mark.parametrize("backend", BACKENDS)
def test_cleanup_restores_the_tables_exactly(pod: Any, backend: str) -> None:
    """(7) --cleanup = as before meshbox ran, with the user's own chains and rules untouched."""
    _user_rules(pod, backend)
    before = _saves(pod, backend)
    pod.init_ok("-z", "15006", "--backend", backend)
    assert _saves(pod, backend) != before
    out = pod.init_ok("--cleanup", "--backend", backend)
    assert "removed" in out
    assert _saves(pod, backend) == before
    assert pod.lands("10.99.0.2:80")[:2] == ("peer", 80)
    again = pod.init_ok("--cleanup", "--backend", backend)
    assert "nothing changed" in again
    assert _saves(pod, backend) == before


def test_cleanup_auto_removes_rules_of_both_backends(pod: Any) -> None:
    pod.init_ok("--backend", "legacy")
    pod.init_ok("--backend", "nft")
    pod.init_ok("--cleanup")
    for backend in BACKENDS:
        assert "MESHBOX" not in "".join(_saves(pod, backend))


BAD_FLAGS = [
    (["-p", "70000"], "-p", "1..65535"),
    (["-z", "http"], "-z", "not a port"),
    (["-x", "*"], "-x", "'*' is not allowed"),
    (["-d", "*"], "-d", "'*' is not allowed"),
    (["-o", "80,*"], "-o", "'*' is not allowed"),
    (["-i", "10.0.0.300/8"], "-i", "not a CIDR"),
    (["-x", "fd00::/129"], "-x", "not a CIDR"),
    (["-u", "0"], "-u", "root"),
    (["-u", "proxy"], "-u", "numeric"),
    (["-b", "15020"], "-b", "agent status"),
    (["-q", "80", "-o", "80"], "-q", "also excluded by -o"),
    (["--backend", "iptables"], "--backend", "iptables"),
]


@pytest.mark.parametrize(("args", "flag", "why"), BAD_FLAGS, ids=[" ".join(a) for a, _, _ in BAD_FLAGS])
def test_bad_flags_exit_2_naming_the_flag_and_change_nothing(pod: Any, args: list[str], flag: str,
                                                              why: str) -> None:
    """(8) A bad flag value: exit 2, the message names the flag, the previous rules keep working."""
    pod.init_ok("-z", "15006")
    before = _saves(pod, "legacy")
    done = pod.init("-p", "15001", *args)
    assert done.returncode == 2, done
    assert flag in done.stderr and why in done.stderr, done.stderr
    assert _saves(pod, "legacy") == before
    assert pod.lands("10.99.0.1:8080", ns=pod.peer, uid=0) == ("pod", 15006, "10.99.0.1:8080")


def test_bad_mesh_config_exits_2_and_changes_nothing(pod: Any, tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("ports:\n  outbound_capture: 70000\n")
    before = _saves(pod, "legacy")
    done = pod.init("--mesh-config", str(mesh))
    assert done.returncode == 2 and "--mesh-config" in done.stderr and "outbound_capture" in done.stderr
    assert _saves(pod, "legacy") == before


def test_without_net_admin_one_line_and_exit_1(pod: Any) -> None:
    before = _saves(pod, "legacy")
    done = pod.init("-p", "15001", "-u", "1337", uid=1000)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "NET_ADMIN" in done.stderr, done.stderr
    assert _saves(pod, "legacy") == before
    assert pod.init("-p", "15001", "-u", "1337", "--dry-run", uid=1000).returncode == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", ["4", "6"])
def test_kernel_refusal_part_way_leaves_every_table_as_it_was(pod: Any, backend: str, bad: str) -> None:
    """All or nothing: the kernel refuses one table at commit time (after the IPv4 table was
    committed, when bad = 6); both tables end up exactly as they were, and capture still works."""
    _user_rules(pod, backend)
    pod.init_ok("--backend", backend)
    before = _saves(pod, backend)
    done = pod.ns.run(sys.executable, BAD_PLAN, backend, bad, check=False)
    assert done.returncode == 3, done
    assert "refused" in done.stdout or "failed" in done.stdout
    if bad == "6":
        assert "rolled back" in done.stdout
    assert _saves(pod, backend) == before
    assert pod.lands("10.99.0.1:8080", ns=pod.peer, uid=0) == ("pod", 15001, "10.99.0.1:8080")


def test_good_plan_through_the_same_path_applies(pod: Any) -> None:
    """Control for the test above: the same script with nothing poisoned does change the tables."""
    before = _saves(pod, "legacy")
    done = pod.ns.run(sys.executable, BAD_PLAN, "legacy", "", check=False)
    assert done.returncode == 0 and "applied" in done.stdout
    assert _saves(pod, "legacy") != before
    assert pod.lands("10.99.0.1:8080", ns=pod.peer, uid=0) == ("pod", 15006, "10.99.0.1:8080")


def test_auto_backend_follows_a_namespace_that_already_uses_nft(pod: Any) -> None:
    """--backend auto: legacy in a fresh pod; nft once nft (and not legacy) already holds nat rules."""
    assert "(legacy backend)" in pod.init_ok()
    pod.init_ok("--cleanup")
    pod.ns.run("iptables-legacy", "-t", "nat", "-F")
    pod.ns.run("iptables-nft", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN")
    assert "(nft backend)" in pod.init_ok()
    assert pod.lands("10.99.0.2:80") == ("pod", 15001, "10.99.0.2:80")
    assert "MESHBOX" not in "".join(_saves(pod, "legacy"))


def test_cleanup_in_an_untouched_namespace_creates_nothing(netns: Any, uid1337_python: str) -> None:
    """--cleanup where meshbox never ran: no table appears (reading a legacy table would create it)."""
    ns = netns("fresh")
    done = ns.run(uid1337_python, str(Path(uid1337_python).parent / "meshbox-init"), "--cleanup")
    assert "nothing changed" in done.stdout
    assert ns.run("iptables-legacy-save").stdout == ""
    assert ns.run("ip6tables-legacy-save").stdout == ""
    assert ns.run("iptables-nft-save").stdout == ""
    assert ns.run("ip6tables-nft-save").stdout == ""


def test_legacy_run_instantiates_only_the_nat_tables(pod: Any) -> None:
    """The legacy backend touches only nat: filter, mangle, raw and security do not appear in the pod."""
    pod.init_ok("--backend", "legacy", "--ipv6", "on")
    pod.init_ok("--backend", "legacy", "--ipv6", "on")  # a re-run reads meshbox's rules back
    pod.init_ok("--cleanup", "--backend", "legacy")
    assert pod.ns.run("cat", "/proc/net/ip_tables_names").stdout.split() == ["nat"]
    assert pod.ns.run("cat", "/proc/net/ip6_tables_names").stdout.split() == ["nat"]


def test_legacy_run_waits_for_the_xtables_lock(pod: Any, tmp_path: Path) -> None:
    """Like iptables, the legacy backend holds the xtables lock: it cannot commit while another holder has it."""
    lock = tmp_path / "xtables.lock"
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        proc = pod.ns.popen("env", f"XTABLES_LOCKFILE={lock}", pod.python,
                            str(Path(pod.python).parent / "meshbox-init"), "--backend", "legacy",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        assert "MESHBOX" not in pod.save()
    finally:
        os.close(fd)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "MESHBOX" in pod.save()
