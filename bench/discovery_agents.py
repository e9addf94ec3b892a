"""Simulated agents for the discovery benchmarks: one grpc.aio channel and stream each, ACKing everything."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from meshbox.api.v1 import discovery_pb2, discovery_pb2_grpc

_PREFIX = "type.googleapis.com/meshbox.api.v1."
TYPES = [_PREFIX + t for t in ("Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration")]
ROUTE = TYPES[3]
CONNECT_TIMEOUT_S = 60.0


class Agent:
    """One simulated agent: a channel, a stream, ACK everything; note when routes were last ACKed."""

    def __init__(self, target: str, index: int) -> None:
        self.node = discovery_pb2.Node(id=f"bench-{index}.default", pod_name=f"bench-{index}",
                                       pod_namespace="default", pod_ip=f"10.3.{index // 250}.{index % 250 + 1}",
                                       labels={"app": "service-two"})
        self.channel = grpc.aio.insecure_channel(target)
        self.requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        self.versions: dict[str, str] = {}
        self.route_acked_at = 0.0
        self.synced = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _requests(self) -> Any:
        while (request := await self.requests.get()) is not None:
            yield request

    async def _run(self) -> None:
        for type_url in TYPES:
            self.requests.put_nowait(discovery_pb2.DiscoveryRequest(node=self.node, type_url=type_url))
        call = discovery_pb2_grpc.DiscoveryServiceStub(self.channel).StreamResources(self._requests())
        async for response in call:
            self.versions[response.type_url] = response.version_info
            self.requests.put_nowait(discovery_pb2.DiscoveryRequest(
                type_url=response.type_url, version_info=response.version_info, response_nonce=response.nonce))
            if response.type_url == ROUTE:
                self.route_acked_at = time.monotonic()
            if len(self.versions) == len(TYPES):
                self.synced.set()

    async def close(self) -> None:
        self.requests.put_nowait(None)
        self.task.cancel()
        await self.channel.close()


async def connect(target: str, count: int, first_index: int) -> list[Agent]:
    """``count`` agents, each synced (all four types received) before this returns."""
    agents = []
    for i in range(count):
        agents.append(Agent(target, first_index + i))
        if i % 100 == 99:
            await asyncio.sleep(0)  # let streams start as we go
    await asyncio.wait_for(asyncio.gather(*(a.synced.wait() for a in agents)), CONNECT_TIMEOUT_S)
    return agents
