"""Wiring: a registry source → debounced hub updates → gRPC streams, plus the HTTP side."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import grpc

from meshbox.api.v1 import certificate_pb2_grpc
from meshbox.discovery.ca_keeper import CaKeeper
from meshbox.discovery.certificate_service import CertificateService
from meshbox.discovery.debounce import Debouncer
from meshbox.discovery.grpc_service import add_port, new_grpc_server
from meshbox.discovery.http_service import start_http_server
from meshbox.discovery.hub import Hub
from meshbox.discovery.registry import Registry
from meshbox.discovery.token_auth import Authenticator

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
    ca: int = 0  # 0: no CA port (plaintext mode)


@dataclass
class Security:
    """Mutual TLS on the discovery port, and the CA on its own TLS port."""

    keeper: CaKeeper
    authenticator: Authenticator
    ca_port: int
    reload_interval: float = 2.0


async def start_grpc(hub: Hub, host: str, grpc_port: int,
                     security: Security | None) -> tuple[grpc.aio.Server, int, int]:
    """The gRPC server: discovery (plaintext, or mTLS) and, with security, the CA port (TLS)."""
    server = new_grpc_server(hub)
    if security is None:
        bound = add_port(server, f"{host}:{grpc_port}", None)
        await server.start()
        return server, bound, 0
    certificate_pb2_grpc.add_CertificateServiceServicer_to_server(
        CertificateService(security.keeper, security.authenticator), server)
    bound = add_port(server, f"{host}:{grpc_port}", security.keeper.server_credentials(client_auth=True))
    ca_bound = add_port(server, f"{host}:{security.ca_port}", security.keeper.server_credentials(client_auth=False))
    await server.start()
    return server, bound, ca_bound


async def serve(
    source: Callable[[], Coroutine[Any, Any, None]] | None,
    hub: Hub,
    *,
    host: str,
    grpc_port: int,
    http_port: int,
    started: asyncio.Future[Ports] | None = None,
    security: Security | None = None,
) -> None:
    """Run the gRPC and HTTP servers and the source (started once both listen) until cancelled."""
    grpc_server, bound_grpc, bound_ca = await start_grpc(hub, host, grpc_port, security)
    try:
        runner, bound_http = await start_http_server(hub, host, http_port)
    except OSError as exc:
        await grpc_server.stop(grace=None)
        raise OSError(f"cannot listen for HTTP on {host}:{http_port}: {exc.strerror or exc}") from exc
    if security is None:
        log.warning("serving discovery gRPC on %s:%d, HTTP (/ready, /metrics) on %s:%d; gRPC in PLAINTEXT: no TLS, "
                    "no CA, no node identity checks (tests and development only)", host, bound_grpc, host, bound_http)
    else:
        log.info("serving discovery gRPC on %s:%d, HTTP (/ready, /metrics) on %s:%d, CA on %s:%d; gRPC over mutual "
                 "TLS", host, bound_grpc, host, bound_http, host, bound_ca)
    if started is not None:
        started.set_result(Ports(bound_grpc, bound_http, bound_ca))
    keeper_task = (asyncio.create_task(security.keeper.watch(security.reload_interval))
                   if security is not None else None)
    source_task = asyncio.create_task(source()) if source is not None else None
    try:
        if source_task is not None:
            await source_task
        else:
            await asyncio.Event().wait()
    finally:
        if keeper_task is not None:
            keeper_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper_task
        if source_task is not None:
            source_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await source_task
        await grpc_server.stop(grace=1.0)
        await runner.cleanup()
