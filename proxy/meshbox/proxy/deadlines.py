"""Request timeouts checked by one periodic sweep instead of a timer handle per request.

Arming and disarming are a dict store and a dict pop; the sweep runs only while something is armed,
every ``resolution`` seconds, so a timeout fires at most that much late.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any


class Deadlines:
    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = 0.05) -> None:
        self._loop = loop
        self._resolution = resolution
        self._armed: dict[Hashable, tuple[float, Callable[[Any], None]]] = {}
        self._sweeping = False
        # These run for every request: the dict's own methods, bound once, cost no Python frame.
        # ``disarm(key, None)`` forgets a deadline; ``is_armed(key)`` says whether one is set.
        self.disarm: Callable[[Hashable, None], object] = self._armed.pop
        self.is_armed: Callable[[Hashable], bool] = self._armed.__contains__

    def arm(self, key: Hashable, timeout: float, callback: Callable[[Any], None]) -> None:
        """Call ``callback(key)`` once ``timeout`` seconds from now, unless :meth:`disarm` comes first."""
        self._armed[key] = (self._loop.time() + timeout, callback)
        if not self._sweeping:
            self._sweeping = True
            self._loop.call_later(self._resolution, self._sweep)

    def _sweep(self) -> None:
        now = self._loop.time()
        expired = [key for key, (deadline, _) in self._armed.items() if deadline <= now]
        for key in expired:
            entry = self._armed.pop(key, None)
            if entry is not None:
                entry[1](key)
        if self._armed:
            self._loop.call_later(self._resolution, self._sweep)
        else:
            self._sweeping = False
