"""The timer wheel on a real event loop: a callback that raises is reported, its owner aborted, and
every other deadline still fires (issue #18 D5: one failure used to stop all route timeouts)."""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop

from meshbox.proxy.deadlines import Deadlines


class Owner:
    def __init__(self) -> None:
        self.aborted = 0

    def explode(self, key: object) -> None:
        raise TypeError(f"bug while handling {key}")

    def abort(self) -> None:
        self.aborted += 1


def test_a_raising_callback_never_stops_the_sweep() -> None:
    async def main() -> tuple[list[object], list[dict[str, Any]], int]:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: reported.append(context))
        deadlines = Deadlines(loop, resolution=0.01)
        owner = Owner()
        fired: list[object] = []
        deadlines.arm("bad", 0.01, owner.explode)
        deadlines.arm("same-sweep", 0.01, fired.append)
        await asyncio.sleep(0.1)
        deadlines.arm("later", 0.02, fired.append)  # armed after the failure: the sweep must still run
        await asyncio.sleep(0.1)
        return fired, reported, owner.aborted

    fired, reported, aborted = uvloop.run(main())
    assert fired == ["same-sweep", "later"]
    assert len(reported) == 1 and isinstance(reported[0]["exception"], TypeError)
    assert aborted == 1
