"""The Kubernetes registry source against a fake API server.

No real Kubernetes API server can run here (no kind, no Docker), so these tests run a small HTTP
server (aiohttp, on loopback) that speaks the API's list/watch protocol with real-shaped objects:
list responses carry metadata.resourceVersion, watches (?watch=true&resourceVersion=N) stream
newline-delimited JSON events (ADDED/MODIFIED/DELETED/BOOKMARK), a watch from a compacted
resourceVersion gets an ERROR event with a 410 Gone Status, and a watch can be dropped mid-stream.
The client is the real kubernetes_asyncio ApiClient and Watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from kubernetes_asyncio import client

from meshbox.discovery.kube_source import KubernetesSource
from meshbox.discovery.payloads import CLUSTER, ENDPOINTS
from meshbox.discovery.registry import Registry

PATHS = {
    "Service": ("/api/v1/services", "v1"),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1"),
    "Pod": ("/api/v1/pods", "v1"),
    "RouteRule": ("/apis/routing.meshbox.io/v1alpha1/routerules", "routing.meshbox.io/v1alpha1"),
    "PeerAuthentication": ("/apis/security.istio.io/v1/peerauthentications", "security.istio.io/v1"),
    "AuthorizationPolicy": ("/apis/security.istio.io/v1/authorizationpolicies", "security.istio.io/v1"),
    "VirtualService": ("/apis/networking.istio.io/v1beta1/virtualservices", "networking.istio.io/v1beta1"),
    "DestinationRule": ("/apis/networking.istio.io/v1beta1/destinationrules", "networking.istio.io/v1beta1"),
    "ServiceEntry": ("/apis/networking.istio.io/v1beta1/serviceentries", "networking.istio.io/v1beta1"),
}


@dataclass
class FakeKind:
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (resourceVersion, event)
    oldest: int = 0  # watches from before this resourceVersion get 410 Gone
    watches: list[web.Request] = field(default_factory=list)
    ending: set[int] = field(default_factory=set)  # id() of watches to end normally
    requests: list[dict[str, str]] = field(default_factory=list)
    failing_lists: int = 0  # answer this many next lists with 500


class FakeApiServer:
    """List/watch for the kinds discovery reads, with controls to compact, drop and bookmark."""

    def __init__(self, kinds: tuple[str, ...] = tuple(PATHS)) -> None:
        self.version = 100
        self.kinds = {k: FakeKind() for k in kinds}
        self.changed = asyncio.Condition()
        self.app = web.Application()
        for kind in kinds:
            self.app.router.add_get(PATHS[kind][0], self._handler(kind))

    async def start(self) -> tuple[web.AppRunner, str]:
        runner = web.AppRunner(self.app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"

    async def stop(self, runner: web.AppRunner) -> None:
        for name in self.kinds:
            await self.end_watches(name)
        await runner.cleanup()

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        return obj

    async def put(self, obj: dict[str, Any], *, silently: bool = False, delete: bool = False) -> None:
        """Create/update/delete an object; ``silently`` records no watch event (as if compacted away)."""
        kind = self.kinds[obj["kind"]]
        obj = self._stamp(obj)
        key = (obj["metadata"].get("namespace", "default"), obj["metadata"]["name"])
        event_type = "DELETED" if delete else ("MODIFIED" if key in kind.objects else "ADDED")
        if delete:
            kind.objects.pop(key, None)
        else:
            kind.objects[key] = obj
        if not silently:
            kind.events.append((self.version, {"type": event_type, "object": obj}))
        async with self.changed:
            self.changed.notify_all()

    async def bookmark(self, kind_name: str) -> None:
        self.version += 1
        _, api_version = PATHS[kind_name]
        event = {"type": "BOOKMARK", "object": {"kind": kind_name, "apiVersion": api_version,
                                                "metadata": {"resourceVersion": str(self.version)}}}
        self.kinds[kind_name].events.append((self.version, event))
        async with self.changed:
            self.changed.notify_all()

    async def expire(self, kind_name: str) -> None:
        """Compact history and end open watches cleanly: clients resuming get 410 Gone."""
        kind = self.kinds[kind_name]
        kind.oldest = self.version + 1
        kind.events.clear()
        await self.end_watches(kind_name)

    async def end_watches(self, kind_name: str) -> None:
        """End open watches normally, as the API server does when timeoutSeconds runs out."""
        kind = self.kinds[kind_name]
        kind.ending.update(id(r) for r in kind.watches)
        async with self.changed:
            self.changed.notify_all()

    def drop(self, kind_name: str) -> None:
        """Cut open watches mid-stream (no final chunk): a watch error on the client."""
        for request in self.kinds[kind_name].watches:
            if request.transport is not None:
                request.transport.abort()

    def _handler(self, kind_name: str) -> Callable[[web.Request], Any]:
        kind = self.kinds[kind_name]

        async def handle(request: web.Request) -> web.StreamResponse:
            kind.requests.append(dict(request.query))
            # The API server parses booleans like Go's strconv.ParseBool (the client sends "True").
            if request.query.get("watch") not in ("1", "t", "T", "true", "TRUE", "True"):
                if kind.failing_lists:
                    kind.failing_lists -= 1
                    return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                              "message": "etcd unavailable", "code": 500}, status=500)
                list_kind = f"{kind_name}List"
                body = {"kind": list_kind, "apiVersion": PATHS[kind_name][1],
                        "metadata": {"resourceVersion": str(self.version)},
                        "items": [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")}
                                  for o in kind.objects.values()]}
                return web.json_response(body)
            since = int(request.query.get("resourceVersion") or 0)
            timeout = float(request.query.get("timeoutSeconds") or 30)
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            if since < kind.oldest - 1:
                gone = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                     "message": f"too old resource version: {since}",
                                                     "reason": "Expired", "code": 410}}
                await response.write(json.dumps(gone).encode() + b"\n")
                await response.write_eof()
                return response
            kind.watches.append(request)
            sent = since
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            try:
                while loop.time() < deadline and id(request) not in kind.ending:
                    for version, event in kind.events:
                        if version > sent:
                            await response.write(json.dumps(event).encode() + b"\n")
                            sent = version
                    async with self.changed:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - loop.time()))
                await response.write_eof()
            except ConnectionResetError:
                pass  # dropped by drop()
            finally:
                kind.watches.remove(request)
                kind.ending.discard(id(request))
            return response

        return handle


def service(name: str, ip: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "selector": {"app": name}, "ports": [{"name": "http", "port": 80,
                                                                            "targetPort": 8080}]}}


def pod(name: str, app: str, ip: str, version: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app, "version": version}},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]},
            "status": {"podIP": ip, "phase": "Running"}}


def slice_of(service_name: str, ips: list[str]) -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-x1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips]}


def rule(name: str, weights: dict[str, int]) -> dict[str, Any]:
    return {"apiVersion": "routing.meshbox.io/v1alpha1", "kind": "RouteRule",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"destination": "service-two",
                     "route": [{"labels": {"version": v}, "weight": w} for v, w in weights.items()]}}


class Latest:
    """Collects the registries the source publishes; waits for one that satisfies a condition."""

    def __init__(self) -> None:
        self.registry: Registry | None = None
        self.count = 0
        self._event = asyncio.Event()

    def __call__(self, build: Callable[[], Registry]) -> None:
        self.registry = build()
        self.count += 1
        self._event.set()

    async def until(self, condition: Callable[[Registry], bool], timeout: float = 5.0) -> Registry:
        async def wait() -> Registry:
            while self.registry is None or not condition(self.registry):
                self._event.clear()
                await self._event.wait()
            return self.registry
        return await asyncio.wait_for(wait(), timeout)


def pod_ips(registry: Registry) -> set[str]:
    return {p.ip for p in registry.pods}


def test_list_watch_bookmark_410_and_dropped_watch() -> None:
    async def scenario() -> None:
        fake = FakeApiServer()
        for obj in (service("service-one", "10.96.0.11"), service("service-two", "10.96.0.12"),
                    pod("one-a", "service-one", "10.1.0.11", "v1"), pod("two-v1", "service-two", "10.1.0.21", "v1"),
                    slice_of("service-two", ["10.1.0.21"])):
            await fake.put(obj)
        runner, url = await fake.start()
        api = client.ApiClient(client.Configuration(host=url))
        latest = Latest()
        source = KubernetesSource(api, latest, watch_timeout=30, retry_delay=0.05)
        task = asyncio.create_task(source.run())
        try:
            first = await latest.until(lambda r: len(r.services) == 2)
            assert pod_ips(first) == {"10.1.0.11", "10.1.0.21"} and first.errors == ()
            assert [e.addresses[0].ip for e in first.endpoint_sets] == ["10.1.0.21"]
            for kind in fake.kinds.values():
                assert kind.requests[0].get("watch") is None  # list first...
            await asyncio.sleep(0.1)
            for kind in fake.kinds.values():  # ...then watch from the list's version, with bookmarks
                assert kind.requests[1]["watch"] == "True" and kind.requests[1]["allowWatchBookmarks"] == "True"

            # Watch events: an added pod, a valid rule, an invalid rule (left out, reported), a deletion.
            await fake.put(pod("two-v2", "service-two", "10.1.0.22", "v2"))
            await latest.until(lambda r: "10.1.0.22" in pod_ips(r))
            await fake.put(rule("canary", {"v1": 50, "v2": 50}))
            await fake.put(rule("broken", {"v1": 50, "v2": 70}))
            reg = await latest.until(lambda r: len(r.route_rules) == 1 and len(r.errors) == 1)
            assert "RouteRule default/broken" in reg.errors[0] and "got 120" in reg.errors[0]
            await fake.put(pod("one-a", "service-one", "10.1.0.11", "v1"), delete=True)
            await latest.until(lambda r: "10.1.0.11" not in pod_ips(r))

            # Bookmark, then the server ends the watch normally: resume from the bookmark's version.
            await fake.bookmark("Service")
            bookmark_version = str(fake.version)
            await asyncio.sleep(0.1)
            services = fake.kinds["Service"]
            watches_before = len(services.requests)
            await fake.end_watches("Service")
            for _ in range(100):
                if len(services.requests) > watches_before:
                    break
                await asyncio.sleep(0.02)
            assert services.requests[-1]["resourceVersion"] == bookmark_version
            assert services.requests[-1]["watch"] == "True"

            # 410 Gone: history compacted while a change was made without an event -> full relist finds it.
            pods = fake.kinds["Pod"]
            lists_before = sum(1 for q in pods.requests if q.get("watch") is None)
            await fake.put(pod("two-v3", "service-two", "10.1.0.23", "v3"), silently=True)
            await fake.expire("Pod")
            await latest.until(lambda r: "10.1.0.23" in pod_ips(r))
            assert sum(1 for q in pods.requests if q.get("watch") is None) == lists_before + 1

            # A dropped watch connection: relist, and a change missed meanwhile shows up.
            slices = fake.kinds["EndpointSlice"]
            lists_before = sum(1 for q in slices.requests if q.get("watch") is None)
            await fake.put(slice_of("service-two", ["10.1.0.21", "10.1.0.22"]), silently=True)
            fake.drop("EndpointSlice")
            reg = await latest.until(lambda r: any(len(e.addresses) == 2 for e in r.endpoint_sets))
            assert sum(1 for q in slices.requests if q.get("watch") is None) == lists_before + 1
            assert source.relists == 2

            # A relist that fails (500) is retried; meanwhile the last known objects are served.
            services.failing_lists = 1
            lists_before = sum(1 for q in services.requests if q.get("watch") is None)
            await fake.put(service("ratings", "10.96.0.13"), silently=True)
            await fake.expire("Service")
            reg = await latest.until(lambda r: len(r.services) == 3)
            assert sum(1 for q in services.requests if q.get("watch") is None) == lists_before + 2
            assert source.relists == 4
            # Everything else kept being served throughout.
            assert len(reg.route_rules) == 1 and any(len(e.addresses) == 2 for e in reg.endpoint_sets)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await fake.stop(runner)

    asyncio.run(scenario())


def test_istio_security_policies_are_watched() -> None:
    """PeerAuthentications and AuthorizationPolicies come from security.istio.io/v1; one with a field
    meshbox does not support is left out and reported with its name and field."""
    async def scenario() -> None:
        fake = FakeApiServer()
        for obj in (service("service-one", "10.96.0.11"), pod("one-a", "service-one", "10.1.0.11", "v1")):
            await fake.put(obj)
        await fake.put({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
                        "metadata": {"name": "default", "namespace": "meshbox-system"},
                        "spec": {"mtls": {"mode": "STRICT"}}})
        runner, url = await fake.start()
        api = client.ApiClient(client.Configuration(host=url))
        latest = Latest()
        task = asyncio.create_task(KubernetesSource(api, latest, watch_timeout=30, retry_delay=0.05).run())
        try:
            first = await latest.until(lambda r: len(r.security_policies) == 1)
            assert first.security_policies[0].name == "default"
            await fake.put({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                            "metadata": {"name": "by-ip", "namespace": "default"},
                            "spec": {"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]}})
            reg = await latest.until(lambda r: len(r.errors) == 1)
            assert "AuthorizationPolicy default/by-ip" in reg.errors[0]
            assert "spec.rules[0].from[0].source.ipBlocks" in reg.errors[0]
            assert len(reg.security_policies) == 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await fake.stop(runner)

    asyncio.run(scenario())


ISTIO_DESTINATION_RULE: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
    "metadata": {"name": "service-two", "namespace": "default", "generation": 1},
    "spec": {"host": "service-two.default.svc.cluster.local",
             "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}}
ISTIO_VIRTUAL_SERVICE: dict[str, Any] = {
    "apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
    "metadata": {"name": "service-two", "namespace": "default", "generation": 1},
    "spec": {"hosts": ["service-two"],
             "http": [{"match": [{"headers": {"end-user": {"exact": "jason"}}}],
                       "route": [{"destination": {"host": "service-two", "subset": "v2"}}]},
                      {"route": [{"destination": {"host": "service-two", "subset": "v1"}}]}]}}


def test_istio_virtual_services_and_destination_rules_from_watch_events() -> None:
    """Istio's CRDs listed and watched like the other kinds (the objects as the API server sends them);
    a refused edit keeps the previous version serving, a deletion removes the routes."""

    async def scenario() -> None:
        fake = FakeApiServer()
        for obj in (service("service-two", "10.96.0.12"), pod("two-v1", "service-two", "10.1.0.21", "v1"),
                    pod("two-v2", "service-two", "10.1.0.22", "v2"), ISTIO_DESTINATION_RULE):
            await fake.put(obj)
        runner, url = await fake.start()
        latest = Latest()
        source = KubernetesSource(client.ApiClient(client.Configuration(host=url)), latest, retry_delay=0.05)
        task = asyncio.create_task(source.run())
        try:
            first = await latest.until(lambda r: len(r.services) == 1)
            assert first.errors == () and list(first.destination_policies) == ["service-two.default.svc.cluster.local"]
            await asyncio.sleep(0.1)
            assert fake.kinds["VirtualService"].requests[1]["watch"] == "True"

            await fake.put(ISTIO_VIRTUAL_SERVICE)
            reg = await latest.until(lambda r: len(r.route_rules) == 2)
            assert [[d.subset for d in rule.spec.route] for rule in reg.route_rules] == [["v2"], ["v1"]]
            assert dict(reg.route_rules[0].spec.route[0].labels) == {"version": "v2"}

            broken = copy.deepcopy(ISTIO_DESTINATION_RULE)
            broken["spec"]["trafficPolicy"] = {"outlierDetection": {"splitExternalLocalOriginErrors": True}}
            await fake.put(broken)
            reg = await latest.until(lambda r: bool(r.errors))
            assert reg.errors == ("kubernetes:DestinationRule: DestinationRule default/service-two: "
                                  "spec.trafficPolicy.outlierDetection.splitExternalLocalOriginErrors: "
                                  "not implemented by meshbox's proxy yet; "
                                  "its previous version keeps serving [MB0105]",)
            assert len(reg.route_rules) == 2 and reg.destination_policies

            await fake.put(ISTIO_VIRTUAL_SERVICE, delete=True)
            await latest.until(lambda r: not r.route_rules)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await fake.stop(runner)

    asyncio.run(scenario())


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: fake, cluster: {server: "%s"}}]
users: [{name: tester, user: {token: not-checked}}]
contexts: [{name: fake, context: {cluster: fake, user: tester}}]
current-context: fake
"""


def test_cli_kubernetes_mode_without_the_route_rule_crd(kit: Any, tmp_path: Path) -> None:
    """meshbox-discovery --kubernetes as a real process, via a kubeconfig, against the fake API server
    that has no RouteRule resource (CRD not installed: 404): it serves the mesh without rules."""

    async def scenario() -> None:
        fake = FakeApiServer(kinds=("Service", "EndpointSlice", "Pod"))
        for obj in (service("service-one", "10.96.0.11"), service("service-two", "10.96.0.12"),
                    pod("one-a", "service-one", "10.1.0.11", "v1"), pod("two-v1", "service-two", "10.1.0.21", "v1")):
            await fake.put(obj)
        runner, url = await fake.start()
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(KUBECONFIG % url)
        env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("meshbox-discovery")), "--plaintext", "--kubernetes",
            "--kubeconfig", str(kubeconfig),
            "--listen-address", "127.0.0.1", "--grpc-port", "0", "--http-port", "0", "--debounce", "0.02",
            stderr=asyncio.subprocess.PIPE, env=env)
        assert proc.stderr is not None
        try:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            match = re.search(r"gRPC on 127\.0\.0\.1:(\d+)", line)
            assert match, line
            async with grpc.aio.insecure_channel(f"127.0.0.1:{match.group(1)}") as channel:
                agent = kit.AgentClient(channel, kit.node("one-a", "10.1.0.11"))
                agent.subscribe_all()
                first = await agent.receive_all()
                clusters = {c.name for c in kit.unpack(first[CLUSTER])}
                assert "outbound|80||service-two.default.svc.cluster.local" in clusters
                for response in first.values():
                    await agent.ack(response)
                await fake.put(pod("two-v2", "service-two", "10.1.0.22", "v2"))
                pushed = await agent.receive()
                assert pushed.type_url == ENDPOINTS
                assert "10.1.0.22" in {e.address for cla in kit.unpack(pushed) for e in cla.endpoints}
                agent.close()
            proc.terminate()
            assert await asyncio.wait_for(proc.wait(), 10) == 0
            rest = (await proc.stderr.read()).decode()
            assert "no RouteRule resource in the API (CRD not installed?)" in rest
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await fake.stop(runner)

    asyncio.run(scenario())
