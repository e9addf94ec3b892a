"""Service-account tokens of the local cluster (`meshctl local`), where no Kubernetes API server runs.

The cluster mints one token per pod when it starts the pod; discovery, given the same key file,
checks them. A token is ``mbx1.<payload>.<mac>``: the payload is base64url JSON
``{"ns", "sa", "pod", "exp"}``, the MAC is HMAC-SHA256 over ``mbx1.<payload>`` with the
cluster's 32-byte key. Written once here and imported by the cluster (ctl) and discovery.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

PREFIX = "mbx1"
KEY_BYTES = 32


class TokenError(ValueError):
    """A token that does not prove anything; the message says why."""


@dataclass(frozen=True)
class TokenClaims:
    namespace: str
    service_account: str
    pod: str
    expires: int  # Unix seconds


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, signed: str) -> str:
    return _b64(hmac.new(key, signed.encode(), hashlib.sha256).digest())


def mint(key: bytes, claims: TokenClaims) -> str:
    """A token for ``claims`` signed with ``key``."""
    payload = _b64(json.dumps({"ns": claims.namespace, "sa": claims.service_account, "pod": claims.pod,
                               "exp": claims.expires}, sort_keys=True).encode())
    signed = f"{PREFIX}.{payload}"
    return f"{signed}.{_mac(key, signed)}"


def verify(key: bytes, token: str, *, now: float | None = None) -> TokenClaims:
    """The claims of a token signed with ``key`` and not expired; raises TokenError."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise TokenError(f"not a local-cluster token ({PREFIX}.<payload>.<mac>)")
    if not hmac.compare_digest(_mac(key, f"{parts[0]}.{parts[1]}"), parts[2]):
        raise TokenError("token signature does not match (another cluster's token, or altered)")
    try:
        data = json.loads(_unb64(parts[1]))
        claims = TokenClaims(str(data["ns"]), str(data["sa"]), str(data["pod"]), int(data["exp"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise TokenError(f"malformed token payload: {exc}") from None
    if claims.expires < (time.time() if now is None else now):
        raise TokenError("token expired")
    return claims
