"""Helpers for the proxy tests: real backends, a real proxy in the test's event loop, real clients.

Backends parse with h11 directly (not with the proxy's codec layer), so a proxy bug cannot hide
behind the same bug in the test server. Everything listens on 127.0.0.1 with ports chosen by the
kernel (bound listeners need a fixed port in the config, so ``free_port`` finds one below the ephemeral range).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import h11
import pytest
import uvloop

from conftest import free_port  # type: ignore[import-not-found]
from meshbox.api.loader import message_from_data
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.proxy.access_log import AccessLog
from meshbox.proxy.codec import get_codec
from meshbox.proxy.context import ProxyContext
from meshbox.proxy.server import ProxyServer
from meshbox.proxy.snapshot import Workload

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    """Run a test coroutine on uvloop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return uvloop.run(bounded())


@dataclass
class Seen:
    """A request as the backend received it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    peer: tuple[str, int]

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None


Handler = Callable[["Backend", Seen, asyncio.StreamWriter], Awaitable[bool]]


async def echo(backend: Backend, req: Seen, writer: asyncio.StreamWriter) -> bool:
    """200 with a JSON body describing the request; returns True to keep the connection."""
    body = json.dumps({
        "backend": backend.name, "method": req.method.decode(), "target": req.target.decode(),
        "headers": [[n.decode(), v.decode("latin-1")] for n, v in req.headers], "body": req.body.decode("latin-1"),
    }).encode()
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                 b"x-backend: %s\r\n\r\n%s" % (len(body), backend.name.encode(), body))
    return True


@dataclass
class Backend:
    """An HTTP/1.1 server on 127.0.0.1 that records requests and answers with ``handler``."""

    name: str = "b"
    handler: Handler = echo
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    # Every byte received, per connection, as it came off the socket (what the proxy really sent).
    raw: list[bytearray] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = writer.get_extra_info("peername")
        raw = bytearray()
        self.raw.append(raw)
        buffered = b""
        try:
            while True:
                conn = h11.Connection(h11.SERVER)
                if buffered:  # (receive_data(b"") would mean EOF to h11)
                    conn.receive_data(buffered)
                request: h11.Request | None = None
                body = b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(65536)
                        raw += data
                        conn.receive_data(data)
                        if not data and conn.their_state is h11.IDLE:
                            return
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += bytes(event.data)
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.PAUSED:
                        break
                if request is None:
                    return
                buffered = conn.trailing_data[0]
                seen = Seen(request.method, request.target, list(request.headers), body, peer)
                self.requests.append(seen)
                keep = await self.handler(self, seen, writer)
                await writer.drain()
                if not keep or seen.header(b"connection") == b"close":
                    return
        except (ConnectionError, h11.RemoteProtocolError):
            return
        finally:
            writer.close()


def http_config(port: int, clusters: dict[str, list[int]], *, routes: list[dict[str, Any]] | None = None,
                domains: list[str] | None = None, direction: str = "OUTBOUND", lb: str = "ROUND_ROBIN",
                extra_listeners: list[dict[str, Any]] | None = None, timeout: str | None = None,
                retries: int = 0, connect_timeout: str | None = None) -> pc.ProxyConfig:
    """A ProxyConfig with one bound HTTP listener on 127.0.0.1:port routing to clusters of 127.0.0.1 ports."""
    if routes is None:
        route: dict[str, Any] = {"clusters": [{"cluster": next(iter(clusters)), "weight": 100}]}
        if timeout:
            route["timeout"] = timeout
        if retries:
            route["retries"] = {"attempts": retries}
        routes = [route]
    cluster_list = []
    for name in clusters:
        c: dict[str, Any] = {"name": name, "lb_policy": lb, "service": f"{name}.default.svc.cluster.local"}
        if connect_timeout:
            c["connect_timeout"] = connect_timeout
        cluster_list.append(c)
    data = {
        "listeners": [{"name": "http", "direction": direction, "address": "127.0.0.1", "port": port,
                       "protocol": "HTTP", "route_config": "rc", "bind": True}, *(extra_listeners or [])],
        "route_configs": [{"name": "rc", "virtual_hosts": [{"name": "vh", "domains": domains or ["*"],
                                                              "routes": routes}]}],
        "clusters": cluster_list,
        "endpoints": [{"cluster_name": name, "endpoints": [{"address": "127.0.0.1", "port": p} for p in ports]}
                      for name, ports in clusters.items()],
    }
    return message_from_data(data, pc.ProxyConfig)


@dataclass
class InProcessProxy:
    """A ProxyServer running in the test's event loop with its access log in a file."""

    server: ProxyServer
    log_path: Path

    @property
    def ctx(self) -> ProxyContext:
        return self.server.ctx

    def log_lines(self) -> list[str]:
        self.ctx.access_log.flush()
        return self.log_path.read_text().splitlines()

    async def wait_log(self, count: int, timeout: float = 5) -> list[str]:
        """The access log once it has at least ``count`` lines (lines are written when exchanges end)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.log_lines()
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            await asyncio.sleep(0.01)


@asynccontextmanager
async def proxy(config: pc.ProxyConfig, tmp_path: Path, *, codec: str = "httptools", fmt: str = "",
                pod_ip: str | None = None, registry_only: bool = False) -> AsyncIterator[InProcessProxy]:
    log_path = tmp_path / f"access-{time.monotonic_ns()}.log"
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    loop = asyncio.get_running_loop()
    log = AccessLog(fmt, fd)
    log.attach(loop)
    ctx = ProxyContext(loop=loop, codec=get_codec(codec), access_log=log,
                       workload=Workload("sleep", "default", "sleep"), pod_ip=pod_ip, registry_only=registry_only)
    server = ProxyServer(ctx, 0, 0, reuse_port=False)
    await server.start()
    await server.apply(config)
    try:
        yield InProcessProxy(server, log_path)
    finally:
        server.drain()
        await asyncio.sleep(0.01)  # let closing connections write their last lines
        log.close()
        os.close(fd)


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    """A keep-alive HTTP/1.1 client over one real connection, parsing with h11."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, method: str = "GET", target: str = "/", headers: list[tuple[str, str]] | None = None,
                      body: bytes = b"", host: str = "svc") -> Response:
        hdrs = [("host", host), *(headers or [])]
        if body and not any(n.lower() in ("content-length", "transfer-encoding") for n, _ in hdrs):
            hdrs.append(("content-length", str(len(body))))
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        data = self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        if body:
            data += self.conn.send(h11.Data(data=body))
        data += self.conn.send(h11.EndOfMessage())
        self.writer.write(data)
        return await self.read_response()

    async def read_response(self) -> Response:
        status, headers, body = 0, [], b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.reader.read(65536))
                continue
            if isinstance(event, h11.Response):
                status, headers = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return Response(status, headers, body)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("closed before a complete response")

    def close(self) -> None:
        self.writer.close()


async def get(port: int, target: str = "/", **kwargs: Any) -> Response:
    """One request on a new connection."""
    client = await Client.connect(port)
    try:
        return await client.request(target=target, **kwargs)
    finally:
        client.close()


async def raw_exchange(port: int, data: bytes, timeout: float = 3) -> tuple[bytes, bool]:
    """Send raw bytes, read until the proxy closes (True) or ``timeout`` passes (False)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    received = b""
    closed = False
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    closed = True
                    break
                received += chunk
    except (TimeoutError, ConnectionError):
        closed = closed or writer.is_closing()
    writer.close()
    return received, closed


def log_fields(line: str) -> list[str]:
    """Split a default-format access log line into its 13 fields (quotes removed)."""
    import shlex

    start, rest = line.split("] ", 1)
    return [start.lstrip("["), *shlex.split(rest)]


@pytest.fixture
def proxy_cli(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start ``meshbox-proxy`` as a real process (stopped at teardown); its stdout (the access log) goes
    to ``proc.log_path`` so a busy proxy never blocks on a full pipe."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        log_path = tmp_path / f"proxy-{len(procs)}.log"
        with log_path.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "meshbox.proxy", *args], stdout=out,
                                    stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        proc.log_path = log_path  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def config_file(config: pc.ProxyConfig, tmp_path: Path) -> Path:
    """``config`` as a file for ``meshbox-proxy --config`` (JSON, which the YAML loader reads)."""
    from google.protobuf import json_format

    path = tmp_path / f"proxy-{time.monotonic_ns()}.yaml"
    path.write_text(json_format.MessageToJson(config, preserving_proto_field_name=True))
    return path


async def standalone(proxy_cli: Callable[..., subprocess.Popen[str]], config: pc.ProxyConfig, tmp_path: Path,
                     *args: str, port: int, timeout: float = 10,
                     env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """A ``meshbox-proxy`` process (the build as installed: compiled unless built pure) serving ``config``,
    returned once ``port`` (a bound listener of it) accepts connections; its admin port in ``admin_port_of``."""
    proc = proxy_cli("--config", str(config_file(config, tmp_path)), "--admin-port", "0", "--outbound-port", "0",
                     *args, env=env)
    proc.admin_port = await asyncio.to_thread(admin_port, proc, timeout)  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError(f"proxy never listened on {port} (exit status {proc.poll()})") from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        return proc


def admin_port(proc: subprocess.Popen[str], timeout: float = 10) -> int:
    """Read the 'admin listening on' line the proxy prints on stderr."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"proxy exited ({proc.poll()}) before announcing its admin port")
        if "admin listening on" in line:
            return int(line.rsplit(":", 1)[1])
    raise AssertionError("no admin port announced")


class Kit:
    """The helpers above, handed to test modules by the ``kit`` fixture (they cannot import conftest)."""

    Backend = Backend
    Client = Client
    echo = staticmethod(echo)
    run = staticmethod(run)
    free_port = staticmethod(free_port)
    get = staticmethod(get)
    http_config = staticmethod(http_config)
    proxy = staticmethod(proxy)
    raw_exchange = staticmethod(raw_exchange)
    log_fields = staticmethod(log_fields)
    admin_port = staticmethod(admin_port)
    standalone = staticmethod(standalone)

    @staticmethod
    def admin_port_of(proc: subprocess.Popen[str]) -> int:
        """The admin port of a proxy started by ``standalone``."""
        return proc.admin_port  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
def kit() -> type[Kit]:
    return Kit
