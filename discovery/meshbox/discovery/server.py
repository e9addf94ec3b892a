"""Wiring: a registry source → debounced hub updates → gRPC streams, plus the HTTP side."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from meshbox.discovery.debounce import Debouncer
from meshbox.discovery.grpc_service import start_grpc_server
from meshbox.discovery.http_service import start_http_server
from meshbox.discovery.hub import Hub
from meshbox.discovery.registry import Registry

log = logging.getLogger("meshbox.discovery")


RegistryThunk = Callable[[], Registry]


class PendingUpdate:
    """Keeps the newest registry from a source and hands it to the hub once per debounced burst.

    Sources offer a function that builds the registry, so a burst of watch events costs one build.
    """

    def __init__(self, hub: Hub, *, quiet: float, max_wait: float) -> None:
        self._hub = hub
        self._build: RegistryThunk | None = None
        self._debouncer = Debouncer(self._apply, quiet=quiet, max_wait=max_wait)

    def offer(self, build: RegistryThunk) -> None:
        self._build = build
        self._debouncer.trigger()

    def _apply(self) -> None:
        if self._build is not None:
            build, self._build = self._build, None
            self._hub.update(build())

    async def close(self) -> None:
        await self._debouncer.close()


@dataclass
class Ports:
    grpc: int
    http: int


async def serve(
    source: Callable[[], Coroutine[Any, Any, None]] | None,
    hub: Hub,
    *,
    host: str,
    grpc_port: int,
    http_port: int,
    started: asyncio.Future[Ports] | None = None,
) -> None:
    """Run the gRPC and HTTP servers and the source (started once both listen) until cancelled."""
    grpc_server, bound_grpc = await start_grpc_server(hub, host, grpc_port)
    try:
        runner, bound_http = await start_http_server(hub, host, http_port)
    except OSError as exc:
        await grpc_server.stop(grace=None)
        raise OSError(f"cannot listen for HTTP on {host}:{http_port}: {exc.strerror or exc}") from exc
    log.info("serving discovery gRPC on %s:%d, HTTP (/ready, /metrics) on %s:%d", host, bound_grpc, host, bound_http)
    if started is not None:
        started.set_result(Ports(bound_grpc, bound_http))
    source_task = asyncio.create_task(source()) if source is not None else None
    try:
        if source_task is not None:
            await source_task
        else:
            await asyncio.Event().wait()
    finally:
        if source_task is not None:
            source_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await source_task
        await grpc_server.stop(grace=1.0)
        await runner.cleanup()
