"""Request mirroring (Envoy's request shadowing): a fire-and-forget copy of a request to another cluster.

The exchange core decides which mirrors copy a request (route_actions.mirror_requests) and hands the copy to
the I/O layer as a MIRROR action; :func:`send_mirror` sends it on a connection of its own and reads the
answer only to throw it away. The client's request never waits for a mirror and never sees its answer
or its failure. Work is bounded: at most ``MAX_IN_FLIGHT`` copies per process are on their way (more
are dropped and counted), each gives up after the route's timeout, and the answer is dropped piece
by piece as it arrives (never buffered).

Counters (``meshbox_proxy_<name>_total``): ``mirror_requests`` sent, ``mirror_dropped`` over the limit,
``mirror_failed`` (connect error, timeout, or no endpoint), ``mirror_skipped_body`` (a request body
over attempt_outcomes.MIRROR_BODY_LIMIT: the copy would have to hold it).
"""

from __future__ import annotations

import asyncio
from typing import Any

from meshbox.proxy.context import ProxyContext
from meshbox.proxy.upstream_tls import open_upstream

MAX_IN_FLIGHT = 256
# Copies in flight per proxy context (by id: a process normally has one; tests run several).
_in_flight: dict[int, int] = {}
# The copies' tasks, referenced until done (the event loop keeps only weak references to tasks).
_tasks: set[asyncio.Task[None]] = set()


class _Discard(asyncio.Protocol):
    """Writes the copy, reads the answer into nothing, and says when the connection is gone."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.data)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        return

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def in_flight(ctx: ProxyContext) -> int:
    """How many copies of this proxy are on their way."""
    return _in_flight.get(id(ctx), 0)


def send_mirror(ctx: ProxyContext, cluster: Any, data: bytes, timeout: float) -> None:
    """Start sending one copy (never raises, never blocks the caller)."""
    stats = ctx.stats
    key = id(ctx)
    if in_flight(ctx) >= MAX_IN_FLIGHT:
        stats.incr("mirror_dropped")
        return
    host = cluster.pick()
    if host is None:
        stats.incr("mirror_failed")
        return
    _in_flight[key] = _in_flight.get(key, 0) + 1
    stats.incr("mirror_requests")
    task = ctx.loop.create_task(_send(ctx, cluster, host, data, timeout))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _send(ctx: ProxyContext, cluster: Any, host: Any, data: bytes, timeout: float) -> None:
    transport: asyncio.BaseTransport | None = None
    try:
        async with asyncio.timeout(timeout):
            transport, proto = await open_upstream(ctx, lambda: _Discard(data), cluster, host)
            await proto.done
    except (OSError, TimeoutError):
        ctx.stats.incr("mirror_failed")
    finally:
        if transport is not None:
            transport.close()
        left = _in_flight.get(id(ctx), 1) - 1
        if left:
            _in_flight[id(ctx)] = left
        else:
            _in_flight.pop(id(ctx), None)
