"""A bounded fuzz of a real meshbox-proxy process (issues #18 and #14; the fuzz is in fuzz/).

At least 20,000 seeded requests, each a mutation of a base request (well-formed variants and requests
broken on purpose: request line, headers, framing, chunks, smuggling shapes, raw bytes), pipelined,
sequential and half-closed connections, split at random points, through the proxy as ``make demo`` runs it
(compiled, httptools) to a raw-capture backend that sometimes answers with hostile responses. The oracle:
the proxy is alive and ready at the end with nothing alarming on stderr, every answer is the right one in
order, no complete request is left without an answer or a close, and every request the backend received
is one the proxy handled as a request of its own (x-request-id in its access log). On failure the seed and
minimised reproducers are printed; ``make fuzz`` runs a bigger one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import uvloop

from fuzz.driver import run_fuzz
from fuzz.minimize import explain

REQUESTS = 20_000
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


def test_http2_is_an_explicit_gap_not_a_silent_pass() -> None:
    """HTTP/2 fuzzing waits for the proxy to speak h2 at L7 (issue #14): asking for it must fail loudly."""
    from fuzz.dialects import dialect

    with pytest.raises(NotImplementedError, match="HTTP/2"):
        dialect("h2")
