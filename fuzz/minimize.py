"""Turn findings into reproducers: replay the offending connection alone on a fresh proxy, then drop
requests (and the split points and half-close) while the same kind of finding still shows."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from .dialects import Dialect, Finding, Script, dialect
from .driver import Report, run_scripts, stderr_trouble
from .h2_client import PREAMBLE

STDERR_SUSPECTS = 200  # scripts replayed, at most, to find those that make the proxy print a traceback


async def _shows(script: Script, kind: str, speaker: Dialect, workdir: Path, codec: str) -> bool:
    found = await run_scripts([script], speaker, workdir, codec)
    return any(f.kind == kind and f.conn == script.index for f in found)


async def minimal(seed: int, finding: Finding, speaker: Dialect, workdir: Path, codec: str,
                  budget: float) -> tuple[Script, bool]:
    """The smallest variant of the finding's script that still shows it, and whether it reproduced alone
    at all (False: the original script, which needs the concurrency of the full run). Requests are
    dropped in halves, then quarters, ... down to one at a time (as delta debugging does), so a script
    of 90 HTTP/2 streams shrinks within a few dozen replays."""
    assert finding.conn is not None
    script = speaker.script(seed, finding.conn)
    stop = time.monotonic() + budget
    keep = list(range(len(script.requests)))
    half_close = script.half_close
    best = script
    if not await _shows(script, finding.kind, speaker, workdir, codec):
        # Written all at once, the proxy reads it in one go, as it may under the load of the full run.
        best = speaker.rebuild(script, keep, half_close, True)
        if not await _shows(best, finding.kind, speaker, workdir, codec):
            return script, False
    for flag in (False, True):  # first: can it go in one write, without the half-close?
        candidate = speaker.rebuild(script, keep, half_close and flag, True)
        if time.monotonic() < stop and await _shows(candidate, finding.kind, speaker, workdir, codec):
            best, half_close = candidate, candidate.half_close
            break
    chunk = max(1, len(keep) // 2)
    while time.monotonic() < stop and len(keep) > 1:
        at = len(keep) - chunk
        while at >= 0 and time.monotonic() < stop and len(keep) > 1:
            trial = keep[:at] + keep[at + chunk:]
            candidate = speaker.rebuild(script, trial, half_close, best is not script)
            if trial and await _shows(candidate, finding.kind, speaker, workdir, codec):
                keep, best = trial, candidate
            at -= chunk
        if chunk == 1:
            break
        chunk //= 2
    return best, True


async def stderr_culprits(report: Report, speaker: Dialect, workdir: Path, budget: float) -> list[int]:
    """The fewest scripts, among those running when the proxy first complained on stderr, that still make
    it complain when replayed together on a fresh proxy (bisection); [] if they do not."""
    stop = time.monotonic() + budget
    suspects = list(dict.fromkeys(report.stderr_suspects))[:STDERR_SUSPECTS]
    scripts = [speaker.script(report.seed, i) for i in suspects]
    if not scripts or not await stderr_trouble(scripts, speaker, workdir, report.codec):
        return []
    while len(scripts) > 1 and time.monotonic() < stop:
        half = len(scripts) // 2
        for part in (scripts[:half], scripts[half:]):
            if await stderr_trouble(part, speaker, workdir, report.codec):
                scripts = part
                break
        else:
            break  # it takes scripts from both halves together
    return [s.index for s in scripts]


def show(script: Script) -> str:
    lines = [f"  script {script.index} ({'sequential' if script.sequential else 'pipelined'}"
             f"{', half-closed' if script.half_close else ''}, {len(script.pieces)} writes):"]
    if len(script.pieces) > 1:
        lines.append(f"    written in pieces of {', '.join(str(len(p)) for p in script.pieces)} bytes")
    if script.protocol == "h2":
        lines.append(f"    preface and SETTINGS: {script.pieces[0][:len(PREAMBLE)]!r}")
    for r in script.requests:
        if r.sid and not r.malformed and len(script.requests) > 3:
            # HTTP/2: a long script's well-formed streams in brief (rebuild them with --replay).
            lines.append(f"    [stream {r.sid}, {r.mutation}, expects {r.expect.value}] {len(r.data)} bytes: "
                         f"{r.data[:60]!r}...")
            continue
        data = r.data if len(r.data) <= 600 else r.data[:500] + b"...<%d bytes>..." % len(r.data) + r.data[-60:]
        stream = f"stream {r.sid}, " if r.sid else ""
        lines.append(f"    [{stream}{r.mutation}, expects {r.expect.value}] {data!r}")
    return "\n".join(lines)


async def explain(report: Report, workdir: Path, *, examples: int = 2, budget: float = 120.0) -> str:
    """Findings grouped by kind, each with up to ``examples`` minimised reproducers (bounded in time)."""
    speaker = dialect(report.protocol)
    stop = time.monotonic() + budget
    out = []
    for kind, group in report.by_kind().items():
        out.append(f"== {kind}: {len(group)} finding(s)")
        shown = 0
        for f in group:
            if shown >= examples:
                break
            out.append(f"- {f.detail[:1500]}")
            conn = f.conn
            if conn is None and kind == "stderr" and time.monotonic() < stop:
                culprits = await stderr_culprits(report, speaker, workdir / "culprit", stop - time.monotonic())
                if len(culprits) > 1:
                    out.append(f"  shows when these scripts run together (seed {report.seed}):")
                    out += [show(speaker.script(report.seed, i)) for i in culprits]
                conn = culprits[0] if len(culprits) == 1 else None
                f = replace(f, conn=conn)
            if conn is None:
                shown += 1
                continue
            if time.monotonic() < stop:
                script, alone = await minimal(report.seed, f, speaker, workdir / "minimize", report.codec,
                                              min(30.0, stop - time.monotonic()))
            else:
                script, alone = speaker.script(report.seed, conn), False
            out.append(f"  reproducer (seed {report.seed}, script {conn}"
                       f"{'' if alone else ', not minimised: not shown alone or out of time'}):")
            out.append(show(script))
            shown += 1
    return "\n".join(out)
