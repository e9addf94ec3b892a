"""The Python part of meshbox-proxy's CPU per request, without the kernel: one client connection and one
pooled upstream connection with in-memory transports, driven by request/response pairs in this process.

Not a ``make bench`` row (the rows measure the real thing, sockets included, against nginx): a quick and
steady number for comparing two builds of the hot path, and a loop to run under ``perf record`` or py-spy.
Each round times ``--requests`` exchanges (CPU time of the thread running them); the best round is printed, since
other load on the machine only ever adds time. Run it with the interpreter of the build to measure, e.g.
``.venv/bin/python bench/proxy_inprocess.py`` (compiled with ``make venv``; the pure build is slower).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import tempfile
import threading
import time
from typing import Any

import uvloop

from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.proxy.access_log import AccessLog
from meshbox.proxy.codec import get_codec
from meshbox.proxy.config_compiler import compile_config
from meshbox.proxy.context import ProxyContext
from meshbox.proxy.http_proxy import DownstreamHttp
from meshbox.proxy.snapshot import Workload
from meshbox.proxy.tracing import Tracer
from meshbox.proxy.upstream_http import UpstreamHttp

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n"
BODY = b"x" * 400
# What nginx answers in bench_proxy (its headers, a 400-byte body).
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 07 Dec 2026 00:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 400\r\nConnection: keep-alive\r\n\r\n" + BODY)


class MemoryTransport:
    """Enough of an asyncio transport for the proxy's protocols: writes are kept, flow control is a no-op."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.written: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _config() -> pc.ProxyConfig:
    """bench_proxy's config: one outbound HTTP listener routing / to one endpoint."""
    config = pc.ProxyConfig()
    config.listeners.add(name="bench", direction=pc.OUTBOUND, address="127.0.0.1", port=18080, protocol=pc.HTTP,
                         route_config="bench", bind=True)
    table = config.route_configs.add(name="bench")
    route = table.virtual_hosts.add(name="bench", domains=["*"]).routes.add()
    route.match.prefix = "/"
    route.clusters.add(cluster="backend", weight=1)
    config.clusters.add(name="backend", lb_policy=pc.ROUND_ROBIN, service="backend.bench.svc.cluster.local")
    config.endpoints.add(cluster_name="backend").endpoints.add(address="127.0.0.1", port=18081)
    return config


def measure(requests: int, rounds: int, trace: bool = False) -> float:
    """Best CPU microseconds per request over ``rounds`` rounds of ``requests`` exchanges; with ``trace``,
    every request is traced (100 % sampling) and its spans sent to a Unix datagram socket that a thread
    of this process drains, as the agent would (CPU is this thread's, so the reading is not counted)."""
    loop = uvloop.new_event_loop()  # never run: timers and the access log's flush are only scheduled
    devnull = os.open(os.devnull, os.O_WRONLY)
    tmp = tempfile.TemporaryDirectory(prefix="meshbox-inprocess-")
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(os.path.join(tmp.name, "spans.sock"))
    sink.settimeout(0.2)
    draining = True

    def drain() -> None:
        while draining:
            with contextlib.suppress(TimeoutError):
                sink.recv(1 << 16)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        log = AccessLog("", devnull)  # the default (Envoy) format, as in bench_proxy
        log.attach(loop)
        ctx = ProxyContext(loop=loop, codec=get_codec("httptools"), access_log=log,
                           workload=Workload("sleep", "default", "sleep"))
        if trace:
            ctx.tracer = Tracer(loop, ctx.stats, 100, os.path.join(tmp.name, "spans.sock"), ctx.workload)
        snap = compile_config(_config(), ctx.workload)
        snap.adopt(ctx.hosts, 1)
        ctx.snapshot = snap
        host = snap.clusters["backend"].hosts[0]
        down = DownstreamHttp(ctx, snap.listeners[0])
        client = MemoryTransport(("127.0.0.1", 40000))
        down.connection_made(client)  # type: ignore[arg-type]
        up = UpstreamHttp(ctx, host)
        server = MemoryTransport(("127.0.0.1", 18081))
        up.connection_made(server)  # type: ignore[arg-type]
        host.idle.append(up)  # the pooled connection every request takes

        def exchanges(n: int) -> None:
            for _ in range(n):
                down.data_received(REQUEST)
                up.data_received(RESPONSE)

        exchanges(2000)  # warm-up (caches, first-use allocations)
        if not client.written[-1].endswith(BODY) or not server.written[-1].startswith(b"GET / HTTP/1.1\r\n"):
            raise RuntimeError(f"the proxy did not relay the exchange: {client.written[-1][:200]!r}")
        best = float("inf")
        tracer = ctx.tracer
        for _ in range(rounds):
            client.written.clear()
            server.written.clear()
            started = time.thread_time()
            exchanges(requests)
            if tracer is not None:
                tracer.flush()  # the timer's flush, which never fires here (the loop does not run)
            best = min(best, (time.thread_time() - started) * 1e6 / requests)
        log.flush(final=True)
        return best
    finally:
        draining = False
        reader.join()
        sink.close()
        tmp.cleanup()
        os.close(devnull)
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10000, help="exchanges per round (default 10000)")
    parser.add_argument("--rounds", type=int, default=15, help="rounds; the best one is printed (default 15)")
    parser.add_argument("--trace", action="store_true", help="trace every request (tracing on, 100 %% sampling)")
    args = parser.parse_args()
    print(f"{measure(args.requests, args.rounds, args.trace):.2f} us CPU per request (Python part, best of "
          f"{args.rounds} rounds of {args.requests}{', tracing 100 %' if args.trace else ''})")


if __name__ == "__main__":
    main()
