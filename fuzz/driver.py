"""One fuzz run: start the capture backend and a real proxy, run seeded connection scripts through it
with bounded concurrency until the request count (or the time bound) is reached, then judge."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .capture_backend import CaptureBackend
from .dialects import Dialect, Finding, Outcome, Script, dialect
from .known_bugs import split_known
from .oracle import judge_backend, judge_process
from .proxy_process import ProxyProcess, start_proxy


@dataclass
class Report:
    seed: int
    codec: str
    protocol: str
    target: int  # requests asked for
    connections: int = 0
    requests: int = 0
    malformed: int = 0  # requests broken on purpose (the rest are well-formed variants)
    pipelined: int = 0  # connections with more than one request in flight
    sequential: int = 0
    half_closed: int = 0
    answers: int = 0  # complete responses the clients read
    closed_by_proxy: int = 0
    resets: int = 0  # of those, closes the client saw as a TCP reset (unread answers may be lost)
    backend_requests: int = 0
    malformed_forwarded: int = 0  # broken requests whose id reached the backend (in a legal form, or a finding)
    forwarded_mutations: dict[str, int] = field(default_factory=dict)  # those, by the mutation that broke them
    goaways: int = 0  # HTTP/2: connections that got GOAWAY
    stream_resets: int = 0  # HTTP/2: streams the proxy reset
    canaries: int = 0  # health-check connections run beside the fuzz (each must be answered)
    elapsed: float = 0.0
    timed_out: bool = False  # the time bound stopped the run before the request count
    findings: list[Finding] = field(default_factory=list)
    known: dict[str, int] = field(default_factory=dict)  # findings of known_bugs entries, by bug
    # Scripts in flight (or just finished) when the proxy's stderr grew: where to look for the culprit.
    stderr_suspects: list[int] = field(default_factory=list)

    def count(self, script: Script, outcome: Outcome) -> None:
        self.connections += 1
        self.requests += len(script.requests)
        self.malformed += sum(1 for r in script.requests if r.malformed)
        self.pipelined += len(script.requests) > 1 and not script.sequential
        self.sequential += script.sequential
        self.half_closed += script.half_close
        self.answers += len(outcome.responses) + outcome.answered
        self.closed_by_proxy += outcome.closed
        self.resets += outcome.reset
        session = outcome.detail
        if session is not None:
            self.goaways += session.goaway is not None
            self.stream_resets += sum(1 for st in session.streams.values() if st.reset is not None and not st.ended)

    def summary(self) -> str:
        if self.protocol == "h2":
            shape = (f"{self.pipelined} with several streams, {self.sequential} waiting for answers before a "
                     f"broken stream")
            ends = f"{self.goaways} GOAWAYs, {self.stream_resets} streams reset, "
        else:
            shape = f"{self.pipelined} pipelined, {self.sequential} sequential, {self.half_closed} half-closed"
            ends = ""
        return (f"fuzz seed={self.seed} protocol={self.protocol} codec={self.codec}: {self.requests} requests "
                f"({self.malformed} malformed, {self.requests - self.malformed} well-formed variants) on "
                f"{self.connections} connections ({shape}); {self.answers} answers, {ends}{self.closed_by_proxy} "
                f"connections closed by the proxy ({self.resets} seen as a reset), {self.backend_requests} requests "
                f"at the backend ({self.malformed_forwarded} of them broken ones, in a legal form), "
                f"{self.canaries} canaries; {self.elapsed:.1f}s"
                + ("; STOPPED BY THE TIME BOUND" if self.timed_out else "")
                + f"; {len(self.findings)} findings"
                + (f" (and known proxy bugs: {', '.join(f'{k} x{n}' for k, n in sorted(self.known.items()))})"
                   if self.known else ""))

    def by_kind(self) -> dict[str, list[Finding]]:
        groups: dict[str, list[Finding]] = defaultdict(list)
        for f in self.findings:
            groups[f.kind].append(f)
        return dict(sorted(groups.items()))


async def run_fuzz(requests: int, seed: int, workdir: Path, *, codec: str = "httptools",
                   protocol: str = "http/1.1", concurrency: int = 96, time_limit: float = 300.0,
                   fail_on_known: bool = False) -> Report:
    """Fuzz until ``requests`` requests were sent (or ``time_limit`` seconds passed), then judge the run.
    Findings of bugs on record (``known_bugs``) are counted apart unless ``fail_on_known``."""
    speaker = dialect(protocol)
    report = Report(seed, codec, protocol, requests)
    backend = await CaptureBackend().start()
    proxy = await asyncio.to_thread(start_proxy, workdir, backend.port, codec)
    started = time.monotonic()
    active: dict[int, float] = {}  # script index -> when it ended (0.0: still running)
    broken_ids: dict[str, str] = {}  # id -> mutation
    try:
        indexes = itertools.count()

        async def worker() -> None:
            while report.requests < requests:
                if time.monotonic() - started > time_limit:
                    report.timed_out = True
                    return
                script = speaker.script(seed, next(indexes))
                broken_ids.update((r.rid, r.mutation) for r in script.requests if r.malformed)
                report.requests += len(script.requests)  # counted when made, so workers stop at the target
                active[script.index] = 0.0
                outcome = await speaker.run(script, proxy.port)
                active[script.index] = time.monotonic()
                report.requests -= len(script.requests)
                report.count(script, outcome)
                report.findings += speaker.judge(outcome)

        watcher = asyncio.create_task(_watch_stderr(proxy, active, report))
        canaries = asyncio.create_task(_canaries(speaker, seed, proxy.port, report))
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            watcher.cancel()
            canaries.cancel()
        report.elapsed = time.monotonic() - started
        await asyncio.sleep(0.2)  # let the last exchanges reach the log
        report.findings += await asyncio.to_thread(judge_process, proxy)
    finally:
        await asyncio.to_thread(proxy.stop)
        backend.close()
    report.backend_requests = len(backend.received)
    for r in backend.received:
        mutation = broken_ids.get(r.rid or "")
        if mutation is not None:
            report.malformed_forwarded += 1
            report.forwarded_mutations[mutation] = report.forwarded_mutations.get(mutation, 0) + 1
    report.findings += judge_backend(backend, proxy.access_log.read_bytes())
    if not fail_on_known:
        report.findings, report.known = split_known(report.findings)
    return report


async def _canaries(speaker: Dialect, seed: int, port: int, report: Report) -> None:
    """Every second, a connection with one well-formed request beside the fuzz: it must be answered
    (whatever the fuzzed connections did, other clients keep being served)."""
    for n in itertools.count():
        await asyncio.sleep(1.0)
        outcome = await speaker.run(speaker.canary(seed, n), port)
        report.canaries += 1
        report.findings += [Finding("canary", f"canary {n} ({f.kind}): {f.detail}") for f in speaker.judge(outcome)]


async def _watch_stderr(proxy: ProxyProcess, active: dict[int, float], report: Report) -> None:
    """Note which scripts were running when the proxy's stderr grew (checked every 50 ms)."""
    size = 0
    while True:
        await asyncio.sleep(0.05)
        now = time.monotonic()
        grown = proxy.stderr_path.stat().st_size
        if grown != size:
            size = grown
            if proxy.trouble():
                report.stderr_suspects += sorted(i for i, ended in active.items() if not ended or now - ended < 0.3)
        for i in [i for i, ended in active.items() if ended and now - ended > 1.0]:
            del active[i]


async def run_scripts(scripts: list[Script], speaker: Dialect, workdir: Path, codec: str) -> list[Finding]:
    """Replay scripts one at a time on a fresh proxy; a stderr complaint is pinned on the script that ran
    when it appeared."""
    backend = await CaptureBackend().start()
    proxy = await asyncio.to_thread(start_proxy, workdir, backend.port, codec)
    found: list[Finding] = []
    try:
        for script in scripts:
            trouble = len(proxy.trouble())
            found += speaker.judge(await speaker.run(script, proxy.port))
            await asyncio.sleep(0.05)
            found += [Finding("stderr", block, script.index) for block in proxy.trouble()[trouble:]]
        found += [f for f in await asyncio.to_thread(judge_process, proxy) if f.kind != "stderr"]
    finally:
        await asyncio.to_thread(proxy.stop)
        backend.close()
    found += judge_backend(backend, proxy.access_log.read_bytes())
    return found


async def stderr_trouble(scripts: list[Script], speaker: Dialect, workdir: Path, codec: str) -> bool:
    """Whether running these scripts concurrently on a fresh proxy makes it complain on stderr."""
    backend = await CaptureBackend().start()
    proxy = await asyncio.to_thread(start_proxy, workdir, backend.port, codec)
    try:
        await asyncio.gather(*(speaker.run(script, proxy.port) for script in scripts))
        await asyncio.sleep(0.1)
        return bool(proxy.trouble())
    finally:
        await asyncio.to_thread(proxy.stop)
        backend.close()
