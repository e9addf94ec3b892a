"""Applies configs to the proxy one at a time and remembers the last good one.

The last good config is what a restarted proxy gets back (:meth:`ConfigApplier.restore`)
before it is ready, and what keeps serving while discovery is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import random

from meshbox.agent.backoff import Backoff
from meshbox.agent.http_client import HttpUnreachable
from meshbox.agent.proxy_admin import ConfigRejected, ProxyAdmin
from meshbox.api.v1 import proxy_config_pb2

log = logging.getLogger("meshbox.agent")

MAX_ATTEMPT = 16  # past this the backoff is at its cap anyway


class ConfigApplier:
    """Serialises config swaps; retries while the proxy is unreachable (starting or restarting)."""

    def __init__(self, admin: ProxyAdmin, backoff: Backoff, rng: random.Random) -> None:
        self._admin = admin
        self._backoff = backoff
        self._rng = rng
        self._lock = asyncio.Lock()
        self.last_good: proxy_config_pb2.ProxyConfig | None = None
        self.applied = 0
        self.rejected = 0

    async def apply(self, config: proxy_config_pb2.ProxyConfig) -> None:
        """Apply ``config``, waiting for the proxy to answer; raises ConfigRejected if it refuses."""
        async with self._lock:
            try:
                await self._apply_locked(config)
            except ConfigRejected:
                self.rejected += 1
                raise
            self.applied += 1
            self.last_good = config

    async def restore(self) -> None:
        """Give a freshly started proxy the last good config, if there is one."""
        async with self._lock:
            if self.last_good is None:
                return
            try:
                await self._apply_locked(self.last_good)
            except ConfigRejected as exc:
                # The same bytes were accepted before; a refusal now means the proxy changed
                # under us (e.g. a port it cannot bind yet). Discovery's next push retries.
                log.error("restarted proxy refused the last good config: %s", exc)

    async def _apply_locked(self, config: proxy_config_pb2.ProxyConfig) -> None:
        attempt = 0
        while True:
            try:
                await self._admin.apply(config)
                return
            except HttpUnreachable as exc:
                if attempt == 0:
                    log.warning("proxy admin not answering, will retry: %s", exc)
                await asyncio.sleep(self._backoff.delay(attempt, self._rng.random()))
                attempt = min(attempt + 1, MAX_ATTEMPT)
