"""Runs the proxy as a child process and restarts it, with backoff, when it dies.

The child inherits the agent's stdout and stderr, so the proxy's access log reaches the
container log byte for byte. It stays in the agent's process group: whatever kills the
whole group (a test's cleanup, a terminal's Ctrl-C) takes both down. It is also started
through ``setpriv --pdeathsig TERM`` (util-linux) when that exists, so the kernel stops it if
the agent dies without cleaning up (SIGKILL, OOM): outside a container nothing else would
stop an orphaned proxy holding the pod's ports. (Not a preexec_fn calling prctl: that makes
Python fork() a process whose gRPC threads do not survive fork handlers well.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from meshbox.agent.backoff import Backoff

log = logging.getLogger("meshbox.agent")


def with_parent_death_signal(argv: Sequence[str]) -> list[str]:
    """``argv`` run through setpriv so that the kernel SIGTERMs it when its parent dies, if setpriv exists."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning("setpriv not found: a proxy would outlive an agent killed with SIGKILL")
        return list(argv)
    return [setpriv, "--pdeathsig", "TERM", "--", *argv]


class ProxySupervisor:
    """Start ``argv``; after each unexpected exit wait a backoff delay and start it again.

    A run that lasted ``stable_after`` seconds resets the backoff. ``on_start`` runs for each
    new process (the agent hands it the last good config) and is cancelled if it dies first.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        backoff: Backoff,
        rng: random.Random,
        on_start: Callable[[], Coroutine[Any, Any, None]],
        stable_after: float = 10.0,
    ) -> None:
        if not argv:
            raise ValueError("the proxy command is empty")
        self.argv = list(argv)
        self._launch = with_parent_death_signal(argv)
        self._backoff = backoff
        self._rng = rng
        self._on_start = on_start
        self._stable_after = stable_after
        self._stopping = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        """The running proxy's PID, if one runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def run(self) -> None:
        """Keep the proxy running until :meth:`stop_restarting` is called."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while not self._stopping.is_set():
            started = loop.time()
            await self._run_once()
            if self._stopping.is_set():
                return
            if loop.time() - started >= self._stable_after:
                attempt = 0
            delay = self._backoff.delay(attempt, self._rng.random())
            attempt = min(attempt + 1, 16)
            log.warning("restarting the proxy in %.2fs", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _run_once(self) -> None:
        if shutil.which(self.argv[0]) is None:
            # Checked here, not left to exec: under setpriv a missing proxy is only an exit status.
            log.error("cannot start the proxy (%s): %s is not an executable file", " ".join(self.argv), self.argv[0])
            return
        try:
            proc = await asyncio.create_subprocess_exec(*self._launch)
        except OSError as exc:
            log.error("cannot start the proxy (%s): %s", " ".join(self.argv), exc)
            return
        self._proc = proc
        self.starts += 1
        log.info("proxy started, pid %d (start %d)", proc.pid, self.starts)
        hook = asyncio.create_task(self._on_start())
        try:
            code = await proc.wait()
        finally:
            hook.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hook
        if not self._stopping.is_set():
            log.error("proxy pid %d exited unexpectedly with status %d", proc.pid, code)

    def stop_restarting(self) -> None:
        """From now on an exit of the proxy is expected and ends :meth:`run`."""
        self._stopping.set()

    async def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the current proxy to exit; True if it has."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return True
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def terminate(self, grace: float) -> None:
        """Stop the proxy for good: SIGTERM, then SIGKILL if it is still there after ``grace`` seconds."""
        self.stop_restarting()
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        if await self.wait_exit(grace):
            return
        log.warning("proxy pid %d ignored SIGTERM for %.1fs, killing it", proc.pid, grace)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
