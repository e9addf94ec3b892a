"""Keeps the mesh CA current: reloads the CA directory when the operator changes it, renews
discovery's own serving certificate, and tells trust-bundle watchers and the TLS layer.

The gRPC TLS layer asks for credentials on each new connection (grpc's dynamic server
credentials); :meth:`CaKeeper.credentials_fetcher` hands it a new configuration only when the
serving certificate or the bundle changed, so existing streams are never cut.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from pathlib import Path

import grpc

from meshbox.api.identity import WorkloadIdentity
from meshbox.api.kube.names import DISCOVERY_SERVICE, MESH_NAMESPACE
from meshbox.api.v1 import certificate_pb2
from meshbox.discovery import ca_files
from meshbox.discovery.certificate_authority import CertificateAuthority, IssuedCertificate

log = logging.getLogger("meshbox.discovery.ca")

DISCOVERY_SERVICE_ACCOUNT = DISCOVERY_SERVICE  # the Deployment runs as a service account of the same name
SERVER_CERT_TTL = datetime.timedelta(hours=24)


class CaKeeper:
    """The CA material, discovery's serving certificate and the trust bundle, kept current."""

    def __init__(self, directory: Path, trust_domain: str, server_names: list[str], *,
                 namespace: str = MESH_NAMESPACE, material: ca_files.CaMaterial | None = None) -> None:
        """``material``: the root to start with (from the Kubernetes Secret) while ``directory`` is still empty."""
        self.directory = directory
        self.trust_domain = trust_domain
        self.server_names = server_names
        self.identity = WorkloadIdentity(trust_domain, namespace, DISCOVERY_SERVICE_ACCOUNT)
        if material is None:
            material, created = ca_files.load_or_create(directory, trust_domain)
            if created:
                log.warning("generated a new mesh root CA in %s (kept there for the next start)", directory)
        self.ca = CertificateAuthority(material)
        self._fingerprint = ca_files.fingerprint(directory)
        self._changed = asyncio.Event()
        self._server: tuple[bytes, IssuedCertificate] = self._issue_server_certificate()
        self._generation = 0

    def _issue_server_certificate(self) -> tuple[bytes, IssuedCertificate]:
        key, issued = self.ca.issue_server_certificate(self.identity, self.server_names, SERVER_CERT_TTL)
        log.info("discovery serving certificate for %s (%s) valid until %s", self.identity,
                 ", ".join(self.server_names), issued.not_after.isoformat())
        return key, issued

    @property
    def bundle(self) -> certificate_pb2.TrustBundle:
        material = self.ca.material
        return certificate_pb2.TrustBundle(roots_pem=material.roots_pem, version=material.version)

    @property
    def bundle_pem(self) -> bytes:
        return "".join(self.ca.material.roots_pem).encode()

    def server_key_and_chain(self) -> tuple[bytes, bytes]:
        key, issued = self._server
        return key, "".join(issued.chain_pem).encode()

    def reload(self) -> bool:
        """Re-read the CA directory if it changed; True when new material is in use."""
        prints = ca_files.fingerprint(self.directory)
        if prints == self._fingerprint:
            return False
        self._fingerprint = prints
        try:
            material = ca_files.load(self.directory)
        except ca_files.CaFilesError as exc:
            log.error("CA directory changed but cannot be used (%s); still signing with the previous root", exc)
            return False
        if material.version == self.ca.material.version:
            return False
        self.ca.replace(material)
        log.info("CA material reloaded: signing root %s, %d root(s) in the trust bundle, bundle version %s",
                 material.cert.subject.rfc4514_string(), len(material.roots), material.version)
        self._renew_server_certificate()
        return True

    def _renew_server_certificate(self) -> None:
        self._server = self._issue_server_certificate()
        self._generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def server_certificate_due(self, now: datetime.datetime | None = None) -> bool:
        """Past half of the serving certificate's life."""
        _, issued = self._server
        now = now or datetime.datetime.now(datetime.UTC)
        return now >= issued.not_after - SERVER_CERT_TTL / 2

    async def watch(self, interval: float = 2.0) -> None:
        """Poll the directory and the serving certificate's age until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if not self.reload() and self.server_certificate_due():
                self._renew_server_certificate()

    async def wait_change(self) -> None:
        """Return after the next change of the bundle or the serving certificate."""
        await self._changed.wait()

    def credentials_fetcher(self, *, client_auth: bool) -> Callable[[], grpc.ServerCertificateConfiguration | None]:
        """For grpc.dynamic_ssl_server_credentials: a new configuration once per change, else None."""
        seen = self._generation

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            nonlocal seen
            if seen == self._generation:
                return None
            seen = self._generation
            return self.certificate_configuration(client_auth=client_auth)

        return fetch

    def certificate_configuration(self, *, client_auth: bool) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [self.server_key_and_chain()], root_certificates=self.bundle_pem if client_auth else None)

    def server_credentials(self, *, client_auth: bool) -> grpc.ServerCredentials:
        """TLS server credentials that follow the CA; with client_auth, a client certificate is required."""
        return grpc.dynamic_ssl_server_credentials(
            self.certificate_configuration(client_auth=client_auth),
            self.credentials_fetcher(client_auth=client_auth),
            require_client_authentication=client_auth)
