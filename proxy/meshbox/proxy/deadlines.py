"""Request timeouts checked by one periodic sweep instead of a timer handle per request.

Arming and disarming are a dict store and a dict pop; the sweep runs only while something is armed,
every ``resolution`` seconds, so a timeout fires at most that much late. A callback that raises is
reported and never stops the sweep (one exchange's bug must not switch off every timeout: issue #18).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any


class Deadlines:
    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = 0.05) -> None:
        self._loop = loop
        # The loop's clock, bound once (arm runs for every request).
        self._time: Callable[[], float] = loop.time
        self._resolution = resolution
        self._armed: dict[Hashable, tuple[float, Callable[[Any], None]]] = {}
        self._sweeping = False
        # These run for every request: the dict's own methods, bound once, cost no Python frame.
        # ``disarm(key, None)`` forgets a deadline; ``is_armed(key)`` says whether one is set.
        self.disarm: Callable[[Hashable, None], object] = self._armed.pop
        self.is_armed: Callable[[Hashable], bool] = self._armed.__contains__

    def arm(self, key: Hashable, timeout: float, callback: Callable[[Any], None]) -> None:
        """Call ``callback(key)`` once ``timeout`` seconds from now, unless :meth:`disarm` comes first."""
        self._armed[key] = (self._time() + timeout, callback)
        if not self._sweeping:
            self._sweeping = True
            self._loop.call_later(self._resolution, self._sweep)

    def _sweep(self) -> None:
        now = self._time()
        expired = [key for key, (deadline, _) in self._armed.items() if deadline <= now]
        for key in expired:
            entry = self._armed.pop(key, None)
            if entry is not None:
                try:
                    entry[1](key)
                except Exception as exc:  # one callback's bug must not stop every timeout
                    self._failed(entry[1], exc)
        if self._armed:
            self._loop.call_later(self._resolution, self._sweep)
        else:
            self._sweeping = False

    def _failed(self, callback: Callable[[Any], None], exc: Exception) -> None:
        """Report a callback's exception and let the object it belongs to abort (closing what it served,
        e.g. one client connection) if it can; the sweep goes on for everything else."""
        self._loop.call_exception_handler({"message": f"deadline callback {callback!r} failed", "exception": exc})
        abort = getattr(getattr(callback, "__self__", None), "abort", None)
        if callable(abort):
            try:
                abort()
            except Exception as abort_exc:
                self._loop.call_exception_handler({"message": "abort after a failed deadline callback failed",
                                                   "exception": abort_exc})
