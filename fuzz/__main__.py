"""``python -m fuzz`` (run from proxy/, or ``make fuzz``): fuzz a real meshbox-proxy and print the counts
and every finding with a minimal reproducer. Exit status 1 when there are findings."""

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
    parser.add_argument("-n", "--requests", type=int, default=100_000, help="requests to send (default 100000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the run (default 1)")
    parser.add_argument("--codec", default="httptools", choices=("httptools", "h11"), help="the proxy's --codec")
    parser.add_argument("--protocol", default="http/1.1", help="protocol to speak (http/1.1; h2 is not there yet)")
    parser.add_argument("--concurrency", type=int, default=96, help="connections in flight (default 96)")
    parser.add_argument("--time-limit", type=float, default=1800.0, help="seconds before the run stops early")
    parser.add_argument("--workdir", type=Path, help="where the proxy's config and logs go (default: a temp dir)")
    parser.add_argument("--examples", type=int, default=2, help="findings of each kind to minimise and show")
    parser.add_argument("--replay", type=int, nargs="+", metavar="SCRIPT",
                        help="replay these scripts of --seed one by one on a fresh proxy instead of fuzzing")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be positive")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="meshbox-fuzz-"))
    if args.replay:
        return replay(args.seed, args.replay, args.protocol, args.codec, workdir)
    try:
        report = uvloop.run(run_fuzz(args.requests, args.seed, workdir / "run", codec=args.codec,
                                     protocol=args.protocol, concurrency=args.concurrency,
                                     time_limit=args.time_limit))
    except NotImplementedError as exc:
        print(f"fuzz: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    if report.findings:
        print(uvloop.run(explain(report, workdir, examples=args.examples)))
    print(f"proxy logs: {workdir}")
    return 1 if report.findings or report.timed_out else 0


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
