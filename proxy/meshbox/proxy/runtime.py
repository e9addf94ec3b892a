"""Process life cycle: build a proxy process, run ``--concurrency`` workers, wire up the admin API.

With N > 1 the first process forks N-1 workers before any event loop exists. Every process binds the
same ports with SO_REUSEPORT, so the kernel spreads connections across them. The first process also
serves the admin API and relays config (the compiled Snapshot), stats, drain and quit to the workers over
a socketpair each (length-prefixed pickles between processes of this same program).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import struct
import sys
import traceback
from dataclasses import dataclass
from typing import Any

import uvloop

from meshbox.proxy import startup_memory
from meshbox.proxy.access_log import AccessLog
from meshbox.proxy.admin import AdminServer, config_dump
from meshbox.proxy.codec import get_codec
from meshbox.proxy.context import BODY_IDLE_TIMEOUT, HEAD_TIMEOUT, IDLE_TIMEOUT, ProxyContext
from meshbox.proxy.metrics import Stats
from meshbox.proxy.server import ProxyServer, announce
from meshbox.proxy.snapshot import ConfigRejected, Snapshot, Workload
from meshbox.proxy.tracing import Tracer

_LENGTH = struct.Struct("!I")


@dataclass(frozen=True)
class Options:
    """Everything the CLI resolved (mesh config defaults applied)."""

    # Compiled from --config in the command-line child, so protobuf never loads here.
    config: Snapshot | None
    admin_port: int
    outbound_port: int
    inbound_port: int
    pod_ip: str | None
    codec: str
    concurrency: int
    access_log_format: str
    registry_only: bool
    workload: Workload
    head_timeout: float = HEAD_TIMEOUT
    body_idle_timeout: float = BODY_IDLE_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    # The agent's workload certificate directory: mutual TLS is possible only with it (docs/security.md).
    cert_dir: str | None = None
    # Unix datagram socket of the agent's span exporter; None: no tracing (trace headers pass through).
    trace_socket: str | None = None
    trace_sampling: float = 1.0
    # The pod's name (POD_NAME), for the metadata exchange.
    pod_name: str = ""


def _context(options: Options) -> ProxyContext:
    loop = asyncio.get_running_loop()
    log = AccessLog(options.access_log_format)
    log.attach(loop)
    tls = None
    if options.cert_dir is not None:
        from meshbox.proxy.workload_tls import WorkloadTls  # the real ssl module: only with a certificate

        startup_memory.keep_tls_buffers_on_the_heap()
        tls = WorkloadTls(options.cert_dir)
        try:
            tls.refresh()  # now, when the files are there: the metric labels know this workload's identity
        except OSError as exc:  # not written yet: the first TLS connection loads them
            print(f"meshbox-proxy: no workload certificate yet: {exc}", file=sys.stderr, flush=True)
    ctx = ProxyContext(loop=loop, codec=get_codec(options.codec), access_log=log, workload=options.workload,
                       pod_ip=options.pod_ip, pod_name=options.pod_name, registry_only=options.registry_only,
                       head_timeout=options.head_timeout, body_idle_timeout=options.body_idle_timeout,
                       idle_timeout=options.idle_timeout, tls=tls)
    if options.trace_socket is not None:
        ctx.tracer = Tracer(loop, ctx.stats, options.trace_sampling, options.trace_socket, options.workload)
    return ctx


async def _start_server(options: Options) -> ProxyServer:
    ctx = _context(options)
    server = ProxyServer(ctx, options.outbound_port, options.inbound_port, reuse_port=options.concurrency > 1)
    await server.start()
    if options.config is not None:
        await server.apply_snapshot(options.config)
    return server


async def _send(writer: asyncio.StreamWriter, message: object) -> None:
    data = pickle.dumps(message)
    writer.write(_LENGTH.pack(len(data)) + data)
    await writer.drain()


async def _receive(reader: asyncio.StreamReader) -> Any:
    size = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))[0]
    return pickle.loads(await reader.readexactly(size))


class LocalController:
    """Admin operations on this process's server."""

    def __init__(self, server: ProxyServer, stop: asyncio.Event) -> None:
        self.server = server
        self.stop = stop

    def ready(self) -> bool:
        return self.server.ready

    async def apply(self, snapshot: Snapshot) -> int:
        return await self.server.apply_snapshot(snapshot)

    def config_dump(self) -> bytes:
        snap = self.server.ctx.snapshot
        return config_dump(snap.dump if snap is not None else None, self.server.version, self.server.ports())

    def clusters_text(self) -> str:
        snap = self.server.ctx.snapshot
        if snap is None:
            return ""
        lines = []
        for cluster in snap.clusters.values():
            lines.append(f"{cluster.name}::lb_policy::{cluster.policy}")
            for host, weight in zip(cluster.hosts, cluster.weights, strict=True):
                prefix = f"{cluster.name}::{host.host}"
                lines += [f"{prefix}::weight::{weight}", f"{prefix}::rq_active::{host.active}",
                          f"{prefix}::cx_idle::{len(host.idle)}"]
            if cluster.resilience is not None or cluster.limits.retry_overflow:
                from meshbox.proxy.cluster_resilience import resilience_lines  # loaded for such clusters only

                lines += resilience_lines(cluster.name, cluster.resilience, cluster.limits, cluster.guard)
        return "".join(line + "\n" for line in lines)

    async def stats(self) -> list[Stats]:
        return [self.server.ctx.stats]

    async def requests(self, request_id: bytes) -> list[dict[str, str]]:
        return self.server.ctx.recent.find(request_id)

    async def drain(self) -> None:
        self.server.drain()

    def quit(self) -> None:
        self.server.drain()
        self.stop.set()


class WorkerLink:
    """The first process's end of one worker's control socket."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.lock = asyncio.Lock()

    async def call(self, message: object) -> Any:
        async with self.lock:
            if self.reader is None or self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(sock=self.sock)
            await _send(self.writer, message)
            return await _receive(self.reader)


class SupervisorController(LocalController):
    """Admin operations applied to this process and relayed to every worker."""

    def __init__(self, server: ProxyServer, stop: asyncio.Event, workers: list[WorkerLink]) -> None:
        super().__init__(server, stop)
        self.workers = workers

    async def apply(self, snapshot: Snapshot) -> int:
        # Sent before this process adopts it: adopted, it holds live upstream connections.
        for worker in self.workers:
            status, detail = await worker.call(("apply", snapshot))
            if status != "ok":
                raise ConfigRejected(f"worker {worker.pid}: {detail}")
        return await self.server.apply_snapshot(snapshot)

    async def stats(self) -> list[Stats]:
        result = [self.server.ctx.stats]
        for worker in self.workers:
            exported = await worker.call(("stats", None))
            stats = Stats()
            stats.merge(exported)
            result.append(stats)
        return result

    async def requests(self, request_id: bytes) -> list[dict[str, str]]:
        found = self.server.ctx.recent.find(request_id)
        for worker in self.workers:
            found += await worker.call(("requests", request_id))
        return sorted(found, key=lambda entry: entry["start_time"])

    async def drain(self) -> None:
        for worker in self.workers:
            await worker.call(("drain", None))
        self.server.drain()

    def quit(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
        super().quit()


async def _serve_worker(options: Options, sock: socket.socket) -> None:
    server = await _start_server(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader, writer = await asyncio.open_connection(sock=sock)

    async def control() -> None:
        while True:
            try:
                kind, payload = await _receive(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                stop.set()  # the first process is gone
                return
            reply: object = None
            if kind == "apply":
                try:
                    reply = ("ok", await server.apply_snapshot(payload))
                except ConfigRejected as exc:
                    reply = ("error", str(exc))
            elif kind == "stats":
                reply = server.ctx.stats.export()
            elif kind == "requests":
                reply = server.ctx.recent.find(payload)
            elif kind == "drain":
                server.drain()
            await _send(writer, reply)

    task = loop.create_task(control())
    startup_memory.release()
    try:
        await stop.wait()
    finally:
        # However the loop ends (SIGTERM, the first process gone, an interrupt): no log line is lost.
        task.cancel()
        server.drain()
        server.ctx.access_log.flush(final=True)


async def _serve_main(options: Options, workers: list[WorkerLink]) -> None:
    server = await _start_server(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    controller = (SupervisorController(server, stop, workers) if workers else LocalController(server, stop))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, controller.quit)
    admin = AdminServer(controller, options.workload)
    admin_port = await admin.start(options.admin_port)
    announce("admin", "127.0.0.1", admin_port)
    announce("outbound capture", "0.0.0.0", server.outbound_port)
    if server.inbound_port and server.inbound_port != server.outbound_port:
        announce("inbound capture", "0.0.0.0", server.inbound_port)
    startup_memory.release()
    try:
        await stop.wait()
    finally:
        admin.close()
        server.ctx.access_log.flush(final=True)


def run_or_explain(options: Options) -> int:
    """Run the proxy; a failure to start (a port in use) is one line on stderr and exit status 1."""
    try:
        return run(options)
    except OSError as exc:
        print(f"Error: cannot start: {exc}", file=sys.stderr)
        return 1


def run(options: Options) -> int:
    """Run the proxy until /quitquitquit or SIGTERM; returns the exit status."""
    workers: list[WorkerLink] = []
    for _ in range(options.concurrency - 1):
        parent_end, child_end = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            parent_end.close()
            for link in workers:
                link.sock.close()
            status = 1
            try:
                uvloop.run(_serve_worker(options, child_end))
                status = 0
            except Exception:
                traceback.print_exc()
            finally:
                # Never fall back into the first process's code (it would fork workers of its own).
                os._exit(status)
        child_end.close()
        workers.append(WorkerLink(pid, parent_end))
    try:
        uvloop.run(_serve_main(options, workers))
    finally:
        for link in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(link.pid, signal.SIGTERM)
        for link in workers:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(link.pid, 0)
    return 0
