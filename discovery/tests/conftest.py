"""Shared helpers for discovery tests: the tutorial's registry, an agent-side gRPC client,
and a discovery server running in-process on loopback (real grpc.aio and HTTP sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from ruamel.yaml import YAML

from meshbox.api.v1 import discovery_pb2, discovery_pb2_grpc
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.discovery.directory_source import DirectorySource
from meshbox.discovery.hub import Hub
from meshbox.discovery.payloads import CLUSTER, ENDPOINTS, LISTENER, PUSH_ORDER, ROUTE
from meshbox.discovery.server import PendingUpdate, Ports, Security, serve

MESSAGE_OF = {CLUSTER: pc.Cluster, ENDPOINTS: pc.ClusterLoadAssignment, LISTENER: pc.Listener,
              ROUTE: pc.RouteConfiguration}


def service(name: str, cluster_ip: str, port: int = 80, target: int | str = 8080, port_name: str = "http",
            namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": cluster_ip, "selector": {"app": name},
                     "ports": [{"name": port_name, "port": port, "targetPort": target}]}}


def pod(name: str, app: str, ip: str, version: str = "v1", port: int = 8080, namespace: str = "default",
        port_name: str = "") -> dict[str, Any]:
    ports: dict[str, Any] = {"containerPort": port}
    if port_name:
        ports["name"] = port_name
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": app, "version": version}},
            "spec": {"containers": [{"name": "app", "image": "echoserver", "ports": [ports]}]},
            "status": {"podIP": ip, "phase": "Running"}}


def route_rule(name: str, destination: str, weights: dict[str, int], precedence: int = 0,
               **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"destination": destination, "precedence": precedence,
                            "route": [{"labels": {"version": v}, "weight": w} for v, w in weights.items()]}
    spec.update(extra)
    return {"apiVersion": "routing.meshbox.io/v1alpha1", "kind": "RouteRule",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def tutorial_objects() -> list[dict[str, Any]]:
    """The tutorial's two services, service-two with a v1 and a v2 pod."""
    return [
        service("service-one", "10.96.0.11"),
        service("service-two", "10.96.0.12"),
        pod("service-one-a", "service-one", "10.1.0.11"),
        pod("service-two-v1", "service-two", "10.1.0.21", "v1"),
        pod("service-two-v2", "service-two", "10.1.0.22", "v2"),
    ]


def write_yaml(path: Path, docs: Iterable[dict[str, Any]]) -> None:
    """Write atomically (rename), like an editor or kubectl-style tool would, so a poll never sees half a file."""
    yaml = YAML(typ="safe")
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as fh:
        yaml.dump_all(list(docs), fh)
    tmp.replace(path)


def node(pod_name: str, ip: str, namespace: str = "default") -> discovery_pb2.Node:
    return discovery_pb2.Node(id=f"{pod_name}.{namespace}", pod_name=pod_name, pod_namespace=namespace, pod_ip=ip)


def unpack(response: discovery_pb2.DiscoveryResponse) -> list[Any]:
    out = []
    for item in response.resources:
        message = MESSAGE_OF[response.type_url]()
        assert item.type_url == response.type_url
        message.ParseFromString(item.value)
        out.append(message)
    return out


class AgentClient:
    """A test agent on one real gRPC stream: send requests, await responses with a deadline."""

    def __init__(self, channel: grpc.aio.Channel, node: discovery_pb2.Node) -> None:
        self.node = node
        self._requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
        self.call = stub.StreamResources(self._iterate())
        # Reads run in one task: cancelling a pending read (a timeout) would cancel the whole RPC.
        self._responses: asyncio.Queue[discovery_pb2.DiscoveryResponse | BaseException] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read_all())

    async def _read_all(self) -> None:
        try:
            async for response in self.call:
                self._responses.put_nowait(response)
            self._responses.put_nowait(EOFError("stream ended"))
        except grpc.aio.AioRpcError as exc:
            self._responses.put_nowait(exc)

    async def _iterate(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    def send(self, type_url: str, version: str = "", nonce: str = "", error: str = "") -> None:
        request = discovery_pb2.DiscoveryRequest(node=self.node, type_url=type_url, version_info=version,
                                                 response_nonce=nonce)
        if error:
            request.error_detail.code = 3
            request.error_detail.message = error
        self._requests.put_nowait(request)

    def subscribe_all(self, versions: dict[str, str] | None = None) -> None:
        for type_url in PUSH_ORDER:
            self.send(type_url, (versions or {}).get(type_url, ""))

    async def receive(self, timeout: float = 5.0) -> discovery_pb2.DiscoveryResponse:
        item = await asyncio.wait_for(self._responses.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        return item

    async def receive_all(self, count: int = 4) -> dict[str, discovery_pb2.DiscoveryResponse]:
        got = [await self.receive() for _ in range(count)]
        return {r.type_url: r for r in got}

    async def ack(self, response: discovery_pb2.DiscoveryResponse) -> None:
        self.send(response.type_url, response.version_info, response.nonce)

    async def expect_silence(self, seconds: float) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(self._responses.get(), seconds)

    def close(self) -> None:
        self._requests.put_nowait(None)


@dataclass
class RunningServer:
    hub: Hub
    ports: Ports
    task: asyncio.Task[None]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    async def http_get(self, path: str) -> tuple[int, str]:
        def fetch() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.http}{path}", timeout=5) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()
        return await asyncio.to_thread(fetch)


@contextlib.asynccontextmanager
async def running_server(registry_dir: Path, *, poll: float = 0.05, debounce: float = 0.02,
                         security: Security | None = None) -> AsyncIterator[RunningServer]:
    """A discovery server on loopback free ports, serving ``registry_dir`` and watching it
    (plaintext, or mutual TLS and the CA port with ``security``)."""
    hub = Hub(trust_domain=security.keeper.trust_domain if security is not None else None)
    pending = PendingUpdate(hub, quiet=debounce, max_wait=1.0)
    directory = DirectorySource(registry_dir)
    hub.update(directory.load())
    started: asyncio.Future[Ports] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(functools.partial(directory.watch, pending.offer, interval=poll), hub,
                                     host="127.0.0.1", grpc_port=0, http_port=0, started=started,
                                     security=security))
    ports = await asyncio.wait_for(started, 10)
    try:
        yield RunningServer(hub, ports, task)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pending.close()


def metric_value(text: str, name: str) -> float:
    """Sum of all samples of one metric family line prefix in Prometheus text output."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def kit() -> SimpleNamespace:
    """The helpers above, for test modules (which cannot import conftest under importlib mode)."""
    return SimpleNamespace(
        service=service, pod=pod, route_rule=route_rule, tutorial_objects=tutorial_objects, write_yaml=write_yaml,
        node=node, unpack=unpack, AgentClient=AgentClient, running_server=running_server, metric_value=metric_value,
    )


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    """A registry directory holding the tutorial's services and pods (in mesh.yaml)."""
    directory = tmp_path / "registry"
    directory.mkdir()
    write_yaml(directory / "mesh.yaml", tutorial_objects())
    return directory
