"""One proxy process: capture listeners, directly bound listeners, and atomic config apply."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from meshbox.proxy.context import ProxyContext
from meshbox.proxy.http_proxy import DownstreamHttp
from meshbox.proxy.inbound_tls import InboundGate
from meshbox.proxy.listen_socket import listening_socket
from meshbox.proxy.metrics import Stats
from meshbox.proxy.original_dst import original_dst
from meshbox.proxy.snapshot import (
    DISABLE,
    INBOUND,
    OUTBOUND,
    ClusterRuntime,
    ConfigRejected,
    ListenerRuntime,
    Snapshot,
)
from meshbox.proxy.tcp_proxy import DownstreamTcp
from meshbox.proxy.upstream_hosts import UpstreamHost

if TYPE_CHECKING:
    from meshbox.api.v1 import proxy_config_pb2 as pc

def protocol_for(ctx: ProxyContext, listener: ListenerRuntime) -> asyncio.Protocol:
    """The connection handler a listener calls for: through the inbound TLS gate when the listener's
    peer authentication mode admits mutual TLS, or when its TCP connections need authorizing."""
    if listener.mtls != DISABLE or (listener.authz is not None and not listener.http):
        return InboundGate(ctx, listener, functools.partial(connection_protocol, ctx, listener),
                           functools.partial(_refused, ctx, listener))
    return connection_protocol(ctx, listener)


def _refused(ctx: ProxyContext, listener: ListenerRuntime, flag: str) -> asyncio.Protocol:
    return DownstreamTcp(ctx, ctx.unknown_labels[listener.direction], refuse_flag=flag)


def connection_protocol(ctx: ProxyContext, listener: ListenerRuntime) -> asyncio.Protocol:
    """The L7 or L4 handler of a listener's connection (plaintext, or the inside of its TLS)."""
    if listener.http:
        return DownstreamHttp(ctx, listener)
    cluster = listener.cluster
    labels = cluster.labels[listener.direction] if cluster is not None else ctx.unknown_labels[listener.direction]
    return DownstreamTcp(ctx, labels, cluster=cluster)


class CaptureProtocol(asyncio.Protocol):
    """Accepts a redirected connection, recovers its original destination and hands the transport to
    the protocol of the matching listener (or to passthrough / refusal)."""

    def __init__(self, ctx: ProxyContext, inbound_port: bool) -> None:
        self.ctx = ctx
        self.inbound_port = inbound_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ctx = self.ctx
        sockname = transport.get_extra_info("sockname")
        dst = original_dst(transport.get_extra_info("socket")) or (sockname[0], sockname[1])
        ip, port = dst
        inbound = self.inbound_port or ip == ctx.pod_ip
        snap = ctx.snapshot
        listener = snap.match(ip, port, inbound) if snap is not None else None
        proto: asyncio.Protocol
        if listener is not None:
            proto = protocol_for(ctx, listener)
            if listener.pass_unknown_hosts and isinstance(proto, DownstreamHttp):
                proto.original_dst = dst
        else:
            labels = ctx.unknown_labels[INBOUND if inbound else OUTBOUND]
            if self._is_loop(ip, port, sockname[0]) or ctx.registry_only:
                proto = DownstreamTcp(ctx, labels, refuse_flag="NR")
            else:
                proto = DownstreamTcp(ctx, labels, target=UpstreamHost(ip, port))
        transport.set_protocol(proto)
        proto.connection_made(transport)

    def _is_loop(self, ip: str, port: int, local_ip: str) -> bool:
        if port not in self.ctx.capture_ports:
            return False
        # Loopback: 127.0.0.0/8 or ::1, as the kernel formats them (the ipaddress module would cost
        # this process about 0.2 MB for this one test).
        loopback = ip.startswith("127.") or ip == "::1"
        return loopback or ip in (local_ip, self.ctx.pod_ip, "0.0.0.0")


class ProxyServer:
    """Owns the listening sockets of one process and swaps config snapshots."""

    def __init__(self, ctx: ProxyContext, outbound_port: int, inbound_port: int, reuse_port: bool) -> None:
        self.ctx = ctx
        self.outbound_port = outbound_port
        self.inbound_port = inbound_port
        self.reuse_port = reuse_port
        self.capture: list[asyncio.Server] = []
        self.bound: dict[tuple[str, int], asyncio.Server] = {}
        self.version = 0
        self.listening = False

    async def start(self) -> None:
        """Bind the capture listeners (outbound, and inbound when split from it) on IPv4, and on IPv6
        too where the network namespace has it."""
        ctx = self.ctx
        self.outbound_port = await self._capture(lambda: CaptureProtocol(ctx, False), self.outbound_port)
        ports = {self.outbound_port}
        if self.inbound_port and self.inbound_port != self.outbound_port:
            self.inbound_port = await self._capture(lambda: CaptureProtocol(ctx, True), self.inbound_port)
            ports.add(self.inbound_port)
        ctx.capture_ports = frozenset(ports)
        self.listening = True

    async def _capture(self, factory: Callable[[], asyncio.Protocol], port: int) -> int:
        server = await self._serve(factory, "0.0.0.0", port)
        self.capture.append(server)
        port = server.sockets[0].getsockname()[1]
        try:
            self.capture.append(await self._serve(factory, "::", port))
        except OSError as exc:
            # No IPv6 here (or the port is taken on it): IPv4 capture still works.
            print(f"meshbox-proxy: no IPv6 capture on port {port}: {exc.strerror or exc}", file=sys.stderr)
        return int(port)

    async def _serve(self, factory: Callable[[], asyncio.Protocol], host: str, port: int) -> asyncio.Server:
        sock = listening_socket(host, port, reuse_port=self.reuse_port)
        try:
            return await self.ctx.loop.create_server(factory, sock=sock, backlog=1024)
        except BaseException:
            sock.close()
            raise

    def _bound_factory(self, key: tuple[str, int]) -> asyncio.Protocol:
        """Per accepted connection on a bound listener: the listener as the current snapshot has it."""
        ctx = self.ctx
        snap = ctx.snapshot
        if snap is not None:
            for lis in snap.listeners:
                if lis.bind and (lis.address, lis.port) == key:
                    return protocol_for(ctx, lis)
        return DownstreamTcp(ctx, ctx.unknown_labels[INBOUND], refuse_flag="NR")

    async def apply(self, config: pc.ProxyConfig) -> int:
        """Compile in this process, then apply_snapshot: for tests and library use. The proxy command
        compiles in child processes instead, so protobuf never loads in it."""
        from meshbox.proxy.config_compiler import compile_config

        return await self.apply_snapshot(compile_config(config, self.ctx.workload))

    async def apply_snapshot(self, snap: Snapshot) -> int:
        """Apply a compiled config atomically: adopt it, bind new listeners first, swap, then close the
        removed ones. On any failure nothing changes and ConfigRejected says why. Returns the new version."""
        await snap.adopt_gradually(self.ctx.hosts, self.version + 1)
        wanted = {(lis.address, lis.port) for lis in snap.bound_listeners()}
        added: dict[tuple[str, int], asyncio.Server] = {}
        try:
            for key in sorted(wanted - self.bound.keys()):
                added[key] = await self._serve(functools.partial(self._bound_factory, key), key[0], key[1])
        except OSError as exc:
            for server in added.values():
                server.close()
            raise ConfigRejected(f"config: cannot bind listener: {exc.strerror or exc}") from None
        if self.ctx.snapshot is not None:
            carry_over(self.ctx.snapshot.clusters, snap.clusters, self.ctx.stats)
        self.ctx.snapshot = snap
        self.version = snap.version
        self.bound.update(added)
        for key in list(self.bound.keys() - wanted):
            self.bound.pop(key).close()
        self.ctx.hosts.retain(snap.host_keys)
        for conn in list(self.ctx.connections):
            # HTTP/2 connections whose listener left the config get a GOAWAY now (HTTP/1.1 ones find out
            # at their next request).
            swapped = getattr(conn, "config_swapped", None)
            if swapped is not None:
                swapped()
        self.ctx.stats.incr("config_applied")
        return snap.version

    @property
    def ready(self) -> bool:
        return self.listening and self.ctx.snapshot is not None

    def drain(self) -> None:
        """Stop accepting, finish exchanges in flight, close kept-alive connections as they go idle."""
        self.ctx.draining = True
        self.listening = False
        for server in [*self.capture, *self.bound.values()]:
            server.close()
        for conn in list(self.ctx.connections):
            if isinstance(conn, DownstreamHttp):
                if not conn.busy():
                    conn.close()
            elif (goaway := getattr(conn, "drain", None)) is not None:
                # An HTTP/2 connection: GOAWAY now, streams in flight finish, then it closes.
                goaway()
        for host in self.ctx.hosts.all():
            for up in host.idle:
                up.close()
            host.idle.clear()
        upstream_h2 = sys.modules.get("meshbox.proxy.upstream_h2")
        if upstream_h2 is not None:
            # Loaded only once an HTTP/2 client came: its idle upstream connections close too.
            upstream_h2.close_idle()

    def ports(self) -> dict[str, int]:
        """Actual ports (useful when 0 asked for an ephemeral one)."""
        bound = {f"{k[0]}:{k[1]}": srv.sockets[0].getsockname()[1] for k, srv in self.bound.items() if srv.sockets}
        return {"outbound": self.outbound_port, "inbound": self.inbound_port or self.outbound_port, **bound}


def carry_over(before: Mapping[str, ClusterRuntime], after: Mapping[str, ClusterRuntime], stats: Stats) -> None:
    """A new config replaces the clusters ``before`` with ``after``: a cluster whose resilience settings
    did not change keeps its counts (one ClusterLimits for the requests of both configs) and its
    ejections (discovery pushes a new config on any change in the mesh). The ejections gauge follows
    what is ejected now."""
    ejected_before = sum(len(c.guard.outlier.ejected) for c in before.values()
                         if c.guard is not None and c.guard.outlier is not None)
    for name, cluster in after.items():
        old = before.get(name)
        if old is None or old.resilience != cluster.resilience:
            continue
        cluster.limits = old.limits
        if cluster.guard is not None and old.guard is not None:
            cluster.guard.limits = old.limits
            cluster.guard.inherit(old.guard)
    ejected_after = sum(len(c.guard.outlier.ejected) for c in after.values()
                        if c.guard is not None and c.guard.outlier is not None)
    if ejected_after != ejected_before:
        stats.incr("outlier_detection_ejections_active", ejected_after - ejected_before)


def announce(kind: str, host: str, port: int) -> None:
    """One parseable line on stderr per listening port, so callers using port 0 learn the real one."""
    print(f"meshbox-proxy: {kind} listening on {host}:{port}", file=sys.stderr, flush=True)
