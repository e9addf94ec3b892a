"""Proxy bugs the fuzz found and that are on record but not fixed yet: a finding that matches one is
reported as known (counted and named in the summary, ``--fail-on-known`` fails on it) instead of
failing every run; each has a regression case in ``h2_regressions`` that proxy/tests/test_fuzz.py
expects to fail until the bug is fixed (then the test says so and the entry here goes)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .dialects import Finding


@dataclass(frozen=True)
class KnownBug:
    name: str
    kind: str  # the finding kind it shows as
    pattern: re.Pattern[str]  # matched against the finding's detail
    summary: str


# Empty: the four HTTP/2 findings of the first run (a GOAWAY before the server's SETTINGS, a lenient
# preface, :path and :method not checked) were fixed in the codec; their cases stay in h2_regressions.
KNOWN_BUGS: tuple[KnownBug, ...] = ()


def known_bug(finding: Finding) -> KnownBug | None:
    return next((b for b in KNOWN_BUGS if b.kind == finding.kind and b.pattern.search(finding.detail)), None)


def split_known(findings: list[Finding]) -> tuple[list[Finding], dict[str, int]]:
    """The findings that are new, and how often each known bug showed."""
    new: list[Finding] = []
    known: dict[str, int] = {}
    for f in findings:
        bug = known_bug(f)
        if bug is None:
            new.append(f)
        else:
            known[bug.name] = known.get(bug.name, 0) + 1
    return new, known
