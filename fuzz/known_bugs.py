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


KNOWN_BUGS = (
    KnownBug("h2-preface-dropped", "malformed-response", re.compile(r"first frame is GOAWAY"),
             "a connection ended on its first read (rapid reset, SETTINGS/PING flood) gets GOAWAY without the "
             "server's SETTINGS preface (RFC 9113 §3.4): H2Link.abort_connection clears h2's outbound buffer, "
             "which still holds the SETTINGS queued by connection_made"),
    KnownBug("h2-preface-lenient", "lenient-preface", re.compile(r"ping_first|settings_ack_first"),
             "a client preface followed by PING or SETTINGS ACK instead of SETTINGS is accepted (h2 does not "
             "check it), where RFC 9113 §3.4 makes it a connection error PROTOCOL_ERROR"),
    KnownBug("h2-path-not-checked", "upstream-malformed", re.compile(r":path with control or space octets"),
             "an HTTP/2 request whose :path holds a space (or another octet no URI has) is forwarded as is, "
             "not refused as malformed"),
    KnownBug("h2-method-not-token", "upstream-malformed", re.compile(r":method .* is not a token"),
             "an HTTP/2 request whose :method is not a token (e.g. 'G T') is forwarded as is, not refused"),
)


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
