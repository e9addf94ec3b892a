"""A bounded fuzz of a real meshbox-proxy process (issues #18 and #14; the fuzz is in fuzz/), over HTTP/1.1
and HTTP/2 (h2c with prior knowledge), plus the HTTP/2 regression corpus of what the fuzz found.

HTTP/1.1: at least 20,000 seeded requests, each a mutation of a base request (well-formed variants and requests
broken on purpose: request line, headers, framing, chunks, smuggling shapes, raw bytes), pipelined,
sequential and half-closed connections, split at random points, through the proxy as ``make demo`` runs it
(compiled, httptools) to a raw-capture backend that sometimes answers with hostile responses. The oracle:
the proxy is alive and ready at the end with nothing alarming on stderr, every answer is the right one in
order, no complete request is left without an answer or a close, and every request the backend received
is one the proxy handled as a request of its own (x-request-id in its access log). On failure the seed and
minimised reproducers are printed; ``make fuzz`` runs a bigger one.

HTTP/2: a few thousand seeded request streams, many multiplexed on each connection (GET/POST with
bodies, trailers, gRPC-shaped calls, CONTINUATION, padding, ...), often followed by a stream broken at
the message, frame or HPACK level, through the same proxy set-up to an h2c capture backend. The oracle:
as above, plus every stream settled (answered, reset or refused by GOAWAY, and an error GOAWAY followed
by the close), every valid stream answered with its own echo unless a broken one ended the connection,
only well-formed frames and responses from the proxy, and only requests an HTTP/2 client may send at
the backend. Findings of proxy bugs on record (fuzz/known_bugs.py) are counted apart; the corpus test
below expects each of them to still show, and the other cases to pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import uvloop

from fuzz.dialects import Finding
from fuzz.driver import run_fuzz, run_scripts
from fuzz.h2_dialect import Http2
from fuzz.h2_regressions import REGRESSIONS, Regression
from fuzz.known_bugs import KNOWN_BUGS, known_bug
from fuzz.minimize import explain

REQUESTS = 20_000
H2_REQUESTS = 3_000
SEED = int(os.environ.get("MESHBOX_FUZZ_SEED", "18"))


def test_fuzzed_requests_find_no_crash_stall_desync_or_smuggling(tmp_path: Path) -> None:
    report = uvloop.run(run_fuzz(REQUESTS, SEED, tmp_path / "run", concurrency=96, time_limit=120))
    print(report.summary())
    if report.findings:
        pytest.fail(f"{report.summary()}\n{uvloop.run(explain(report, tmp_path, examples=1, budget=60))}\n"
                    f"replay: make fuzz FUZZ_N={REQUESTS} FUZZ_SEED={SEED}", pytrace=False)
    assert not report.timed_out, report.summary()
    assert report.requests >= REQUESTS
    # The run really mixed what it claims to: broken requests, pipelining, half-closes, answers.
    assert report.malformed > REQUESTS // 20 and report.pipelined > 100 and report.half_closed > 100
    assert report.answers > REQUESTS // 2 and report.backend_requests > REQUESTS // 2


def test_fuzzed_http2_streams_find_no_crash_stall_or_malformed_forwarding(tmp_path: Path) -> None:
    report = uvloop.run(run_fuzz(H2_REQUESTS, SEED, tmp_path / "run", protocol="h2", concurrency=24, time_limit=90))
    print(report.summary())
    if report.findings:
        pytest.fail(f"{report.summary()}\n{uvloop.run(explain(report, tmp_path, examples=1, budget=60))}\n"
                    f"replay: make fuzz FUZZ_N={H2_REQUESTS} FUZZ_SEED={SEED} FUZZ_ARGS='--protocol h2'",
                    pytrace=False)
    assert not report.timed_out, report.summary()
    assert report.requests >= H2_REQUESTS
    # Multiplexed connections, broken streams, connections the proxy ended, answers checked, canaries.
    assert report.pipelined > 20 and report.malformed > H2_REQUESTS // 100 and report.goaways > 5
    assert report.answers > (report.requests - report.malformed) // 2 and report.backend_requests > H2_REQUESTS // 2
    assert report.canaries >= 1


@pytest.fixture(scope="module")
def regression_findings(tmp_path_factory: pytest.TempPathFactory) -> dict[int, list[Finding]]:
    """The oracle's findings for each regression case, all run one by one on one fresh proxy."""
    scripts = [r.script for r in REGRESSIONS]
    found = uvloop.run(run_scripts(scripts, Http2(), tmp_path_factory.mktemp("h2-regressions"), "httptools"))
    by_script: dict[int, list[Finding]] = {s.index: [] for s in scripts}
    for f in found:
        assert f.conn in by_script, f"a finding not tied to one regression case: {f.kind}: {f.detail}"
        by_script[f.conn].append(f)
    return by_script


@pytest.mark.parametrize("case", REGRESSIONS, ids=[r.name for r in REGRESSIONS])
def test_http2_regression_corpus(case: Regression, regression_findings: dict[int, list[Finding]]) -> None:
    """Cases of fixed or never-seen bugs pass; a case of a known bug still shows it (when it stops, the
    bug was fixed: drop its entry from fuzz/known_bugs.py and the case's ``known_bug``)."""
    found = regression_findings[case.script.index]
    if case.known_bug is None:
        assert not found, [f"{f.kind}: {f.detail}" for f in found]
        return
    bug = next(b for b in KNOWN_BUGS if b.name == case.known_bug)
    assert any(known_bug(f) is bug for f in found), \
        f"known bug {bug.name} no longer shows ({bug.summary}); findings: {[f.detail for f in found]}"
