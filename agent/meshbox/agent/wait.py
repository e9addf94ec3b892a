"""``meshbox-agent wait``: block until the local agent reports its proxy ready.

An app container can run ``meshbox-agent wait && exec app`` so it sends no traffic before
its sidecar can carry it.
"""

from __future__ import annotations

import asyncio

from meshbox.agent.http_client import HttpUnreachable, http_request
from meshbox.agent.status_server import READY_PATH


async def wait_ready(port: int, timeout: float, interval: float = 0.2, host: str = "127.0.0.1") -> tuple[bool, str]:
    """Poll ``GET /healthz/ready`` until 200 or ``timeout`` seconds; (ready, last answer seen)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = "no answer yet"
    while True:
        try:
            reply = await http_request(host, port, "GET", READY_PATH, timeout=max(0.5, interval))
        except HttpUnreachable as exc:
            last = f"agent not answering: {exc}"
        else:
            if reply.status == 200:
                return True, reply.text
            last = f"HTTP {reply.status}: {reply.text}"
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False, last
        await asyncio.sleep(min(interval, remaining))
