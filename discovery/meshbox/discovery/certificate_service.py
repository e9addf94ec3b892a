"""The gRPC edge of the mesh CA: CertificateService/CreateCertificate and WatchTrustBundle.

CreateCertificate authenticates the caller by the bearer token in its ``authorization``
metadata and signs the CSR for that caller's identity only. Refusals carry a clear status:
UNAUTHENTICATED (no or bad token), PERMISSION_DENIED (a CSR for another identity),
INVALID_ARGUMENT (a malformed CSR), UNAVAILABLE (the token could not be checked now).
Each refusal is logged with the peer address and the reason.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import NoReturn

import grpc

from meshbox.api.identity import IdentityError, WorkloadIdentity
from meshbox.api.v1 import certificate_pb2, certificate_pb2_grpc
from meshbox.discovery.ca_keeper import CaKeeper
from meshbox.discovery.certificate_authority import CsrError, CsrIdentityError
from meshbox.discovery.token_auth import AuthenticationError, Authenticator, AuthenticatorUnavailable

log = logging.getLogger("meshbox.discovery.ca")
BEARER = "bearer "


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value[:len(BEARER)].lower() == BEARER:
            return value[len(BEARER):].strip() or None
    return None


class CertificateService(certificate_pb2_grpc.CertificateServiceServicer):
    def __init__(self, keeper: CaKeeper, authenticator: Authenticator) -> None:
        self._keeper = keeper
        self._authenticator = authenticator

    async def _refuse(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, reason: str) -> NoReturn:
        log.warning("certificate refused to %s: %s", context.peer(), reason)
        await context.abort(code, reason)
        raise AssertionError("context.abort returned")  # it raises, ending the call with that status

    async def CreateCertificate(
            self, request: certificate_pb2.CreateCertificateRequest,
            context: grpc.aio.ServicerContext) -> certificate_pb2.CreateCertificateResponse:
        token = bearer_token(context)
        if token is None:
            await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED,
                               "no service-account token: send it as 'authorization: Bearer <token>'")
        try:
            caller = await self._authenticator.authenticate(token)
            identity = WorkloadIdentity(self._keeper.trust_domain, caller.namespace, caller.service_account)
        except AuthenticationError as exc:
            await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except AuthenticatorUnavailable as exc:
            await self._refuse(context, grpc.StatusCode.UNAVAILABLE, f"cannot check the token now: {exc}")
        except IdentityError as exc:
            await self._refuse(context, grpc.StatusCode.UNAUTHENTICATED, f"the token names no valid identity: {exc}")
        ttl = request.requested_ttl.ToTimedelta() if request.HasField("requested_ttl") else None
        try:
            issued = self._keeper.ca.sign_workload_csr(request.csr_pem, identity, requested_ttl=ttl)
        except CsrIdentityError as exc:
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except CsrError as exc:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"bad CSR from {identity}: {exc}")
        log.info("issued a certificate for %s%s, valid until %s", identity,
                 f" (pod {caller.pod})" if caller.pod else "", issued.not_after.isoformat())
        return certificate_pb2.CreateCertificateResponse(cert_chain_pem=issued.chain_pem,
                                                         trust_bundle=self._keeper.bundle)

    async def WatchTrustBundle(
            self, request: certificate_pb2.WatchTrustBundleRequest,
            context: grpc.aio.ServicerContext) -> AsyncIterator[certificate_pb2.TrustBundle]:
        sent = ""
        while True:
            bundle = self._keeper.bundle
            if bundle.version != sent:
                yield bundle
                sent = bundle.version
            await self._keeper.wait_change()
