"""Debounce: coalesce a burst of registry changes into one rebuild and push."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


def fire_at(first: float, last: float, quiet: float, max_wait: float) -> float:
    """When to act: ``quiet`` after the last change, but never later than ``max_wait`` after the first."""
    return min(last + quiet, first + max_wait)


class Debouncer:
    """Runs ``action`` once per burst of :meth:`trigger` calls (in the running event loop)."""

    def __init__(self, action: Callable[[], None], *, quiet: float = 0.1, max_wait: float = 1.0) -> None:
        self._action = action
        self._quiet = quiet
        self._max_wait = max_wait
        self._first = 0.0
        self._last = 0.0
        self._task: asyncio.Task[None] | None = None

    def trigger(self) -> None:
        now = asyncio.get_running_loop().time()
        self._last = now
        if self._task is None or self._task.done():
            self._first = now
            self._task = asyncio.create_task(self._wait_then_act())

    async def _wait_then_act(self) -> None:
        loop = asyncio.get_running_loop()
        while (delay := fire_at(self._first, self._last, self._quiet, self._max_wait) - loop.time()) > 0:
            await asyncio.sleep(delay)
        self._action()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
