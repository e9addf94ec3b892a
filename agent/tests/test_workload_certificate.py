"""The agent's workload certificate against the real ``meshbox-discovery`` (its CA, mutual TLS):
key made in the agent, CSR with its SPIFFE ID, token from a file, files written atomically for
the proxy, renewal at half-life and at once on a root change, and a refused identity.

Everything runs on loopback with free ports; tokens are the local cluster's (meshbox.api.local_tokens),
the kind `meshctl local` mints. No root needed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshbox.agent.cert_files import CURRENT, WorkloadCredentials, read_credentials, write_credentials
from meshbox.api import local_tokens
from meshbox.api.files import write_atomically

VENV_BIN = Path(sys.executable).parent
STARTED = re.compile(r"serving discovery gRPC on 127\.0\.0\.1:(\d+), HTTP \(/ready, /metrics\) on "
                     r"127\.0\.0\.1:(\d+), CA on 127\.0\.0\.1:(\d+)")
APP_SA = "spiffe://cluster.local/ns/default/sa/app"

REGISTRY = """\
apiVersion: v1
kind: Service
metadata: {name: app, namespace: default}
spec:
  clusterIP: 10.96.0.50
  selector: {app: app}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Pod
metadata: {name: app-1, namespace: default, labels: {app: app}}
spec:
  serviceAccountName: app
  containers:
  - name: app
    ports: [{containerPort: 8080}]
status: {podIP: 127.0.0.1}
"""


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class MeshCa:
    proc: subprocess.Popen[bytes]
    ca_dir: Path
    log_path: Path
    grpc: int
    ca: int
    token_file: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def mesh_ca(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MeshCa]:
    """A real meshbox-discovery with its CA on free loopback ports; an indirect parameter sets the certificate life."""
    ttl = getattr(request, "param", 86400)
    registry, ca_dir = tmp_path / "registry", tmp_path / "ca"
    registry.mkdir()
    ca_dir.mkdir()
    (registry / "mesh.yaml").write_text(REGISTRY)
    key = local_tokens.new_key()
    (tmp_path / "token.key").write_text(key.hex())
    token_file = tmp_path / "app.token"
    token_file.write_text(local_tokens.mint(key, local_tokens.TokenClaims("default", "app", "app-1",
                                                                        int(time.time()) + 3600)))
    log_path = tmp_path / "discovery.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(VENV_BIN / "meshbox-discovery"), "--registry-dir", str(registry), "--listen-address", "127.0.0.1",
             "--grpc-port", "0", "--http-port", "0", "--ca-port", "0", "--ca-dir", str(ca_dir),
             "--local-token-key", str(tmp_path / "token.key"), "--server-name", "127.0.0.1",
             "--workload-cert-ttl", str(ttl), "--poll-interval", "0.05"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: STARTED.search(log_path.read_text()) or proc.poll() is not None, 20, "discovery start")
        match = STARTED.search(log_path.read_text())
        assert match, log_path.read_text()
        yield MeshCa(proc, ca_dir, log_path, int(match[1]), int(match[3]), token_file)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tls_agent(start_agent: Any, ca: MeshCa, cert_dir: Path, service_account: str = "app") -> Any:
    return start_agent(f"127.0.0.1:{ca.grpc}", agent_args=[
        "--ca-root-file", str(ca.ca_dir / "ca.crt"), "--ca-address", f"127.0.0.1:{ca.ca}",
        "--token-file", str(ca.token_file), "--cert-dir", str(cert_dir)], env={"SERVICE_ACCOUNT": service_account})


def leaf(cert_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(read_credentials(cert_dir).chain_pem)


def generation(cert_dir: Path) -> str:
    return os.readlink(cert_dir / CURRENT)


def test_agent_gets_its_certificate_and_config_over_mutual_tls(start_agent: Any, mesh_ca: MeshCa,
                                                              tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    agent = tls_agent(start_agent, mesh_ca, cert_dir)
    agent.wait_ready()  # a config arrived: the discovery stream runs over mutual TLS with the new certificate
    creds = read_credentials(cert_dir)
    cert = leaf(cert_dir)
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier) == [APP_SA]
    key = serialization.load_pem_private_key(creds.key_pem, password=None)
    assert cert.public_key() == key.public_key()
    assert creds.roots_pem == (mesh_ca.ca_dir / "ca.crt").read_bytes()
    current = cert_dir / generation(cert_dir)
    assert (current / "key.pem").stat().st_mode & 0o777 == 0o600
    assert "issued a certificate for spiffe://cluster.local/ns/default/sa/app (pod app-1)" in mesh_ca.log()
    assert "connected to discovery" in agent.log()


@pytest.mark.parametrize("mesh_ca", [4], indirect=True)
def test_certificate_is_renewed_at_half_life(start_agent: Any, mesh_ca: MeshCa, tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    agent = tls_agent(start_agent, mesh_ca, cert_dir)
    agent.wait_ready()
    first = leaf(cert_dir)
    got_first = time.monotonic()
    wait_until(lambda: leaf(cert_dir).serial_number != first.serial_number, 10, "a renewed certificate")
    waited = time.monotonic() - got_first
    # Half of the 4 s the certificate had left: not at once (no renewal storm), not after it expired.
    assert 1.0 <= waited <= 3.9, waited
    renewed = leaf(cert_dir)
    assert renewed.not_valid_after_utc > first.not_valid_after_utc
    # Three renewals in ~4 s more: it keeps going, each with a new key.
    keys = {read_credentials(cert_dir).key_pem}
    wait_until(lambda: keys.add(read_credentials(cert_dir).key_pem) or len(keys) >= 3, 10, "more renewals")
    assert agent.ready_status() == 200


def test_root_change_renews_at_once(start_agent: Any, mesh_ca: MeshCa, tmp_path: Path) -> None:
    from meshbox.discovery import ca_files  # the test plays the operator rotating the CA's files

    cert_dir = tmp_path / "certs"
    agent = tls_agent(start_agent, mesh_ca, cert_dir)
    agent.wait_ready()
    old = ca_files.load(mesh_ca.ca_dir)
    new_cert, new_key = ca_files.generate_root("cluster.local")
    pem = serialization.Encoding.PEM
    roots = old.cert.public_bytes(pem) + new_cert.public_bytes(pem)
    write_atomically(mesh_ca.ca_dir / "roots.pem", roots)
    wait_until(lambda: read_credentials(cert_dir).roots_pem == roots, 15, "the two-root bundle in the agent's files")
    write_atomically(mesh_ca.ca_dir / "ca.key", new_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), mode=0o600)
    write_atomically(mesh_ca.ca_dir / "ca.crt", new_cert.public_bytes(pem))
    wait_until(lambda: leaf(cert_dir).issuer == new_cert.subject, 15, "a certificate from the new root")
    assert "renewing the workload certificate now" in agent.log()
    assert agent.ready_status() == 200


def test_a_certificate_for_another_identity_is_refused(start_agent: Any, mesh_ca: MeshCa, tmp_path: Path) -> None:
    """The pod claims service account 'admin' but its token proves 'app': no certificate, no config."""
    cert_dir = tmp_path / "certs"
    agent = tls_agent(start_agent, mesh_ca, cert_dir, service_account="admin")
    wait_until(lambda: "PERMISSION_DENIED" in agent.log(), 15, "the CA's refusal in the agent log")
    assert "the CSR asks for spiffe://cluster.local/ns/default/sa/admin but the caller's token proves " \
           "spiffe://cluster.local/ns/default/sa/app" in agent.log()
    assert "certificate refused" in mesh_ca.log()
    assert agent.ready_status() == 503
    assert not (cert_dir / CURRENT).exists()


def test_credential_files_swap_in_one_rename(tmp_path: Path) -> None:
    first = WorkloadCredentials(b"key1", b"chain1", b"roots1")
    second = WorkloadCredentials(b"key2", b"chain2", b"roots2")
    third = WorkloadCredentials(b"key3", b"chain3", b"roots3")
    g1 = write_credentials(tmp_path, first)
    assert read_credentials(tmp_path) == first
    g2 = write_credentials(tmp_path, second)
    assert read_credentials(tmp_path) == second
    assert g1.exists(), "the previous generation stays for a reader mid-read"
    write_credentials(tmp_path, third)
    assert read_credentials(tmp_path) == third
    assert not g1.exists() and g2.exists()
    assert (tmp_path / CURRENT).is_symlink()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
