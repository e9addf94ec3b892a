"""The trust bundle published to every namespace (ConfigMap meshbox-ca-root), against a fake API server.

No Kubernetes API server can run here: an aiohttp server in the test answers the real REST calls
the client makes (list namespaces, get / create / replace a ConfigMap, with resourceVersion
checks and 404/409 Status bodies), and the real kubernetes_asyncio client talks to it.
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from kubernetes_asyncio import client

from meshbox.discovery import ca_files
from meshbox.discovery.ca_keeper import CaKeeper
from meshbox.discovery.root_publisher import CONFIG_MAP, ROOTS_KEY, RootPublisher


def status(code: int, reason: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                              "code": code}, status=code)


class FakeApi:
    def __init__(self) -> None:
        self.namespaces = ["default", "prod"]
        self.terminating = ["gone"]
        self.config_maps: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self.version = 10

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces", self.list_namespaces)
        app.router.add_get("/api/v1/namespaces/{ns}/configmaps/{name}", self.get)
        app.router.add_post("/api/v1/namespaces/{ns}/configmaps", self.create)
        app.router.add_put("/api/v1/namespaces/{ns}/configmaps/{name}", self.replace)
        return app

    async def list_namespaces(self, _request: web.Request) -> web.Response:
        items = [{"metadata": {"name": n}} for n in self.namespaces]
        items += [{"metadata": {"name": n, "deletionTimestamp": "2026-01-01T00:00:00Z"}} for n in self.terminating]
        return web.json_response({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                                  "items": items})

    async def get(self, request: web.Request) -> web.Response:
        found = self.config_maps.get(request.match_info["ns"])
        if found is None or request.match_info["name"] != CONFIG_MAP:
            return status(404, "NotFound")
        return web.json_response(found)

    def _store(self, namespace: str, body: dict[str, Any], verb: str) -> dict[str, Any]:
        self.version += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self.version)
        self.config_maps[namespace] = body
        self.writes.append((verb, namespace))
        return body

    async def create(self, request: web.Request) -> web.Response:
        namespace = request.match_info["ns"]
        body = await request.json()
        assert body["metadata"]["name"] == CONFIG_MAP and body["metadata"]["namespace"] == namespace
        if namespace in self.config_maps:
            return status(409, "AlreadyExists")
        return web.json_response(self._store(namespace, body, "create"), status=201)

    async def replace(self, request: web.Request) -> web.Response:
        namespace = request.match_info["ns"]
        body = await request.json()
        if body["metadata"].get("resourceVersion") != self.config_maps[namespace]["metadata"]["resourceVersion"]:
            return status(409, "Conflict")
        return web.json_response(self._store(namespace, body, "replace"))


def test_bundle_reaches_every_namespace_and_follows_rotation(tmp_path: Path) -> None:
    async def scenario() -> None:
        fake = FakeApi()
        runner = web.AppRunner(fake.app())
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        api = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{runner.addresses[0][1]}"))
        (tmp_path / "ca").mkdir()
        keeper = CaKeeper(tmp_path / "ca", "cluster.local", ["meshbox-discovery"])
        publisher = RootPublisher(api, keeper, interval=0.05, recheck=3600)
        try:
            assert await publisher.sync_once() == 2
            assert sorted(fake.config_maps) == ["default", "prod"]  # not the terminating namespace
            assert fake.config_maps["prod"]["data"][ROOTS_KEY].encode() == keeper.bundle_pem
            assert await publisher.sync_once() == 0  # nothing changed: no writes, no reads

            # A two-root bundle: every namespace is rewritten (a replace, with the resourceVersion).
            old = ca_files.load(tmp_path / "ca")
            new_cert, _ = ca_files.generate_root("cluster.local")
            pem = serialization.Encoding.PEM
            ca_files.write_atomically(tmp_path / "ca" / "roots.pem",
                                      old.cert.public_bytes(pem) + new_cert.public_bytes(pem))
            assert keeper.reload()
            fake.writes.clear()
            assert await publisher.sync_once() == 2
            assert fake.writes == [("replace", "default"), ("replace", "prod")]
            assert fake.config_maps["default"]["data"][ROOTS_KEY].count("BEGIN CERTIFICATE") == 2

            # A new namespace gets it from the running loop; a tampered one is fixed at the recheck.
            task = asyncio.create_task(publisher.run())
            fake.namespaces.append("tutorial")
            for _ in range(100):
                if "tutorial" in fake.config_maps:
                    break
                await asyncio.sleep(0.02)
            assert fake.config_maps["tutorial"]["data"][ROOTS_KEY].encode() == keeper.bundle_pem
            task.cancel()
            fake.config_maps["prod"]["data"][ROOTS_KEY] = "tampered"
            publisher_recheck = RootPublisher(api, keeper, recheck=0)
            assert await publisher_recheck.sync_once() == 1
            assert fake.config_maps["prod"]["data"][ROOTS_KEY].encode() == keeper.bundle_pem
        finally:
            await api.close()
            await runner.cleanup()

    asyncio.run(scenario())
