"""The proxy's admin API as the agent uses it (127.0.0.1 only, see the proxy contract).

``POST /config`` takes a binary ProxyConfig: 200 = validated and swapped in atomically,
400 = refused with the reason as plain text (the old config keeps serving).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshbox.agent.http_client import HttpUnreachable, http_request
from meshbox.api.v1 import proxy_config_pb2

PROTOBUF = "application/x-protobuf"


class ConfigRejected(ValueError):
    """The proxy refused a config; the message is its reason."""


@dataclass(frozen=True)
class ProxyAdmin:
    port: int
    host: str = "127.0.0.1"
    timeout: float = 10.0
    probe_timeout: float = 1.0  # readiness answers within the kubelet's default probe timeout

    async def apply(self, config: proxy_config_pb2.ProxyConfig) -> None:
        """Swap ``config`` into the running proxy.

        Raises ConfigRejected when the proxy refuses it, HttpUnreachable when it cannot be asked.
        """
        reply = await http_request(
            self.host, self.port, "POST", "/config",
            body=config.SerializeToString(), content_type=PROTOBUF, timeout=self.timeout,
        )
        if reply.status == 200:
            return
        if 400 <= reply.status < 500:
            raise ConfigRejected(reply.text or f"HTTP {reply.status} with no reason")
        # 5xx: the proxy is starting or stopping; the caller retries as if it were unreachable.
        raise HttpUnreachable(f"POST /config answered HTTP {reply.status}: {reply.text}")

    async def ready(self) -> bool:
        """Whether the proxy says it is ready (a config applied and its listeners bound)."""
        try:
            reply = await http_request(self.host, self.port, "GET", "/ready", timeout=self.probe_timeout)
        except HttpUnreachable:
            return False
        return reply.status == 200

    async def prometheus(self) -> str:
        """The proxy's metrics in Prometheus text format (``GET /stats/prometheus``)."""
        reply = await http_request(self.host, self.port, "GET", "/stats/prometheus", timeout=self.probe_timeout)
        if reply.status != 200:
            raise HttpUnreachable(f"GET /stats/prometheus answered HTTP {reply.status}: {reply.text}")
        return reply.body.decode("utf-8", errors="replace")

    async def drain(self) -> None:
        """Ask the proxy to stop accepting new connections (``POST /drain_listeners``)."""
        await self._post("/drain_listeners")

    async def quit(self) -> None:
        """Ask the proxy to exit (``POST /quitquitquit``)."""
        await self._post("/quitquitquit")

    async def _post(self, target: str) -> None:
        reply = await http_request(self.host, self.port, "POST", target, timeout=self.timeout)
        if reply.status != 200:
            raise HttpUnreachable(f"POST {target} answered HTTP {reply.status}: {reply.text}")
