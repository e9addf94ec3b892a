"""Registry source (2): the Kubernetes API through kubernetes_asyncio.

For each kind (Services, EndpointSlices, Pods, RouteRules, Istio's VirtualServices,
DestinationRules and ServiceEntries, read as networking.istio.io/v1beta1, which every Istio
release since 1.5 serves, and Istio's PeerAuthentications and AuthorizationPolicies, read as
security.istio.io/v1) a task lists, then watches from the list's resourceVersion with
bookmarks. A watch the server ends normally is resumed from the last
resourceVersion seen (bookmarks keep it fresh); 410 Gone, or any watch error (dropped
connection, bad event), leads to a full relist after a short delay, doubling (up to 30 s) while
lists keep failing. Until a relist succeeds the last known objects keep being served.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from meshbox.api.istio.objects import GROUP
from meshbox.api.loader import ROUTE_RULE_API_VERSION, ROUTE_RULE_KIND
from meshbox.api.security_policy import API_GROUP as SECURITY_GROUP
from meshbox.api.security_policy import AUTHORIZATION_POLICY, PEER_AUTHENTICATION
from meshbox.discovery.registry import Registry, SourcedDocument, build_registry

log = logging.getLogger("meshbox.discovery.kubernetes")

ROUTE_RULE_GROUP, ROUTE_RULE_VERSION = ROUTE_RULE_API_VERSION.split("/")
ROUTE_RULE_PLURAL = "routerules"
# Istio's CRDs, read in a version the API server serves for all of them (it converts the others).
ISTIO_GROUP, ISTIO_VERSION = GROUP, "v1beta1"
ISTIO_PLURALS = {"VirtualService": "virtualservices", "DestinationRule": "destinationrules",
                 "ServiceEntry": "serviceentries"}
SECURITY_VERSION = "v1"
SECURITY_PLURALS = {PEER_AUTHENTICATION: "peerauthentications", AUTHORIZATION_POLICY: "authorizationpolicies"}
GONE = 410
NOT_FOUND = 404
NOT_INSTALLED_RECHECK_S = 30.0
LIST_TIMEOUT_S = 60.0
MAX_RETRY_DELAY_S = 30.0
WATCH_GRACE_S = 30.0


class _NotInstalled(Exception):
    """A custom resource's CRD is not installed: the mesh is served without objects of that kind."""


@dataclass(frozen=True)
class WatchedKind:
    """One kind to list and watch: how objects of it are labelled, and the API call."""

    kind: str
    api_version: str
    list_call: Callable[..., Awaitable[Any]]
    custom: bool = False  # a CRD that may be missing (404): served without it


def _custom_kind(custom: client.CustomObjectsApi, kind: str, group: str, version: str, plural: str) -> WatchedKind:
    async def list_objects(**kwargs: Any) -> Any:
        return await custom.list_cluster_custom_object(group, version, plural, **kwargs)

    # Watch finds the event type from the list call's docstring; the wrapper passes it on.
    list_objects.__doc__ = custom.list_cluster_custom_object.__doc__
    return WatchedKind(kind, f"{group}/{version}", list_objects, custom=True)


def watched_kinds(api: client.ApiClient) -> list[WatchedKind]:
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    return [
        WatchedKind("Service", "v1", core.list_service_for_all_namespaces),
        WatchedKind("EndpointSlice", "discovery.k8s.io/v1",
                    client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces),
        WatchedKind("Pod", "v1", core.list_pod_for_all_namespaces),
        _custom_kind(custom, ROUTE_RULE_KIND, ROUTE_RULE_GROUP, ROUTE_RULE_VERSION, ROUTE_RULE_PLURAL),
        *(_custom_kind(custom, kind, ISTIO_GROUP, ISTIO_VERSION, plural) for kind, plural in ISTIO_PLURALS.items()),
        *(_custom_kind(custom, kind, SECURITY_GROUP, SECURITY_VERSION, plural)
          for kind, plural in SECURITY_PLURALS.items()),
    ]


async def api_client_from_environment(kubeconfig: str | None) -> client.ApiClient:
    """In-cluster service account config when present, else the kubeconfig file."""
    try:
        config.load_incluster_config()
    except ConfigException:
        await config.load_kube_config(config_file=kubeconfig)
    return client.ApiClient()


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "default", meta.get("name") or ""


class KubernetesSource:
    """Keeps a copy of the watched objects and reports a fresh Registry after every change."""

    def __init__(self, api: client.ApiClient, on_change: Callable[[Callable[[], Registry]], None], *,
                 watch_timeout: int = 300, retry_delay: float = 1.0) -> None:
        self._api = api
        self._on_change = on_change
        self._watch_timeout = watch_timeout
        self._retry_delay = retry_delay
        self._kinds = watched_kinds(api)
        self._objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {k.kind: {} for k in self._kinds}
        self._listed: set[str] = set()
        self._registry: Registry | None = None  # the last one built: Istio objects' last good versions
        self.relists = 0  # lists after the first, per kind summed (for tests and logs)

    async def run(self) -> None:
        """List and watch every kind until cancelled."""
        try:
            await asyncio.gather(*(self._run_kind(k) for k in self._kinds))
        finally:
            await self._api.close()

    def _publish(self) -> None:
        if len(self._listed) < len(self._kinds):
            return  # serve nothing partial: a registry without Pods would empty every cluster
        # Copied now (events keep mutating the store); parsed only when the debounce fires.
        docs = [SourcedDocument(f"kubernetes:{kind}", obj) for kind, objs in self._objects.items()
                for obj in objs.values()]
        self._on_change(lambda: self._build(docs))

    def _build(self, docs: list[SourcedDocument]) -> Registry:
        self._registry = build_registry(docs, self._registry)
        return self._registry

    async def _run_kind(self, kind: WatchedKind) -> None:
        failures = 0  # in a row, without a successful list in between: the retry delay doubles
        while True:
            try:
                version = await self._list(kind)
                failures = 0
                while True:
                    version = await self._watch(kind, version)
            except _NotInstalled:
                log.warning("no %s resource in the API (CRD not installed?); serving without them, "
                            "checking again in %.0fs", kind.kind, NOT_INSTALLED_RECHECK_S)
                self._objects[kind.kind] = {}
                self._listed.add(kind.kind)
                self._publish()
                await asyncio.sleep(NOT_INSTALLED_RECHECK_S)
                continue
            except ApiException as exc:
                if exc.status == GONE:
                    log.info("%s watch: resourceVersion too old (410 Gone); relisting", kind.kind)
                else:
                    log.warning("%s list/watch failed: %s %s; relisting", kind.kind, exc.status, exc.reason)
            except Exception as exc:  # kubernetes_asyncio raises bare Exception for malformed events
                log.warning("%s list/watch failed: %r; relisting", kind.kind, exc)
            self.relists += 1
            await asyncio.sleep(min(self._retry_delay * 2**failures, MAX_RETRY_DELAY_S))
            failures += 1

    async def _list(self, kind: WatchedKind) -> str:
        response = await kind.list_call(_preload_content=False, _request_timeout=LIST_TIMEOUT_S)
        try:
            body = await response.read()
            if response.status == NOT_FOUND and kind.custom:
                raise _NotInstalled
            if response.status != 200:
                raise ApiException(status=response.status, reason=body.decode(errors="replace")[:200])
        finally:
            response.release()
        data = json.loads(body)
        objects = {}
        for item in data.get("items") or []:
            item.setdefault("kind", kind.kind)  # list items carry no kind of their own
            item.setdefault("apiVersion", kind.api_version)
            objects[_key(item)] = item
        self._objects[kind.kind] = objects
        self._listed.add(kind.kind)
        self._publish()
        return str((data.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, kind: WatchedKind, version: str) -> str:
        """Apply events until the server ends the watch; returns the resourceVersion to resume from."""
        async with watch.Watch() as stream:
            # The client-side timeout outlasts the server's: a silently dead connection ends in a relist.
            async for event in stream.stream(kind.list_call, resource_version=version, allow_watch_bookmarks=True,
                                             timeout_seconds=self._watch_timeout,
                                             _request_timeout=self._watch_timeout + WATCH_GRACE_S):
                self._apply_event(kind, event["type"], event["raw_object"])
            return str(stream.resource_version or version)

    def _apply_event(self, kind: WatchedKind, event_type: str, obj: dict[str, Any]) -> None:
        if event_type == "BOOKMARK":
            return  # only moves the resourceVersion on, which Watch records
        obj.setdefault("kind", kind.kind)
        obj.setdefault("apiVersion", kind.api_version)
        objects = self._objects[kind.kind]
        if event_type == "DELETED":
            objects.pop(_key(obj), None)
        elif event_type in ("ADDED", "MODIFIED"):
            objects[_key(obj)] = obj
        else:
            raise ValueError(f"unexpected watch event type {event_type!r}")
        self._publish()
