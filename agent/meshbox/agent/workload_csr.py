"""The workload's key pair and its certificate signing request. The key never leaves the pod."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def new_key_and_csr(spiffe_id: str) -> tuple[bytes, str]:
    """A fresh ECDSA P-256 key (PKCS#8 PEM) and a CSR (PEM) asking for ``spiffe_id`` as its URI SAN."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spiffe_id[:64])]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def validity(chain_pem: bytes) -> tuple[datetime.datetime, datetime.datetime]:
    """(not before, not after) of the first certificate of a chain."""
    cert = x509.load_pem_x509_certificate(chain_pem)
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def renewal_time(chain_pem: bytes, received: datetime.datetime) -> datetime.datetime:
    """Half-way through the life the certificate had left when it arrived.

    Counted from arrival, not from notBefore: the CA backdates certificates for clock skew,
    which would otherwise eat into (or, for short lifetimes, swallow) the first half.
    """
    _, end = validity(chain_pem)
    return received + (end - received) / 2
