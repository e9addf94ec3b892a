"""discovery with its CA and mutual TLS, over real gRPC on loopback, with real certificates.

A test agent gets a workload certificate from CertificateService (CSR + local-cluster token),
then opens the discovery stream with it. Refusals are checked end to end: certificates TLS
refuses (forged, expired, foreign CA, wrongly signed; gRPC core logs why), a node that is not
the certificate's pod, CSRs for another identity or malformed, and root rotation through a
two-root bundle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import Pki  # type: ignore[import-not-found]
from meshbox.api import local_tokens
from meshbox.api.files import write_atomically
from meshbox.api.v1 import certificate_pb2, certificate_pb2_grpc, discovery_pb2_grpc
from meshbox.discovery import ca_files
from meshbox.discovery.ca_keeper import CaKeeper
from meshbox.discovery.payloads import PUSH_ORDER
from meshbox.discovery.server import Security
from meshbox.discovery.token_auth import LocalTokenAuthenticator

SERVER_NAME = "meshbox-discovery.meshbox-system.svc"
DEFAULT_SA = "spiffe://cluster.local/ns/default/sa/default"
TWO_SA = "spiffe://cluster.local/ns/default/sa/service-two"
KEY = local_tokens.new_key()


def token(namespace: str = "default", sa: str = "default", pod: str = "service-one-a") -> str:
    return local_tokens.mint(KEY, local_tokens.TokenClaims(namespace, sa, pod, int(time.time()) + 3600))


def security(ca_dir: Path) -> Security:
    ca_dir.mkdir(exist_ok=True)
    keeper = CaKeeper(ca_dir, "cluster.local", [SERVER_NAME, "127.0.0.1"])
    return Security(keeper, LocalTokenAuthenticator(KEY), ca_port=0, reload_interval=0.05)


def tls_options() -> list[tuple[str, Any]]:
    return [("grpc.ssl_target_name_override", SERVER_NAME)]


def ca_channel(port: int, bundle: bytes) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(bundle), options=tls_options())


def mtls_channel(port: int, bundle: bytes, key_pem: bytes, chain_pem: bytes) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(bundle, private_key=key_pem, certificate_chain=chain_pem)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=tls_options())


async def create_certificate(port: int, bundle: bytes, csr_pem: str,
                             bearer: str | None) -> certificate_pb2.CreateCertificateResponse:
    async with ca_channel(port, bundle) as channel:
        metadata = (("authorization", f"Bearer {bearer}"),) if bearer is not None else None
        response: certificate_pb2.CreateCertificateResponse = await certificate_pb2_grpc.CertificateServiceStub(
            channel).CreateCertificate(certificate_pb2.CreateCertificateRequest(csr_pem=csr_pem), metadata=metadata,
                                       timeout=5)
        return response


async def workload_certificate(port: int, bundle: bytes, spiffe_id: str = DEFAULT_SA,
                               bearer: str | None = None) -> tuple[bytes, bytes]:
    pki = Pki()
    csr, key = pki.csr(uris=(spiffe_id,))
    response = await create_certificate(port, bundle, csr, bearer or token())
    return pki.key_pem(key), "".join(response.cert_chain_pem).encode()


async def first_config(kit: Any, channel: grpc.aio.Channel, pod_name: str, ip: str,
                       namespace: str = "default") -> dict[str, Any]:
    agent = kit.AgentClient(channel, kit.node(pod_name, ip, namespace))
    agent.subscribe_all()
    try:
        return await agent.receive_all()
    finally:
        agent.close()


async def refused_node(kit: Any, channel: grpc.aio.Channel, pod_name: str, ip: str,
                       namespace: str) -> grpc.aio.AioRpcError:
    """Ask for one type only: a refused stream then ends with the server's status, not a failed write."""
    agent = kit.AgentClient(channel, kit.node(pod_name, ip, namespace))
    agent.send(PUSH_ORDER[0])
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await agent.receive()
        return refused.value
    finally:
        agent.close()


def bundle_of(ca_dir: Path) -> bytes:
    return "".join(ca_files.load(ca_dir).roots_pem).encode()


@pytest.fixture
def secured_registry(kit: Any, tmp_path: Path) -> Path:
    """The tutorial's objects, service-two's pods running as service account service-two."""
    directory = tmp_path / "registry"
    directory.mkdir()
    objects = kit.tutorial_objects()
    for obj in objects:
        if obj["kind"] == "Pod" and obj["metadata"]["name"].startswith("service-two"):
            obj["spec"]["serviceAccountName"] = "service-two"
    kit.write_yaml(directory / "mesh.yaml", objects)
    return directory


def test_workload_gets_a_certificate_then_its_config_over_mutual_tls(kit: Any, secured_registry: Path,
                                                                      tmp_path: Path) -> None:
    async def scenario() -> None:
        async with kit.running_server(secured_registry, security=security(tmp_path / "ca")) as server:
            bundle = bundle_of(tmp_path / "ca")
            key_pem, chain_pem = await workload_certificate(server.ports.ca, bundle)
            leaf = x509.load_pem_x509_certificate(chain_pem)
            uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert uris.get_values_for_type(x509.UniformResourceIdentifier) == [DEFAULT_SA]
            async with mtls_channel(server.ports.grpc, bundle, key_pem, chain_pem) as channel:
                agent = kit.AgentClient(channel, kit.node("service-one-a", "10.1.0.11"))
                agent.subscribe_all()
                assert len(await agent.receive_all()) == 4
                # proxy-status names the stream's identity: its client certificate's SPIFFE ID.
                (proxy,) = json.loads((await server.http_get("/debug/syncz"))[1])["proxies"]
                assert (proxy["id"], proxy["identity"]) == ("service-one-a.default", DEFAULT_SA)
                agent.close()
            # The bundle watch answers at once with the current roots.
            async with ca_channel(server.ports.ca, bundle) as channel:
                stream = certificate_pb2_grpc.CertificateServiceStub(channel).WatchTrustBundle(
                    certificate_pb2.WatchTrustBundleRequest())
                first = await asyncio.wait_for(stream.read(), 5)
                assert "".join(first.roots_pem).encode() == bundle
                stream.cancel()
    asyncio.run(scenario())


def test_a_node_of_another_pod_is_refused_with_a_log_line(kit: Any, secured_registry: Path, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with kit.running_server(secured_registry, security=security(tmp_path / "ca")) as server:
            bundle = bundle_of(tmp_path / "ca")
            key_pem, chain_pem = await workload_certificate(server.ports.ca, bundle)
            async with mtls_channel(server.ports.grpc, bundle, key_pem, chain_pem) as channel:
                cases = [("service-two-v1", "10.1.0.21", "default", "runs as service account 'service-two'"),
                         ("service-one-a", "10.1.0.11", "other", "of namespace 'other'"),
                         ("no-such-pod", "10.1.0.99", "default", "no pod default/no-such-pod"),
                         ("service-one-a", "10.1.0.99", "default", "claims IP 10.1.0.99")]
                for pod_name, ip, namespace, why in cases:
                    error = await refused_node(kit, channel, pod_name, ip, namespace)
                    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
                    assert why in (error.details() or "")
                    assert any("refused node" in r.getMessage() and why in r.getMessage() for r in caplog.records)
                # The same connection still gets its own pod's config.
                assert len(await first_config(kit, channel, "service-one-a", "10.1.0.11")) == 4
            # service-two's own certificate gets service-two's config.
            key2, chain2 = await workload_certificate(server.ports.ca, bundle, TWO_SA,
                                                      token(sa="service-two", pod="service-two-v1"))
            async with mtls_channel(server.ports.grpc, bundle, key2, chain2) as channel:
                assert len(await first_config(kit, channel, "service-two-v1", "10.1.0.21")) == 4
    caplog.set_level(logging.WARNING, logger="meshbox.discovery")
    asyncio.run(scenario())


def test_csr_refusals_are_clear_and_leave_the_server_serving(kit: Any, secured_registry: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with kit.running_server(secured_registry, security=security(tmp_path / "ca")) as server:
            bundle = bundle_of(tmp_path / "ca")
            key_pem, chain_pem = await workload_certificate(server.ports.ca, bundle)
            async with mtls_channel(server.ports.grpc, bundle, key_pem, chain_pem) as channel:
                agent = kit.AgentClient(channel, kit.node("service-one-a", "10.1.0.11"))
                agent.subscribe_all()
                assert len(await agent.receive_all()) == 4
                pki = Pki()
                good, _ = pki.csr(uris=(DEFAULT_SA,))
                other, _ = pki.csr(uris=(TWO_SA,))
                foreign_key = local_tokens.new_key()
                forged = local_tokens.mint(foreign_key, local_tokens.TokenClaims("default", "service-two", "x",
                                                                                 int(time.time()) + 60))
                expired = local_tokens.mint(KEY, local_tokens.TokenClaims("default", "default", "x", 1))
                refusals = [
                    (good, None, grpc.StatusCode.UNAUTHENTICATED, "no service-account token"),
                    (good, forged, grpc.StatusCode.UNAUTHENTICATED, "signature does not match"),
                    (good, expired, grpc.StatusCode.UNAUTHENTICATED, "token expired"),
                    (other, token(), grpc.StatusCode.PERMISSION_DENIED, f"the CSR asks for {TWO_SA}"),
                    ("-----BEGIN CERTIFICATE REQUEST-----\nZm9v\n-----END CERTIFICATE REQUEST-----\n", token(),
                     grpc.StatusCode.INVALID_ARGUMENT, "not a PEM certificate signing request"),
                    ("\x00\xff garbage", token(), grpc.StatusCode.INVALID_ARGUMENT, "bad CSR"),
                ]
                for csr, bearer, code, why in refusals:
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await create_certificate(server.ports.ca, bundle, csr, bearer)
                    assert refused.value.code() == code, refused.value
                    assert why in (refused.value.details() or "")
                    assert any(why in r.getMessage() for r in caplog.records), why
                # Unaffected: a good CSR is signed, and the open stream still gets pushes.
                assert (await create_certificate(server.ports.ca, bundle, good, token())).cert_chain_pem
                kit.write_yaml(secured_registry / "extra.yaml", [kit.service("service-three", "10.96.0.13")])
                pushed = await agent.receive(timeout=10)
                assert pushed.type_url
                agent.close()
    caplog.set_level(logging.INFO)
    asyncio.run(scenario())


def test_certificates_tls_refuses_and_why(kit: Any, secured_registry: Path, tmp_path: Path,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    """Forged (self-signed), expired, foreign-CA and wrongly signed client certificates never get a stream;
    gRPC's TLS layer logs the reason on stderr."""
    ca_dir = tmp_path / "ca"

    async def refused(port: int, bundle: bytes, key_pem: bytes, chain_pem: bytes) -> None:
        async with mtls_channel(port, bundle, key_pem, chain_pem) as channel:
            stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
            call = stub.StreamResources()
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await asyncio.wait_for(call.read(), 5)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE

    async def scenario() -> None:
        async with kit.running_server(secured_registry, security=security(ca_dir)) as server:
            material = ca_files.load(ca_dir)
            bundle = bundle_of(ca_dir)
            pki = Pki()
            foreign_root, foreign_key = pki.root("foreign root")
            self_key = pki.key()
            forged_cert = (pki.x509.CertificateBuilder().subject_name(pki.name("leaf")).issuer_name(pki.name("leaf"))
                           .public_key(self_key.public_key()).serial_number(1)
                           .not_valid_before(pki.now - pki.delta(minutes=5))
                           .not_valid_after(pki.now + pki.delta(hours=1))
                           .add_extension(pki.x509.SubjectAlternativeName(
                               [pki.x509.UniformResourceIdentifier(DEFAULT_SA)]), critical=False)
                           .sign(self_key, pki.hashes.SHA256()))
            expired, expired_key = pki.leaf(material.cert, material.key, uris=(DEFAULT_SA,),
                                            not_before=pki.now - pki.delta(hours=3),
                                            not_after=pki.now - pki.delta(hours=1))
            foreign, foreign_leaf_key = pki.leaf(foreign_root, foreign_key, uris=(DEFAULT_SA,))
            wrongly_signed, wrong_key = pki.leaf(material.cert, pki.key(), uris=(DEFAULT_SA,))
            cases = [
                ("forged", forged_cert, self_key, "self-signed certificate|self signed certificate"),
                ("expired", expired, expired_key, "certificate has expired"),
                ("foreign CA", foreign, foreign_leaf_key, "unable to get local issuer certificate"),
                ("wrongly signed", wrongly_signed, wrong_key, "certificate signature failure"),
            ]
            for _name, cert, key, why in cases:
                capfd.readouterr()
                await refused(server.ports.grpc, bundle, pki.key_pem(key), pki.pem(cert))
                await asyncio.sleep(0.2)
                err = capfd.readouterr().err
                assert any(w in err for w in why.split("|")), (_name, err[-2000:])
            # And a stream without any client certificate, on the CA port (TLS without client auth):
            async with ca_channel(server.ports.ca, bundle) as channel:
                call = discovery_pb2_grpc.DiscoveryServiceStub(channel).StreamResources()
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await asyncio.wait_for(call.read(), 5)
                assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "no client certificate" in (failed.value.details() or "")
    asyncio.run(scenario())


def _write_ca(ca_dir: Path, cert: x509.Certificate, key: Any, roots: list[x509.Certificate]) -> None:
    pem = serialization.Encoding.PEM
    write_atomically(ca_dir / "roots.pem", b"".join(r.public_bytes(pem) for r in roots))
    write_atomically(ca_dir / "ca.key", key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                                   serialization.NoEncryption()), mode=0o600)
    write_atomically(ca_dir / "ca.crt", cert.public_bytes(pem))


def test_root_rotation_through_a_two_root_bundle(kit: Any, secured_registry: Path, tmp_path: Path) -> None:
    """Old root → bundle {old, new} → sign with new → drop old: no workload is cut off until the last step,
    and then only certificates of the old root are."""
    ca_dir = tmp_path / "ca"

    async def next_bundle(stream: Any, version: str) -> certificate_pb2.TrustBundle:
        while True:
            bundle: certificate_pb2.TrustBundle = await asyncio.wait_for(stream.read(), 10)
            if bundle.version != version:
                return bundle

    async def config_ok(port: int, bundle: bytes, key: bytes, chain: bytes) -> bool:
        try:
            async with mtls_channel(port, bundle, key, chain) as channel:
                return len(await asyncio.wait_for(first_config(kit, channel, "service-one-a", "10.1.0.11"), 5)) == 4
        except (grpc.aio.AioRpcError, TimeoutError):
            return False

    async def scenario() -> None:
        async with kit.running_server(secured_registry, security=security(ca_dir)) as server:
            old = ca_files.load(ca_dir)
            old_bundle = bundle_of(ca_dir)
            old_key_pem, old_chain = await workload_certificate(server.ports.ca, old_bundle)
            async with ca_channel(server.ports.ca, old_bundle) as watch_channel:
                stream = certificate_pb2_grpc.CertificateServiceStub(watch_channel).WatchTrustBundle(
                    certificate_pb2.WatchTrustBundleRequest())
                current = await asyncio.wait_for(stream.read(), 5)
                # 1. Add the new root to the bundle; the old one still signs.
                new_cert, new_key = ca_files.generate_root("cluster.local")
                _write_ca(ca_dir, old.cert, old.key, [old.cert, new_cert])
                current = await next_bundle(stream, current.version)
                assert len(current.roots_pem) == 2
                both = "".join(current.roots_pem).encode()
                # 2. Sign with the new root: the bundle version changes again (agents renew at once).
                _write_ca(ca_dir, new_cert, new_key, [old.cert, new_cert])
                current = await next_bundle(stream, current.version)
                new_key_pem, new_chain = await workload_certificate(server.ports.ca, both)
                assert x509.load_pem_x509_certificate(new_chain).issuer == new_cert.subject
                # Both generations of workload certificates are accepted meanwhile.
                assert await config_ok(server.ports.grpc, both, old_key_pem, old_chain)
                assert await config_ok(server.ports.grpc, both, new_key_pem, new_chain)
                # discovery now serves a certificate from the new root: the old root alone no longer verifies it.
                assert not await config_ok(server.ports.grpc, old_bundle, new_key_pem, new_chain)
                # 3. Drop the old root: its certificates are refused, the new ones keep working.
                _write_ca(ca_dir, new_cert, new_key, [new_cert])
                current = await next_bundle(stream, current.version)
                assert len(current.roots_pem) == 1
                assert not await config_ok(server.ports.grpc, both, old_key_pem, old_chain)
                assert await config_ok(server.ports.grpc, both, new_key_pem, new_chain)
                stream.cancel()
    asyncio.run(scenario())
