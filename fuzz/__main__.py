"""``python -m fuzz`` (``make fuzz``): fuzz a real meshbox-proxy over HTTP/1.1 and HTTP/2 (h2c) and print the
counts per protocol and every finding with a minimal reproducer. Exit status 1 when there are findings."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import uvloop

from .dialects import dialect
from .driver import run_fuzz, run_scripts
from .minimize import explain, show


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("-n", "--requests", type=int, default=100_000,
                        help="requests to send in all protocols together (default 100000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the run (default 1)")
    parser.add_argument("--codec", default="httptools", choices=("httptools", "h11"), help="the proxy's --codec")
    parser.add_argument("--protocol", default="both",
                        help="protocol to speak: http/1.1, h2 (h2c, prior knowledge) or both (default), one run each")
    parser.add_argument("--h2-share", type=float, default=0.5,
                        help="with --protocol both, the share of the requests sent over HTTP/2 (default 0.5)")
    parser.add_argument("--concurrency", type=int, default=96, help="HTTP/1.1 connections in flight (default 96)")
    parser.add_argument("--h2-concurrency", type=int, default=24,
                        help="HTTP/2 connections in flight (default 24; each carries up to 90 streams)")
    parser.add_argument("--fail-on-known", action="store_true",
                        help="fail on findings of the proxy bugs on record (fuzz/known_bugs.py) too")
    parser.add_argument("--time-limit", type=float, default=1800.0, help="seconds before the run stops early")
    parser.add_argument("--workdir", type=Path, help="where the proxy's config and logs go (default: a temp dir)")
    parser.add_argument("--examples", type=int, default=2, help="findings of each kind to minimise and show")
    parser.add_argument("--replay", type=int, nargs="+", metavar="SCRIPT",
                        help="replay these scripts of --seed one by one on a fresh proxy instead of fuzzing")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.h2_concurrency < 1 or not 0 <= args.h2_share <= 1:
        parser.error("--requests and the concurrencies must be positive, --h2-share between 0 and 1")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="meshbox-fuzz-"))
    try:
        plan = run_plan(args.protocol, args.requests, args.h2_share)
    except ValueError as exc:
        parser.error(str(exc))
    if args.replay:
        if len(plan) != 1:
            parser.error("--replay needs one --protocol (http/1.1 or h2)")
        return replay(args.seed, args.replay, plan[0][0], args.codec, workdir)
    failed = False
    reports = []
    for protocol, count in plan:
        report = uvloop.run(run_fuzz(count, args.seed, workdir / protocol.replace("/", ""), codec=args.codec,
                                     protocol=protocol, time_limit=args.time_limit, fail_on_known=args.fail_on_known,
                                     concurrency=args.h2_concurrency if protocol == "h2" else args.concurrency))
        print(report.summary(), flush=True)
        if report.findings:
            print(uvloop.run(explain(report, workdir / protocol.replace("/", ""), examples=args.examples)))
        failed |= bool(report.findings or report.timed_out)
        reports.append(report)
    per_protocol = ", ".join(f"{r.protocol} {r.requests}" for r in reports)
    print(f"fuzz total: {sum(r.requests for r in reports)} requests ({per_protocol}); "
          f"{sum(len(r.findings) for r in reports)} findings")
    print(f"proxy logs: {workdir}")
    return 1 if failed else 0


def run_plan(protocol: str, requests: int, h2_share: float) -> list[tuple[str, int]]:
    """(protocol, requests) for each run: ``both`` splits the requests by ``h2_share``."""
    if protocol == "both":
        h2 = round(requests * h2_share)
        return [(p, n) for p, n in (("http/1.1", requests - h2), ("h2", h2)) if n > 0]
    return [(dialect(protocol).name, requests)]


def replay(seed: int, indexes: list[int], protocol: str, codec: str, workdir: Path) -> int:
    """Run the given scripts alone and print them with what the oracle says."""
    speaker = dialect(protocol)
    scripts = [speaker.script(seed, i) for i in indexes]
    for script in scripts:
        print(show(script))
    found = uvloop.run(run_scripts(scripts, speaker, workdir / "replay", codec))
    for f in found:
        print(f"{f.kind} (script {f.conn}): {f.detail}")
    print(f"{len(found)} findings; proxy logs: {workdir}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
