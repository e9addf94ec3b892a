"""The TokenReview client against a real HTTPS server in the test.

No Kubernetes API server can run here. The server below speaks the real TokenReview protocol
as the API server does (``POST /apis/authentication.k8s.io/v1/tokenreviews``, JSON
``authentication.k8s.io/v1`` TokenReview in, the same object with ``status`` out, 201 Created),
over TLS with a certificate the client must verify, and checks the caller's own bearer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from conftest import Pki  # type: ignore[import-not-found]
from meshbox.discovery.token_auth import (
    AuthenticationError,
    AuthenticatorUnavailable,
    Caller,
    TokenReviewAuthenticator,
)

DISCOVERY_TOKEN = "discovery-own-token"
TOKENS = {
    "sleep-token": {"username": "system:serviceaccount:default:sleep", "uid": "1",
                    "extra": {"authentication.kubernetes.io/pod-name": ["sleep-6c8f"]}},
    "user-token": {"username": "alice", "uid": "2"},
}


class FakeApiServer:
    def __init__(self) -> None:
        self.reviews: list[dict[str, Any]] = []
        self.fail_with: int | None = None

    async def token_review(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {DISCOVERY_TOKEN}":
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                      "reason": "Unauthorized", "code": 401}, status=401)
        if self.fail_with:
            return web.json_response({"kind": "Status", "code": self.fail_with}, status=self.fail_with)
        review = await request.json()
        self.reviews.append(review)
        assert review["apiVersion"] == "authentication.k8s.io/v1" and review["kind"] == "TokenReview"
        spec = review["spec"]
        user = TOKENS.get(spec["token"])
        wanted = spec.get("audiences") or ["https://kubernetes.default.svc"]
        if user is None:
            status: dict[str, Any] = {"authenticated": False, "user": {}, "error": "invalid bearer token"}
        elif "meshbox-ca" in wanted and spec["token"] != "sleep-token":
            status = {"authenticated": False, "user": {}, "error": "token audiences is invalid"}
        else:
            status = {"authenticated": True, "user": user, "audiences": wanted}
        return web.json_response({**review, "metadata": {"creationTimestamp": None}, "status": status}, status=201)


@contextlib.asynccontextmanager
async def api_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path, FakeApiServer]]:
    """The fake API server on a free loopback port: (URL, directory with ca.crt and token, the fake)."""
    pki = Pki()
    root, root_key = pki.root("kubernetes CA")
    cert, key = pki.leaf(root, root_key, dns=("localhost",), ips=("127.0.0.1",))
    (tmp_path / "server.crt").write_bytes(pki.pem(cert))
    (tmp_path / "server.key").write_bytes(pki.key_pem(key))
    (tmp_path / "ca.crt").write_bytes(pki.pem(root))
    (tmp_path / "token").write_text(DISCOVERY_TOKEN + "\n")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    fake = FakeApiServer()
    app = web.Application()
    app.router.add_post("/apis/authentication.k8s.io/v1/tokenreviews", fake.token_review)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"https://127.0.0.1:{port}", tmp_path, fake
    finally:
        await runner.cleanup()


def test_service_account_token_is_reviewed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api_server(tmp_path) as (url, files, fake):
            auth = TokenReviewAuthenticator(url, ca_file=files / "ca.crt", credential_file=files / "token")
            assert await auth.authenticate("sleep-token") == Caller("default", "sleep", "sleep-6c8f")
            assert fake.reviews[-1]["spec"] == {"token": "sleep-token"}
    asyncio.run(scenario())


def test_bad_tokens_are_refused_with_the_reason(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api_server(tmp_path) as (url, files, _):
            auth = TokenReviewAuthenticator(url, ca_file=files / "ca.crt", credential_file=files / "token")
            with pytest.raises(AuthenticationError, match="invalid bearer token"):
                await auth.authenticate("forged")
            with pytest.raises(AuthenticationError, match="belongs to 'alice', not to a service account"):
                await auth.authenticate("user-token")
    asyncio.run(scenario())


def test_audiences_are_asked_for_and_checked(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api_server(tmp_path) as (url, files, fake):
            auth = TokenReviewAuthenticator(url, ca_file=files / "ca.crt", credential_file=files / "token",
                                            audiences=("meshbox-ca",))
            assert (await auth.authenticate("sleep-token")).service_account == "sleep"
            assert fake.reviews[-1]["spec"]["audiences"] == ["meshbox-ca"]
    asyncio.run(scenario())


def test_api_server_trouble_is_unavailable_not_a_refusal(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with api_server(tmp_path / "api") as (url, files, fake):
            fake.fail_with = 500
            auth = TokenReviewAuthenticator(url, ca_file=files / "ca.crt", credential_file=files / "token")
            with pytest.raises(AuthenticatorUnavailable, match="HTTP 500"):
                await auth.authenticate("sleep-token")
            fake.fail_with = None
            (tmp_path / "wrong-token").write_text("nope")
            with pytest.raises(AuthenticatorUnavailable, match="HTTP 401"):
                await TokenReviewAuthenticator(url, ca_file=files / "ca.crt",
                                               credential_file=tmp_path / "wrong-token").authenticate("sleep-token")
            # A server whose certificate the CA file does not vouch for is never sent the token.
            other = Pki()
            other_root, _ = other.root("someone else")
            (tmp_path / "other-ca.crt").write_bytes(other.pem(other_root))
            before = len(fake.reviews)
            with pytest.raises(AuthenticatorUnavailable, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
                await TokenReviewAuthenticator(url, ca_file=tmp_path / "other-ca.crt",
                                               credential_file=files / "token").authenticate("sleep-token")
            assert len(fake.reviews) == before
    (tmp_path / "api").mkdir()
    asyncio.run(scenario())
