"""The webhook's TLS material: a private CA and a serving certificate it signs.

The Kubernetes API server calls the webhook at ``https://<service>.<namespace>.svc`` and
trusts only the ``caBundle`` of the MutatingWebhookConfiguration, so ``meshctl install``
makes a CA of its own, signs a certificate for the service's DNS names with it and puts
the CA in the bundle. Keys are ECDSA P-256: small, fast, accepted by every API server.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshbox.api.files import write_atomically

DEFAULT_VALID_DAYS = 365


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes of the CA certificate and of the serving certificate and its key."""

    ca_cert_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshbox"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def generate_tls_material(
    dns_names: list[str],
    *,
    valid_days: int = DEFAULT_VALID_DAYS,
    now: datetime.datetime | None = None,
) -> TlsMaterial:
    """Make a fresh CA and a serving certificate for ``dns_names`` signed by it.

    The first name is the certificate's common name; all of them are subject alternative
    names (clients check only those). Validity starts a minute early to absorb clock skew.
    """
    if not dns_names:
        raise ValueError("a serving certificate needs at least one DNS name")
    if valid_days < 1:
        raise ValueError(f"valid_days must be at least 1, got {valid_days}")
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=1)
    end = start + datetime.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("meshbox webhook CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_names[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return TlsMaterial(
        ca_cert_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=_private_key_pem(key),
    )


def write_serving_pair(material: TlsMaterial, cert_file: Path, key_file: Path) -> None:
    """Write the serving certificate and key (key readable by the owner only), each atomically.

    The key goes first: a reloading server that sees the new certificate then finds its key.
    """
    write_atomically(key_file, material.key_pem, mode=0o600)
    write_atomically(cert_file, material.cert_pem)
