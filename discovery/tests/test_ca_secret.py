"""The root stored in (or taken from) the Kubernetes Secret meshbox-ca, against a fake API server.

No API server can run here: an aiohttp server in the test answers the real REST calls
(GET and POST /api/v1/namespaces/<ns>/secrets[/<name>], Status bodies for 404 and 409), and the
real kubernetes_asyncio client talks to it.
"""

from __future__ import annotations

import asyncio
import base64
import copy
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from kubernetes_asyncio import client

from meshbox.discovery.ca_secret import load_or_create_secret

PATH = "/api/v1/namespaces/{ns}/secrets"


class FakeSecrets:
    def __init__(self) -> None:
        self.secrets: dict[str, dict[str, Any]] = {}
        self.creates = 0
        self.race: dict[str, Any] | None = None  # a Secret "another replica" creates just before our POST

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(PATH + "/{name}", self.get)
        app.router.add_post(PATH, self.create)
        return app

    async def get(self, request: web.Request) -> web.Response:
        found = self.secrets.get(request.match_info["name"])
        if found is None:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        return web.json_response(found)

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body["metadata"]["name"]
        if self.race is not None:
            self.secrets[name], self.race = self.race, None
        if name in self.secrets:
            return web.json_response({"kind": "Status", "code": 409, "reason": "AlreadyExists"}, status=409)
        self.creates += 1
        self.secrets[name] = copy.deepcopy(body)
        return web.json_response(body, status=201)


async def _with_fake(fake: FakeSecrets, body: Any) -> Any:
    runner = web.AppRunner(fake.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    api = client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{runner.addresses[0][1]}"))
    try:
        return await body(api)
    finally:
        await api.close()
        await runner.cleanup()


def test_first_start_creates_the_secret_later_starts_read_it() -> None:
    fake = FakeSecrets()

    async def body(api: client.ApiClient) -> None:
        first = await load_or_create_secret(api, "meshbox-system", "meshbox-ca", "cluster.local")
        stored = fake.secrets["meshbox-ca"]
        assert stored["type"] == "Opaque" and set(stored["data"]) == {"ca.crt", "ca.key"}
        assert x509.load_pem_x509_certificate(base64.b64decode(stored["data"]["ca.crt"])) == first.cert
        again = await load_or_create_secret(api, "meshbox-system", "meshbox-ca", "cluster.local")
        assert again.cert == first.cert and again.version == first.version
        assert fake.creates == 1

    asyncio.run(_with_fake(fake, body))


def test_a_replica_losing_the_race_uses_the_winners_root() -> None:
    fake = FakeSecrets()

    async def body(api: client.ApiClient) -> None:
        winner = await load_or_create_secret(api, "meshbox-system", "other", "cluster.local")
        fake.race = copy.deepcopy(fake.secrets["other"])
        fake.race["metadata"]["name"] = "meshbox-ca"
        loser = await load_or_create_secret(api, "meshbox-system", "meshbox-ca", "cluster.local")
        assert loser.cert == winner.cert

    asyncio.run(_with_fake(fake, body))


def test_a_broken_secret_is_named() -> None:
    fake = FakeSecrets()
    fake.secrets["meshbox-ca"] = {"kind": "Secret", "apiVersion": "v1",
                                  "metadata": {"name": "meshbox-ca", "namespace": "meshbox-system"},
                                  "data": {"ca.crt": base64.b64encode(b"nope").decode(),
                                           "ca.key": base64.b64encode(b"nope").decode()}}

    async def body(api: client.ApiClient) -> None:
        with pytest.raises(ValueError, match=r"Secret meshbox-system/meshbox-ca: ca\.crt: not PEM certificates"):
            await load_or_create_secret(api, "meshbox-system", "meshbox-ca", "cluster.local")

    asyncio.run(_with_fake(fake, body))
