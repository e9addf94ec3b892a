"""The workload certificate: obtained from the mesh CA, renewed at half-life or at once when the
trust bundle changes, written for the proxy (cert_files.py) and used for the discovery stream.

The CA is reached over TLS, verified against the roots the agent trusts (first the operator's
root file, then the bundle the CA sends); the agent proves who it is with its service-account
token (read anew each time: the kubelet rotates it). The key is generated here and never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
from pathlib import Path

import grpc

from meshbox.agent.backoff import Backoff
from meshbox.agent.cert_files import WorkloadCredentials, write_credentials
from meshbox.agent.workload_csr import new_key_and_csr, renewal_time, validity
from meshbox.api.v1 import certificate_pb2, certificate_pb2_grpc

log = logging.getLogger("meshbox.agent")

CA_TIMEOUT_S = 10.0


class CertificateError(Exception):
    """No certificate this time; the message says why (the CA's answer, or why it was not reached)."""


class WorkloadIdentityManager:
    """Keeps a valid workload certificate for ``spiffe_id``."""

    def __init__(self, *, ca_address: str, spiffe_id: str, token_file: Path,
                 initial_roots_pem: bytes, cert_dir: Path | None, backoff: Backoff, rng: random.Random,
                 requested_ttl: datetime.timedelta | None = None) -> None:
        self.ca_address = ca_address
        self.spiffe_id = spiffe_id
        self.token_file = token_file
        self.cert_dir = cert_dir
        self.roots_pem = initial_roots_pem
        self.bundle_version = ""
        self.credentials: WorkloadCredentials | None = None
        self._backoff = backoff
        self._rng = rng
        self._requested_ttl = requested_ttl
        self._ready = asyncio.Event()
        self._renew_now = asyncio.Event()
        self.renew_at: datetime.datetime | None = None
        self.issued = 0  # certificates obtained so far (logs, tests)

    async def wait_ready(self) -> WorkloadCredentials:
        await self._ready.wait()
        assert self.credentials is not None
        return self.credentials

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """mTLS credentials with the current key, chain and roots (for a new discovery channel)."""
        assert self.credentials is not None
        return grpc.ssl_channel_credentials(self.credentials.roots_pem, private_key=self.credentials.key_pem,
                                            certificate_chain=self.credentials.chain_pem)

    def _ca_channel(self) -> grpc.aio.Channel:
        return grpc.aio.secure_channel(self.ca_address, grpc.ssl_channel_credentials(self.roots_pem))

    async def run(self) -> None:
        """Obtain, renew and watch until cancelled."""
        watcher = asyncio.create_task(self._watch_bundle(), name="trust bundle watch")
        try:
            await self._renew_forever()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _renew_forever(self) -> None:
        attempt = 0
        while True:
            try:
                await self.renew()
            except CertificateError as exc:
                attempt = min(attempt + 1, 16)
                delay = self._backoff.delay(attempt, self._rng.random())
                log.error("no workload certificate for %s: %s; retrying in %.1fs", self.spiffe_id, exc, delay)
                await asyncio.sleep(delay)
                continue
            attempt = 0
            assert self.renew_at is not None
            wait = max((self.renew_at - datetime.datetime.now(datetime.UTC)).total_seconds(), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), wait)
            self._renew_now.clear()

    async def renew(self) -> WorkloadCredentials:
        """Ask the CA for a certificate over a fresh key; write it and make it current."""
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise CertificateError(f"cannot read the service-account token {self.token_file}: "
                                   f"{exc.strerror}") from None
        key_pem, csr_pem = new_key_and_csr(self.spiffe_id)
        request = certificate_pb2.CreateCertificateRequest(csr_pem=csr_pem)
        if self._requested_ttl is not None:
            request.requested_ttl.FromTimedelta(self._requested_ttl)
        try:
            async with self._ca_channel() as channel:
                response = await certificate_pb2_grpc.CertificateServiceStub(channel).CreateCertificate(
                    request, metadata=(("authorization", f"Bearer {token}"),), timeout=CA_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            raise CertificateError(f"the CA at {self.ca_address} answered {exc.code().name}: {exc.details()}") from None
        chain = "".join(response.cert_chain_pem).encode()
        if response.trust_bundle.roots_pem:
            self.roots_pem = "".join(response.trust_bundle.roots_pem).encode()
            self.bundle_version = response.trust_bundle.version
        credentials = WorkloadCredentials(key_pem, chain, self.roots_pem)
        if self.cert_dir is not None:
            try:
                write_credentials(self.cert_dir, credentials)
            except OSError as exc:
                raise CertificateError(f"cannot write the certificate files in {self.cert_dir}: {exc}") from None
        self.credentials = credentials
        self.issued += 1
        _, not_after = validity(chain)
        self.renew_at = renewal_time(chain, datetime.datetime.now(datetime.UTC))
        log.info("workload certificate for %s valid until %s, renewal at %s", self.spiffe_id,
                 not_after.isoformat(timespec="seconds"), self.renew_at.isoformat(timespec="seconds"))
        self._ready.set()
        return credentials

    async def _watch_bundle(self) -> None:
        """Follow the CA's trust bundle; a new version means renew now (the signing root may have changed)."""
        attempt = 0
        while True:
            try:
                async with self._ca_channel() as channel:
                    stream = certificate_pb2_grpc.CertificateServiceStub(channel).WatchTrustBundle(
                        certificate_pb2.WatchTrustBundleRequest())
                    async for bundle in stream:
                        attempt = 0
                        self._take_bundle(bundle)
            except grpc.aio.AioRpcError as exc:
                log.warning("trust bundle watch on %s: %s: %s", self.ca_address, exc.code().name, exc.details())
            attempt = min(attempt + 1, 16)
            await asyncio.sleep(self._backoff.delay(attempt, self._rng.random()))

    def _take_bundle(self, bundle: certificate_pb2.TrustBundle) -> None:
        if not bundle.roots_pem or bundle.version == self.bundle_version:
            return
        self.roots_pem = "".join(bundle.roots_pem).encode()
        previous, self.bundle_version = self.bundle_version, bundle.version
        if self.credentials is None:
            return  # the first certificate, under way, comes with the bundle
        log.info("trust bundle %s (%d root(s)) replaces %s: renewing the workload certificate now",
                 bundle.version, len(bundle.roots_pem), previous or "the initial roots")
        self._renew_now.set()
