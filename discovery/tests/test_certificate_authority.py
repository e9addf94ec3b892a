"""The mesh CA's files and signing, with real keys and certificates (cryptography)."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import PROXY_UID, Pki, make_traversable_for_others  # type: ignore[import-not-found]
from meshbox.api.identity import WorkloadIdentity
from meshbox.discovery import ca_files
from meshbox.discovery.certificate_authority import CertificateAuthority, CsrError, CsrIdentityError

SLEEP = WorkloadIdentity("cluster.local", "default", "sleep")


def test_first_start_generates_and_persists_a_root(tmp_path: Path) -> None:
    material, created = ca_files.load_or_create(tmp_path, "cluster.local")
    assert created
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file left behind"
    again, created_again = ca_files.load_or_create(tmp_path, "cluster.local")
    assert not created_again
    assert again.cert == material.cert and again.version == material.version
    assert material.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_key_without_its_certificate_is_completed_not_replaced(tmp_path: Path) -> None:
    """A crash between the two writes leaves ca.key only: the next start self-signs that key."""
    material, _ = ca_files.load_or_create(tmp_path, "cluster.local")
    (tmp_path / "ca.crt").unlink()
    recovered, created = ca_files.load_or_create(tmp_path, "cluster.local")
    assert not created
    assert recovered.cert.public_key() == material.key.public_key()


def test_operator_files_are_checked(tmp_path: Path) -> None:
    pki = Pki()
    root, key = pki.root("operator root")
    other, _ = pki.root("other root")
    (tmp_path / "ca.crt").write_bytes(pki.pem(root))
    (tmp_path / "ca.key").write_bytes(pki.key_pem(key))
    assert ca_files.load(tmp_path).roots == (root,)
    (tmp_path / "roots.pem").write_bytes(pki.pem(other))
    with pytest.raises(ca_files.CaFilesError, match="does not contain the signing root"):
        ca_files.load(tmp_path)
    (tmp_path / "roots.pem").write_bytes(pki.pem(other) + pki.pem(root))
    assert ca_files.load(tmp_path).roots == (other, root)
    (tmp_path / "ca.key").write_bytes(pki.key_pem(pki.key()))
    with pytest.raises(ca_files.CaFilesError, match="is not the key of"):
        ca_files.load(tmp_path)
    (tmp_path / "ca.key").write_text("garbage")
    with pytest.raises(ca_files.CaFilesError, match=r"ca\.key: not an unencrypted PEM private key"):
        ca_files.load(tmp_path)
    leaf, leaf_key = pki.leaf(root, key)
    (tmp_path / "ca.crt").write_bytes(pki.pem(leaf))
    (tmp_path / "ca.key").write_bytes(pki.key_pem(leaf_key))
    with pytest.raises(ca_files.CaFilesError, match="is not a CA certificate"):
        ca_files.load(tmp_path)


_LOAD_AS_CALLER = """
import sys
from pathlib import Path
from meshbox.discovery import ca_files
try:
    ca_files.load_or_create(Path(sys.argv[1]), "cluster.local")
except ca_files.CaFilesError as exc:
    print(exc)
    sys.exit(3)
"""


def test_read_only_empty_directory_is_a_clear_error(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """An empty CA directory discovery may not write to. Root may write anywhere, so as root the load
    runs as the proxy's UID (1337) on a directory owned by root; otherwise as the caller on a 0500 one."""
    directory = tmp_path / "ca"
    directory.mkdir(mode=0o500 if os.geteuid() else 0o755)
    python, prefix = sys.executable, []
    if os.geteuid() == 0:
        python = request.getfixturevalue("uid1337_python")
        make_traversable_for_others(directory)
        prefix = ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups", "--"]
    try:
        result = subprocess.run([*prefix, python, "-c", _LOAD_AS_CALLER, str(directory)],
                                capture_output=True, text=True, timeout=60, check=False)
    finally:
        directory.chmod(0o700)
    assert result.returncode == 3, result.stderr
    assert "not writable" in result.stdout
    assert list(directory.iterdir()) == []


def _authority(tmp_path: Path) -> CertificateAuthority:
    material, _ = ca_files.load_or_create(tmp_path, "cluster.local")
    return CertificateAuthority(material)


def test_signs_exactly_the_proven_identity_for_24_hours(tmp_path: Path) -> None:
    ca = _authority(tmp_path)
    csr, key = Pki().csr(uris=(SLEEP.spiffe_id,))
    issued = ca.sign_workload_csr(csr, SLEEP)
    cert = x509.load_pem_x509_certificate(issued.chain_pem[0].encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/default/sa/sleep"]
    assert sans.get_values_for_type(x509.DNSName) == []
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.public_key() == key.public_key()
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(hours=24) <= life <= datetime.timedelta(hours=24, minutes=2)
    cert.verify_directly_issued_by(ca.material.cert)
    # A CSR naming no identity gets the proven one.
    bare, _ = Pki().csr()
    assert "sa/sleep" in x509.load_pem_x509_certificate(ca.sign_workload_csr(bare, SLEEP).chain_pem[0].encode()) \
        .extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)[0]


def test_ttl_is_capped(tmp_path: Path) -> None:
    ca = _authority(tmp_path)
    csr, _ = Pki().csr(uris=(SLEEP.spiffe_id,))
    cert = x509.load_pem_x509_certificate(
        ca.sign_workload_csr(csr, SLEEP, requested_ttl=datetime.timedelta(days=365)).chain_pem[0].encode())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(days=7, minutes=2)
    short = x509.load_pem_x509_certificate(
        ca.sign_workload_csr(csr, SLEEP, requested_ttl=datetime.timedelta(hours=1)).chain_pem[0].encode())
    assert short.not_valid_after_utc - short.not_valid_before_utc <= datetime.timedelta(hours=1, minutes=2)


@pytest.mark.parametrize("uris,dns", [
    (("spiffe://cluster.local/ns/default/sa/admin",), ()),
    (("spiffe://cluster.local/ns/kube-system/sa/sleep",), ()),
    (("spiffe://evil.example/ns/default/sa/sleep",), ()),
    (("spiffe://cluster.local/ns/default/sa/sleep", "spiffe://cluster.local/ns/default/sa/admin"), ()),
    (("spiffe://cluster.local/ns/default/sa/sleep",), ("kubernetes.default.svc",)),
])
def test_csr_for_another_identity_is_refused(tmp_path: Path, uris: tuple[str, ...], dns: tuple[str, ...]) -> None:
    csr, _ = Pki().csr(uris=uris, dns=dns)
    with pytest.raises(CsrIdentityError, match=r"token proves spiffe://cluster\.local/ns/default/sa/sleep"):
        _authority(tmp_path).sign_workload_csr(csr, SLEEP)


def test_malformed_and_wrongly_signed_csrs_are_refused(tmp_path: Path) -> None:
    ca = _authority(tmp_path)
    with pytest.raises(CsrError, match="not a PEM certificate signing request"):
        ca.sign_workload_csr("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", SLEEP)
    with pytest.raises(CsrError, match="not a PEM"):
        ca.sign_workload_csr("hello", SLEEP)
    with pytest.raises(CsrError, match="larger than"):
        ca.sign_workload_csr("x" * 100_000, SLEEP)
    # Flip one byte inside the signature: the CSR still parses, its signature does not verify.
    pem, _ = Pki().csr(uris=(SLEEP.spiffe_id,))
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(CsrError, match="signature"):
        ca.sign_workload_csr(tampered, SLEEP)


def test_two_root_bundle_version_changes_with_the_signing_root(tmp_path: Path) -> None:
    pki = Pki()
    old, old_key = pki.root("old root")
    new, new_key = pki.root("new root")
    (tmp_path / "roots.pem").write_bytes(pki.pem(old) + pki.pem(new))
    (tmp_path / "ca.crt").write_bytes(pki.pem(old))
    (tmp_path / "ca.key").write_bytes(pki.key_pem(old_key))
    signing_old = ca_files.load(tmp_path)
    (tmp_path / "ca.crt").write_bytes(pki.pem(new))
    (tmp_path / "ca.key").write_bytes(pki.key_pem(new_key))
    signing_new = ca_files.load(tmp_path)
    assert signing_old.roots == signing_new.roots
    assert signing_old.version != signing_new.version
