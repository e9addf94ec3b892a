"""The proxy supervisor with real child processes (small Python programs standing in for the
proxy's life cycle: crashing, ignoring SIGTERM, printing to stdout)."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import sys

import pytest

from meshbox.agent.backoff import Backoff
from meshbox.agent.supervisor import ProxySupervisor

CRASH = [sys.executable, "-c", "import sys; print('access line', flush=True); sys.exit(3)"]
STUBBORN = [sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
            "time.sleep(60)"]


def _delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    return [float(m.group(1)) for r in caplog.records if (m := re.search(r"restarting the proxy in ([\d.]+)s",
                                                                         r.getMessage()))]


async def _supervise(argv: list[str], starts: int, stable_after: float) -> tuple[int, int]:
    hooks = 0

    async def on_start() -> None:
        nonlocal hooks
        hooks += 1

    sup = ProxySupervisor(argv, backoff=Backoff(base=0.02, cap=0.16), rng=random.Random(7), on_start=on_start,
                          stable_after=stable_after)
    task = asyncio.create_task(sup.run())
    for _ in range(1000):  # bounded: at most ~20 s
        if sup.starts >= starts:
            break
        await asyncio.sleep(0.02)
    sup.stop_restarting()
    await asyncio.wait_for(task, 10)
    return sup.starts, hooks


def test_a_crashing_proxy_is_restarted_with_growing_delays_and_its_stdout_passes_through(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.INFO, logger="meshbox.agent")
    starts, hooks = asyncio.run(_supervise(CRASH, 6, stable_after=60))
    assert starts >= 6
    assert hooks == starts  # the last good config is offered to every new process
    assert "exited unexpectedly with status 3" in caplog.text
    delays = _delays(caplog)[:5]
    steps = [0.02, 0.04, 0.08, 0.16, 0.16]
    assert all(step / 2 <= d <= step for d, step in zip(delays, steps, strict=True)), delays
    assert capfd.readouterr().out.count("access line\n") == starts


def test_a_run_longer_than_stable_after_resets_the_backoff(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshbox.agent")
    asyncio.run(_supervise(CRASH, 5, stable_after=0))
    assert all(0.01 <= d <= 0.02 for d in _delays(caplog)), _delays(caplog)


def test_terminate_kills_a_proxy_that_ignores_sigterm(capfd: pytest.CaptureFixture[str]) -> None:
    async def body() -> int | None:
        async def on_start() -> None:
            return None

        sup = ProxySupervisor(STUBBORN, backoff=Backoff(), rng=random.Random(1), on_start=on_start)
        task = asyncio.create_task(sup.run())
        for _ in range(500):
            if "up" in capfd.readouterr().out:
                break
            await asyncio.sleep(0.02)
        pid = sup.pid
        assert pid is not None
        await sup.terminate(grace=0.3)
        await asyncio.wait_for(task, 5)
        assert sup.pid is None
        return sup.starts

    assert asyncio.run(body()) == 1


def test_an_unstartable_proxy_command_is_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="meshbox.agent")

    async def body() -> None:
        async def on_start() -> None:
            return None

        sup = ProxySupervisor(["/nonexistent/meshbox-proxy"], backoff=Backoff(base=0.02, cap=0.04),
                              rng=random.Random(1), on_start=on_start)
        task = asyncio.create_task(sup.run())
        for _ in range(200):
            if len(_delays(caplog)) >= 3:
                break
            await asyncio.sleep(0.02)
        sup.stop_restarting()
        await asyncio.wait_for(task, 5)
        assert sup.starts == 0

    asyncio.run(body())
    assert "cannot start the proxy (/nonexistent/meshbox-proxy): /nonexistent/meshbox-proxy is not an executable" \
        in caplog.text
    assert len(_delays(caplog)) >= 3


def test_an_empty_command_is_refused() -> None:
    async def on_start() -> None:
        return None

    with pytest.raises(ValueError, match="proxy command is empty"):
        ProxySupervisor([], backoff=Backoff(), rng=random.Random(), on_start=on_start)
