"""Shared pieces of the agent's process tests.

- ``canned_discovery``: a real gRPC DiscoveryService on loopback that serves whatever
  resources the test sets (state of the world, a nonce per response, pushes on change)
  and records every request the agent sends (ACKs, NACKs, versions);
- ``backends``: plain HTTP servers on loopback that answer with their own name;
- ``start_agent``: runs ``meshbox-agent sidecar`` as a real process with ephemeral ports,
  which runs the real ``meshbox-proxy``; everything is stopped by PID at teardown;
- ``load``: bounded request loops (count and time) that record every failure;
- ``kit``: helper functions (free ports, polling, GET, building an HTTP world).
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message

from conftest import free_port  # type: ignore[import-not-found]
from meshbox.api.v1 import discovery_pb2, discovery_pb2_grpc
from meshbox.api.v1 import proxy_config_pb2 as pc

VENV_BIN = Path(sys.executable).parent
PREFIX = "type.googleapis.com/meshbox.api.v1."
CLUSTER, ENDPOINTS, LISTENER, ROUTES = (PREFIX + n for n in (
    "Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration"))
TYPE_ORDER = (CLUSTER, ENDPOINTS, LISTENER, ROUTES)
World = dict[str, list[Message]]


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def get(port: int, path: str = "/", host: str = "app", timeout: float = 5.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        reply = conn.getresponse()
        return reply.status, reply.read().decode()
    finally:
        conn.close()


class CannedDiscovery(discovery_pb2_grpc.DiscoveryServiceServicer):
    """A real discovery server whose world is set by the test (not built from a registry)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._world: dict[str, tuple[str, list[any_pb2.Any]]] = {}
        self._streams: list[queue.Queue[str | None]] = []
        self._nonces = itertools.count(1)
        self.requests: list[discovery_pb2.DiscoveryRequest] = []
        self.responses: list[discovery_pb2.DiscoveryResponse] = []
        self.server: grpc.Server | None = None
        self.port = 0

    def start(self, port: int = 0) -> int:
        server = grpc.server(ThreadPoolExecutor(max_workers=16))
        discovery_pb2_grpc.add_DiscoveryServiceServicer_to_server(self, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{port}")
        assert self.port, f"cannot bind 127.0.0.1:{port}"
        server.start()
        self.server = server
        return self.port

    def stop(self) -> None:
        with self._lock:
            for q in self._streams:
                q.put(None)
        if self.server is not None:
            self.server.stop(grace=None).wait(5)
            self.server = None

    def set_world(self, version: str, world: World) -> None:
        """Serve ``world`` from now on; open streams get the types that changed, in order."""
        packed = {t: [_pack(m) for m in world.get(t, [])] for t in TYPE_ORDER}
        with self._lock:
            changed = [t for t in TYPE_ORDER if t not in self._world or self._world[t][1] != packed[t]]
            for t in changed:
                self._world[t] = (version, packed[t])
            for q in self._streams:
                for t in changed:
                    q.put(t)

    def acked(self, type_url: str) -> list[str]:
        with self._lock:
            return [r.version_info for r in self.requests
                    if r.type_url == type_url and r.response_nonce and not r.HasField("error_detail")]

    def sent(self, type_url: str) -> int:
        """How many responses of ``type_url`` went out, on every stream."""
        with self._lock:
            return sum(r.type_url == type_url for r in self.responses)

    def nacks(self) -> list[discovery_pb2.DiscoveryRequest]:
        with self._lock:
            return [r for r in self.requests if r.HasField("error_detail")]

    def first_requests(self) -> list[discovery_pb2.DiscoveryRequest]:
        with self._lock:
            return [r for r in self.requests if not r.response_nonce]

    def StreamResources(
        self, request_iterator: Iterator[discovery_pb2.DiscoveryRequest], context: grpc.ServicerContext
    ) -> Iterator[discovery_pb2.DiscoveryResponse]:
        inbox: queue.Queue[str | None] = queue.Queue()
        with self._lock:
            self._streams.append(inbox)

        def read() -> None:
            try:
                for request in request_iterator:
                    with self._lock:
                        self.requests.append(request)
                    if not request.response_nonce:
                        inbox.put(request.type_url)
            except grpc.RpcError:
                pass
            finally:
                inbox.put(None)

        threading.Thread(target=read, daemon=True).start()
        try:
            while (type_url := inbox.get()) is not None:
                with self._lock:
                    if type_url not in self._world:
                        continue
                    version, packed = self._world[type_url]
                    response = discovery_pb2.DiscoveryResponse(
                        type_url=type_url, version_info=version, resources=packed, nonce=str(next(self._nonces)))
                    self.responses.append(response)
                yield response
        finally:
            with self._lock:
                self._streams.remove(inbox)


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message, type_url_prefix="type.googleapis.com/")
    return packed


@pytest.fixture
def canned_discovery() -> Iterator[CannedDiscovery]:
    server = CannedDiscovery()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def http_world(listener_port: int, targets: dict[str, int], weights: dict[str, int] | None = None) -> World:
    """An HTTP listener bound on 127.0.0.1:listener_port routing every request to clusters named
    after ``targets`` (cluster → backend port), split by ``weights`` (default: the first only)."""
    weights = weights or {next(iter(targets)): 1}
    return {
        CLUSTER: [pc.Cluster(name=name, service=f"{name}.default.svc.cluster.local") for name in targets],
        ENDPOINTS: [pc.ClusterLoadAssignment(cluster_name=name, endpoints=[pc.Endpoint(address="127.0.0.1",
                                                                                       port=port)])
                    for name, port in targets.items()],
        LISTENER: [pc.Listener(name=f"127.0.0.1_{listener_port}", direction=pc.OUTBOUND, address="127.0.0.1",
                               port=listener_port, protocol=pc.HTTP, route_config="app", bind=True)],
        ROUTES: [pc.RouteConfiguration(name="app", virtual_hosts=[pc.VirtualHost(
            name="app", domains=["*"],
            routes=[pc.Route(clusters=[pc.WeightedCluster(cluster=c, weight=w) for c, w in weights.items()])])])],
    }


class _NamedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def backends() -> Iterator[Callable[[str], int]]:
    """Factory: ``port = backends("v1")`` starts a loopback HTTP server answering ``v1``."""
    servers: list[ThreadingHTTPServer] = []

    def start(name: str) -> int:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _NamedHandler)
        server.daemon_threads = True
        server.name = name  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return int(server.server_address[1])

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@dataclass
class AgentRun:
    """A running ``meshbox-agent sidecar`` process and its ports and output files."""

    proc: subprocess.Popen[bytes]
    status_port: int
    admin_port: int
    stdout_path: Path
    stderr_path: Path

    def ready_status(self) -> int:
        try:
            return get(self.status_port, "/healthz/ready", timeout=2)[0]
        except OSError:
            return 0

    def wait_ready(self, timeout: float = 20.0) -> None:
        wait_until(lambda: self.ready_status() == 200, timeout, f"agent ready; its log:\n{self.log()}")

    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def proxy_pids(self) -> list[int]:
        """PIDs of the agent's child processes (the proxy)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                    pids.append(int(stat.parent.name))
        return pids


@dataclass
class AgentFactory:
    tmp_path: Path
    runs: list[AgentRun] = field(default_factory=list)

    def __call__(self, discovery_address: str, *, drain_seconds: float = 0.5,
                 agent_args: Sequence[str] = (), proxy_args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> AgentRun:
        n = len(self.runs)
        status_port, admin_port = free_port(), free_port()
        out, err = self.tmp_path / f"agent{n}.stdout", self.tmp_path / f"agent{n}.stderr"
        pod_env = {"POD_NAME": "app-1", "POD_NAMESPACE": "default", "POD_IP": "127.0.0.1"}
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [str(VENV_BIN / "meshbox-agent"), "sidecar", "--discovery-address", discovery_address,
                 *([] if "--ca-root-file" in agent_args else ["--plaintext"]),
                 "--status-port", str(status_port), "--admin-port", str(admin_port),
                 "--drain-seconds", str(drain_seconds), *agent_args,
                 "--", "--outbound-port", "0", *proxy_args],
                env={**os.environ, **pod_env, **(env or {})}, stdout=stdout, stderr=stderr,
                start_new_session=True,
            )
        run = AgentRun(proc, status_port, admin_port, out, err)
        self.runs.append(run)
        return run

    def cleanup(self) -> None:
        for run in self.runs:
            if run.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.proc.pid, signal.SIGTERM)
                try:
                    run.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    run.proc.kill()
                    run.proc.wait()
            # The agent's process group holds the proxy too; make sure nothing outlives the test.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.proc.pid, signal.SIGKILL)


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[AgentFactory]:
    factory = AgentFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


@dataclass
class Load:
    """Worker threads sending GETs on kept-alive connections until stopped, a request cap or a deadline."""

    port: int
    workers: int = 4
    max_requests: int = 20_000
    max_seconds: float = 60.0
    bodies: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Load:
        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.workers):
            thread = threading.Thread(target=self._work, args=(deadline,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _work(self, deadline: float) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if self.sent >= self.max_requests:
                    return
                self.sent += 1
            try:
                conn.request("GET", "/", headers={"Host": "app"})
                reply = conn.getresponse()
                body = reply.read().decode()
                outcome = body if reply.status == 200 else None
                body = body if outcome is not None else f"HTTP {reply.status}: {body}"
                if reply.getheader("connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                outcome = None
                body = f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            with self._lock:
                if outcome is None:
                    self.failures.append(body)
                else:
                    self.bodies[outcome] = self.bodies.get(outcome, 0) + 1
        conn.close()

    def stop(self) -> Load:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)
        return self

    @property
    def succeeded(self) -> int:
        with self._lock:
            return sum(self.bodies.values())


@pytest.fixture
def load() -> Iterator[Callable[..., Load]]:
    made: list[Load] = []

    def start(port: int, **kwargs: object) -> Load:
        run = Load(port, **kwargs).start()  # type: ignore[arg-type]
        made.append(run)
        return run

    try:
        yield start
    finally:
        for run in made:
            run.stop()


class Kit:
    """Helpers test modules reach through the ``kit`` fixture (they cannot import this file)."""

    CLUSTER, ENDPOINTS, LISTENER, ROUTES = CLUSTER, ENDPOINTS, LISTENER, ROUTES
    free_port = staticmethod(free_port)
    wait_until = staticmethod(wait_until)
    get = staticmethod(get)
    http_world = staticmethod(http_world)


@pytest.fixture
def kit() -> type[Kit]:
    return Kit
