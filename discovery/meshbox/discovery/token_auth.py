"""Who is asking for a certificate: service-account tokens checked by Kubernetes, or by the local cluster.

- :class:`TokenReviewAuthenticator` asks the API server (``POST
  /apis/authentication.k8s.io/v1/tokenreviews``), authenticating itself with discovery's own
  service-account token; it needs RBAC ``create`` on ``tokenreviews``.
- :class:`LocalTokenAuthenticator` checks the per-pod tokens `meshctl local` mints
  (meshbox.api.local_tokens).
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from meshbox.api import local_tokens

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
SA_USER_PREFIX = "system:serviceaccount:"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
REVIEW_TIMEOUT_S = 5.0


class AuthenticationError(Exception):
    """The token proves no identity; the message says why (sent to the caller)."""


class AuthenticatorUnavailable(Exception):
    """The token could not be checked now (API server unreachable or failing); the caller may retry."""


@dataclass(frozen=True)
class Caller:
    namespace: str
    service_account: str
    pod: str = ""  # when the token is bound to a pod


class Authenticator(Protocol):
    async def authenticate(self, token: str) -> Caller: ...


def caller_from_review(review: Any) -> Caller:
    """A TokenReview response body → the service account it proves; AuthenticationError otherwise."""
    if not isinstance(review, dict) or review.get("kind") != "TokenReview":
        raise AuthenticatorUnavailable("the API server's answer is not a TokenReview")
    status = review.get("status") or {}
    if not status.get("authenticated"):
        raise AuthenticationError(f"token rejected by the API server: {status.get('error') or 'not authenticated'}")
    user = status.get("user") or {}
    username = str(user.get("username") or "")
    if not username.startswith(SA_USER_PREFIX) or username.count(":") != 3:
        raise AuthenticationError(f"the token belongs to {username!r}, not to a service account")
    namespace, service_account = username[len(SA_USER_PREFIX):].split(":")
    pods = (user.get("extra") or {}).get(POD_NAME_EXTRA) or []
    return Caller(namespace, service_account, str(pods[0]) if pods else "")


class TokenReviewAuthenticator:
    """Checks tokens with the Kubernetes API server's TokenReview API."""

    def __init__(self, api_url: str, *, ca_file: Path | None, credential_file: Path,
                 audiences: tuple[str, ...] = ()) -> None:
        self.api_url = api_url.rstrip("/")
        self.credential_file = credential_file
        self.audiences = audiences
        self._ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

    @classmethod
    def in_cluster(cls, audiences: tuple[str, ...] = ()) -> TokenReviewAuthenticator:
        """The API server of the cluster discovery runs in (KUBERNETES_SERVICE_HOST/PORT, mounted CA)."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise AuthenticatorUnavailable("KUBERNETES_SERVICE_HOST is not set: not running in a cluster")
        if ":" in host:
            host = f"[{host}]"
        return cls(f"https://{host}:{port}", ca_file=SA_DIR / "ca.crt", credential_file=SA_DIR / "token",
                   audiences=audiences)

    async def authenticate(self, token: str) -> Caller:
        spec: dict[str, Any] = {"token": token}
        if self.audiences:
            spec["audiences"] = list(self.audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        try:
            # Re-read every time: the kubelet rotates discovery's own projected token.
            own = self.credential_file.read_text().strip()
        except OSError as exc:
            raise AuthenticatorUnavailable(f"cannot read discovery's own token {self.credential_file}: "
                                           f"{exc.strerror}") from None
        headers = {"Authorization": f"Bearer {own}", "Content-Type": "application/json",
                   "Accept": "application/json"}
        timeout = aiohttp.ClientTimeout(total=REVIEW_TIMEOUT_S)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
                    self.api_url + TOKEN_REVIEW_PATH, data=json.dumps(body), headers=headers, ssl=self._ssl) as resp:
                text = await resp.text()
                if resp.status not in (200, 201):
                    raise AuthenticatorUnavailable(f"TokenReview failed: HTTP {resp.status} {text[:200]}")
                review = json.loads(text)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise AuthenticatorUnavailable(f"TokenReview failed: {exc!r}") from None
        caller = caller_from_review(review)
        if self.audiences and not set(self.audiences) & set((review.get("status") or {}).get("audiences") or []):
            raise AuthenticationError(f"the token is not for audience {', '.join(self.audiences)}")
        return caller


class LocalTokenAuthenticator:
    """Checks the local cluster's per-pod tokens against its key file."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def from_file(cls, path: Path) -> LocalTokenAuthenticator:
        key = bytes.fromhex(path.read_text().strip())
        if len(key) != local_tokens.KEY_BYTES:
            raise ValueError(f"{path}: expected {local_tokens.KEY_BYTES} bytes of hex")
        return cls(key)

    async def authenticate(self, token: str) -> Caller:
        try:
            claims = local_tokens.verify(self._key, token)
        except local_tokens.TokenError as exc:
            raise AuthenticationError(str(exc)) from None
        return Caller(claims.namespace, claims.service_account, claims.pod)
