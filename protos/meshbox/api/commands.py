"""Running a system tool (ip, iptables-restore, ...) and turning its failure into one clear error."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence


class CommandError(RuntimeError):
    """A tool is missing, timed out or failed; the message names the command and gives its stderr."""


def run_command(argv: Sequence[str], *, input_text: str | None = None, timeout: float = 30.0,
                error: type[Exception] = CommandError) -> str:
    """Run ``argv`` and return its stdout; raise ``error`` (CommandError by default) saying what went wrong."""
    try:
        done = subprocess.run(list(argv), input=input_text, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except FileNotFoundError:
        raise error(f"{argv[0]}: not installed (scripts/bootstrap-system.sh installs it)") from None
    except subprocess.TimeoutExpired:
        raise error(f"{' '.join(argv)}: no answer after {timeout:.0f}s") from None
    if done.returncode != 0:
        raise error(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout
