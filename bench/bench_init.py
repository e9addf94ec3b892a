"""The init benchmark of issue 4: programming the default rule set, meshbox-init vs iptables-restore.

Every measurement runs in a fresh network namespace (created here, removed right after, the
namespace's creation and removal not timed). Two rows:

1. In-process programming, meshbox vs iptables-restore. A worker process started with
   ``ip netns exec`` times only the programming:
   - ``meshbox``: build the plan for `-p 15001 -u 1337` and apply it with the legacy backend
     (python-iptables already imported, as after meshbox-init's start-up; timed: take the
     xtables lock, read the table, load the extensions, encode the rules, commit);
   - ``restore``: feed the same plan, rendered in iptables-save format, to
     ``iptables-legacy-restore --noflush`` (its process start included: that is what a shell
     init does, and a C tool has no separate start-up to leave out).
   Each worker checks that the 14 rules really landed.
2. Whole process: ``ip netns exec <ns> meshbox-init -p 15001 -u 1337 --backend legacy`` (Python
   interpreter start, imports, flag parsing, programming, printing the rules) against
   ``ip netns exec <ns> iptables-legacy-restore --noflush`` of the same rules. Python start-up
   has no counterpart in a C tool, so this row is held to an absolute budget of 500 ms and
   shows the ratio only for scale.
Rounds alternate the kinds; values are medians. Environment: MESHBOX_BENCH_INIT_ROUNDS
(default 15). Needs root.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

TARGET = 1.0
CLI_BUDGET_SECONDS = 0.5
TIMEOUT = 60.0
VENV_BIN = Path(sys.executable).parent
RESTORE = "iptables-legacy-restore"
RULES_EXPECTED = 14


def _plan_text() -> str:
    from meshbox.api.defaults import default_mesh_config
    from meshbox.init.options import FlagValues, capture_options
    from meshbox.init.plan import Family, build_plan
    from meshbox.init.save_format import render_plan

    options = capture_options(FlagValues(outbound_port="15001", proxy_uids="1337"), default_mesh_config())
    return render_plan(build_plan(options, Family.IPV4))


def _count_rules() -> int:
    saved = subprocess.run(["iptables-legacy-save", "-t", "nat"], capture_output=True, text=True, check=True)
    return sum(1 for line in saved.stdout.splitlines() if line.startswith("-A") and "meshbox" in line)


def _worker(kind: str) -> float:
    """Inside the namespace: program the default rules one way and return the seconds it took."""
    if kind == "meshbox":
        from meshbox.api.defaults import default_mesh_config
        from meshbox.init.backend import run
        from meshbox.init.iptc_import import import_iptc
        from meshbox.init.legacy import LegacyBackend
        from meshbox.init.options import FlagValues, capture_options
        from meshbox.init.plan import Family, build_plan

        import_iptc()  # loading python-iptables is start-up cost: the whole-process row has it
        start = time.perf_counter()
        options = capture_options(FlagValues(outbound_port="15001", proxy_uids="1337"), default_mesh_config())
        run(LegacyBackend(), [(Family.IPV4, build_plan(options, Family.IPV4))])
        elapsed = time.perf_counter() - start
    else:
        text = _plan_text()
        start = time.perf_counter()
        subprocess.run([RESTORE, "--noflush"], input=text, text=True, check=True, timeout=TIMEOUT)
        elapsed = time.perf_counter() - start
    rules = _count_rules()
    if rules != RULES_EXPECTED:
        raise RuntimeError(f"{kind}: expected {RULES_EXPECTED} meshbox rules, found {rules}")
    return elapsed


def _timed_in_fresh_namespace(name: str, command: list[str], stdin: str | None = None) -> tuple[float, str]:
    """Seconds ``ip netns exec <name> command`` took in a new namespace (creation and removal not timed)."""
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        start = time.perf_counter()
        done = subprocess.run(["ip", "netns", "exec", name, *command], input=stdin, capture_output=True,
                              text=True, timeout=TIMEOUT, check=False)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()}")
        return elapsed, done.stdout
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def _measure(kind: str, name: str) -> float:
    """In-process programming time reported by a worker in a fresh namespace (row 1)."""
    _, out = _timed_in_fresh_namespace(name, [sys.executable, __file__, "--worker", kind])
    return float(out.split()[-1])


def _measure_cli(name: str) -> float:
    """The whole meshbox-init process (row 2)."""
    elapsed, _ = _timed_in_fresh_namespace(name, [str(VENV_BIN / "meshbox-init"), "-p", "15001", "-u", "1337",
                                                  "--ipv6", "off", "--backend", "legacy"])
    return elapsed


def _measure_restore_process(name: str) -> float:
    """The whole iptables-legacy-restore process, same rules (row 2's baseline)."""
    elapsed, _ = _timed_in_fresh_namespace(name, [RESTORE, "--noflush"], stdin=_plan_text())
    return elapsed


def _row(metric: str, value: float, baseline: str, baseline_value: float, target: str,
         ok: bool) -> dict[str, object]:
    return {"bench": "init", "metric": metric, "value": value * 1000, "unit": "ms", "baseline": baseline,
            "baseline_value": baseline_value * 1000, "ratio": value / baseline_value, "target": target, "ok": ok}


def rows() -> list[dict[str, object]]:
    """Run the rounds (about 1 s each) and return the two rows."""
    if os.geteuid() != 0:
        raise PermissionError("bench_init needs root (network namespaces and iptables)")
    rounds = max(1, int(os.environ.get("MESHBOX_BENCH_INIT_ROUNDS", "15")))
    prefix = f"mbbench-init-{os.getpid()}"
    samples: dict[str, list[float]] = {"meshbox": [], "restore": [], "cli": [], "restore-process": []}
    measure: dict[str, Callable[[str], float]] = {
        "meshbox": partial(_measure, "meshbox"), "restore": partial(_measure, "restore"),
        "cli": _measure_cli, "restore-process": _measure_restore_process,
    }
    for i in range(rounds):
        for pair in (("meshbox", "restore"), ("cli", "restore-process")):
            for kind in pair if i % 2 == 0 else reversed(pair):
                samples[kind].append(measure[kind](f"{prefix}-{i}-{kind}"))
    medians = {kind: statistics.median(values) for kind, values in samples.items()}
    ratio = medians["meshbox"] / medians["restore"]
    return [
        _row("in-process: program the default rule set (-p 15001 -u 1337, 14 rules, legacy backend, "
             "python-iptables loaded), fresh netns", medians["meshbox"],
             "iptables-legacy-restore --noflush process, same rules, fresh netns", medians["restore"],
             f"<= {TARGET:g}x", ratio <= TARGET),
        # Python start-up has no counterpart in a C tool, so this row holds the process to an
        # absolute budget (an init container delays the pod's start) and shows the ratio for scale.
        _row("whole process: ip netns exec meshbox-init -p 15001 -u 1337 --backend legacy (interpreter start, "
             "imports, programming)", medians["cli"],
             "ip netns exec iptables-legacy-restore --noflush, same rules", medians["restore-process"],
             f"value <= {CLI_BUDGET_SECONDS * 1000:.0f} ms", medians["cli"] <= CLI_BUDGET_SECONDS),
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        print(f"{_worker(sys.argv[2]):.9f}")
    else:
        for row in rows():
            print(row)
