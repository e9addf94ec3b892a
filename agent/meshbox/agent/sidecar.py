"""``meshbox-agent sidecar``: the proxy container's main program, wired together.

It starts the status server, the proxy (supervised) and the discovery stream, then waits
for a reason to stop: SIGTERM/SIGINT (drain the proxy's listeners for the drain period,
then stop it) or ``POST /quitquitquit`` (ask the proxy to exit now; both exit 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from dataclasses import dataclass
from typing import Any

import grpc

from meshbox.agent.agent_metrics import AgentCounts, merged_metrics
from meshbox.agent.backoff import Backoff
from meshbox.agent.config_applier import ConfigApplier
from meshbox.agent.discovery_client import DiscoveryClient
from meshbox.agent.http_client import HttpUnreachable
from meshbox.agent.proxy_admin import ProxyAdmin
from meshbox.agent.span_export import SpanExporter
from meshbox.agent.status_server import StatusServer
from meshbox.agent.supervisor import ProxySupervisor
from meshbox.agent.workload_identity import WorkloadIdentityManager
from meshbox.api.v1 import discovery_pb2

log = logging.getLogger("meshbox.agent")

STOP_GRACE_S = 10.0  # how long the proxy gets to exit after SIGTERM before SIGKILL
DISCOVERY_BACKOFF = Backoff(base=0.1, cap=10.0)
RESTART_BACKOFF = Backoff(base=0.2, cap=30.0)


class StartupError(RuntimeError):
    """The agent cannot start (e.g. its status port is taken); the message says why."""


@dataclass(frozen=True)
class SidecarOptions:
    discovery_address: str
    node: discovery_pb2.Node
    proxy_argv: list[str]
    admin_port: int
    status_port: int
    status_host: str = "0.0.0.0"
    drain_seconds: float = 5.0
    discovery_backoff: Backoff = DISCOVERY_BACKOFF
    restart_backoff: Backoff = RESTART_BACKOFF
    # The workload certificate (mutual TLS to discovery); None: plaintext discovery, no certificate.
    identity: WorkloadIdentityManager | None = None
    # Receives the proxy's spans and exports them over OTLP; None: tracing is off.
    span_exporter: SpanExporter | None = None


class Sidecar:
    """One agent: status server + supervised proxy + discovery stream."""

    def __init__(self, options: SidecarOptions, rng: random.Random | None = None) -> None:
        self.options = options
        rng = rng or random.Random()
        self.admin = ProxyAdmin(options.admin_port)
        self.applier = ConfigApplier(self.admin, Backoff(base=0.05, cap=1.0), rng)
        self.supervisor = ProxySupervisor(
            options.proxy_argv, backoff=options.restart_backoff, rng=rng, on_start=self.applier.restore
        )
        self.identity = options.identity
        self.discovery = DiscoveryClient(
            options.discovery_address, options.node, self.applier, backoff=options.discovery_backoff, rng=rng,
            credentials=self._discovery_credentials if self.identity is not None else None,
        )
        self._stop: asyncio.Future[str] | None = None
        self._draining = False

    async def _discovery_credentials(self) -> grpc.ChannelCredentials:
        """The newest workload certificate, once there is one: each reconnect uses the renewed one."""
        assert self.identity is not None
        await self.identity.wait_ready()
        return self.identity.channel_credentials()

    async def readiness(self) -> tuple[bool, str]:
        """Ready = not shutting down, a config from discovery applied, and the proxy says ready."""
        if self._draining:
            return False, "draining: the pod is shutting down"
        if self.applier.last_good is None:
            return False, f"no config applied yet (discovery at {self.options.discovery_address})"
        if not await self.admin.ready():
            return False, "the proxy is not ready (starting, or restarting after a crash)"
        if not self.discovery.connected:
            return True, "ready (discovery unreachable: serving the last good config)"
        return True, "ready"

    async def metrics(self) -> str:
        """The merged agent + proxy metrics served on the status port."""
        counts = AgentCounts(
            proxy_starts=self.supervisor.starts, configs_applied=self.applier.applied,
            configs_rejected=self.applier.rejected, discovery_connected=self.discovery.connected,
            config_applied=self.applier.last_good is not None,
        )
        exporter = self.options.span_exporter
        traced = exporter.render() if exporter is not None else ""
        return traced + await merged_metrics(self.admin, counts)

    def request_stop(self, how: str) -> None:
        """Begin shutting down: ``"drain"`` (SIGTERM) or ``"quit"`` (POST /quitquitquit)."""
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(how)

    async def run(self) -> int:
        """Run until stopped; the exit status of the agent (0 when asked to stop, 1 on an internal failure)."""
        loop = asyncio.get_running_loop()
        self._stop = loop.create_future()
        host, port = self.options.status_host, self.options.status_port
        try:
            server = await StatusServer(self.readiness, lambda: self.request_stop("quit"),
                                        self.metrics).start(host, port)
        except OSError as exc:
            raise StartupError(f"cannot serve the status port on {host}:{port}: {exc.strerror or exc}") from exc
        exporter = self.options.span_exporter
        if exporter is not None:
            try:
                await exporter.start()
            except OSError as exc:
                server.close()
                raise StartupError(f"cannot bind the span socket {exporter.socket_path}: "
                                   f"{exc.strerror or exc}") from exc
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, "drain")
        log.info(
            "agent for %s: status on %s:%d, proxy admin on 127.0.0.1:%d, discovery at %s",
            self.options.node.id, host, server.sockets[0].getsockname()[1],
            self.options.admin_port, self.options.discovery_address,
        )
        proxy_task = asyncio.create_task(self.supervisor.run(), name="proxy supervisor")
        discovery_task = asyncio.create_task(self.discovery.run(), name="discovery client")
        identity_task = (asyncio.create_task(self.identity.run(), name="workload certificate")
                         if self.identity is not None else None)
        export_task = (asyncio.create_task(exporter.run(), name="span exporter") if exporter is not None else None)
        status = 0
        try:
            waiting: set[asyncio.Future[Any]] = {self._stop, proxy_task, discovery_task}
            if identity_task is not None:
                waiting.add(identity_task)
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            discovery_task.cancel()
            if identity_task is not None:
                identity_task.cancel()
            if self._stop.done():
                await (self._quit() if self._stop.result() == "quit" else self._drain_and_stop())
            else:
                # Both tasks run until cancelled: finishing on their own is a bug; say so and stop.
                failed = next(t for t in (proxy_task, discovery_task, identity_task) if t is not None and t.done())
                log.critical("agent task %s ended unexpectedly", failed.get_name(),
                             exc_info=None if failed.cancelled() else failed.exception())
                status = 1
                await self.supervisor.terminate(STOP_GRACE_S)
        finally:
            for task in (t for t in (export_task, identity_task, discovery_task, proxy_task) if t is not None):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if exporter is not None:
                exporter.close()
            server.close()
            await server.wait_closed()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
        log.info("agent stopped")
        return status

    async def _quit(self) -> None:
        log.info("quitquitquit: stopping the proxy now")
        self.supervisor.stop_restarting()
        try:
            await self.admin.quit()
        except HttpUnreachable as exc:
            log.warning("proxy did not take /quitquitquit (%s); terminating it", exc)
        if not await self.supervisor.wait_exit(STOP_GRACE_S):
            log.warning("proxy still running %.0fs after /quitquitquit", STOP_GRACE_S)
        await self.supervisor.terminate(STOP_GRACE_S)

    async def _drain_and_stop(self) -> None:
        self._draining = True
        self.supervisor.stop_restarting()
        drain = self.options.drain_seconds
        log.info("stop requested: draining the proxy's listeners for %.1fs", drain)
        try:
            await self.admin.drain()
        except HttpUnreachable as exc:
            log.warning("proxy did not take /drain_listeners (%s); stopping it", exc)
            drain = 0.0
        if drain and await self.supervisor.wait_exit(drain):
            log.warning("proxy exited during the drain period")
        await self.supervisor.terminate(STOP_GRACE_S)
