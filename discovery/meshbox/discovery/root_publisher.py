"""Publishes the mesh CA's trust bundle to every namespace as the ConfigMap ``meshbox-ca-root``.

An injected pod mounts that ConfigMap (key ``root-cert.pem``) so its agent can verify the CA at
first contact, as Istio publishes ``istio-ca-root-cert``. Namespaces are listed every few
seconds; a ConfigMap is written when missing or different, and every namespace is checked again
when the bundle changes or after RECHECK_S (someone may have edited or deleted it). Needs RBAC
``list`` on namespaces and ``get``/``create``/``update`` on configmaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from meshbox.api.defaults import CA_ROOT_CONFIG_MAP, CA_ROOT_KEY
from meshbox.discovery.ca_keeper import CaKeeper

log = logging.getLogger("meshbox.discovery.ca")

CONFIG_MAP = CA_ROOT_CONFIG_MAP
ROOTS_KEY = CA_ROOT_KEY
LIST_INTERVAL_S = 5.0
RECHECK_S = 300.0
NOT_FOUND = 404
CONFLICT = 409


class RootPublisher:
    def __init__(self, api: client.ApiClient, keeper: CaKeeper, *, interval: float = LIST_INTERVAL_S,
                 recheck: float = RECHECK_S) -> None:
        self._core = client.CoreV1Api(api)
        self._keeper = keeper
        self._interval = interval
        self._recheck = recheck
        self._done: dict[str, str] = {}  # namespace → bundle version known to be published there
        self._checked_at = time.monotonic()

    def _body(self, namespace: str, resource_version: str | None = None) -> client.V1ConfigMap:
        meta = client.V1ObjectMeta(name=CONFIG_MAP, namespace=namespace, resource_version=resource_version,
                                   labels={"app.kubernetes.io/part-of": "meshbox"})
        return client.V1ConfigMap(api_version="v1", kind="ConfigMap", metadata=meta,
                                  data={ROOTS_KEY: self._keeper.bundle_pem.decode()})

    async def publish(self, namespace: str) -> bool:
        """Make the namespace's ConfigMap hold the current bundle; True if it had to be written."""
        wanted = self._keeper.bundle_pem.decode()
        try:
            current = await self._core.read_namespaced_config_map(CONFIG_MAP, namespace)
        except ApiException as exc:
            if exc.status != NOT_FOUND:
                raise
            try:
                await self._core.create_namespaced_config_map(namespace, self._body(namespace))
            except ApiException as again:
                if again.status != CONFLICT:  # created meanwhile by another replica: next round checks it
                    raise
            return True
        if (current.data or {}).get(ROOTS_KEY) == wanted:
            return False
        await self._core.replace_namespaced_config_map(
            CONFIG_MAP, namespace, self._body(namespace, current.metadata.resource_version))
        return True

    async def sync_once(self) -> int:
        """One round over every namespace not yet known to hold the current bundle; returns writes."""
        version = self._keeper.bundle.version
        if time.monotonic() - self._checked_at >= self._recheck:
            self._done.clear()
            self._checked_at = time.monotonic()
        namespaces = await self._core.list_namespace()
        names = {ns.metadata.name for ns in namespaces.items if ns.metadata.deletion_timestamp is None}
        self._done = {n: v for n, v in self._done.items() if n in names}
        written = 0
        for name in sorted(names):
            if self._done.get(name) == version:
                continue
            try:
                written += await self.publish(name)
            except ApiException as exc:
                log.warning("cannot publish the trust bundle to %s/%s: %s %s", name, CONFIG_MAP, exc.status,
                            exc.reason)
                continue
            self._done[name] = version
        if written:
            log.info("published trust bundle %s to %d namespace(s)", version, written)
        return written

    async def run(self) -> None:
        """Sync every interval, and at once when the bundle changes, until cancelled."""
        while True:
            try:
                await self.sync_once()
            except ApiException as exc:
                log.warning("cannot list namespaces to publish the trust bundle: %s %s", exc.status, exc.reason)
            except Exception as exc:  # a dropped connection: try again next round
                log.warning("publishing the trust bundle failed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._keeper.wait_change(), self._interval)
