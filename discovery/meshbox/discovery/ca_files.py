"""The mesh CA's root material on disk: load what the operator provides, or make it once and keep it.

A CA directory holds

- ``ca.crt`` and ``ca.key``: the signing root (PEM certificate, PEM PKCS#8 or traditional key);
- ``roots.pem`` (optional): the trust bundle, every root workloads should trust. It must contain
  ``ca.crt``. Holding the old and the new root lets the signing root change without an outage
  (docs/security.md, "Rotating the root").

In Kubernetes the directory is the Secret ``meshbox-ca`` mounted read-only. When the directory
has neither file and is writable, a root is generated and written atomically (a temporary file,
fsync, rename; the key first, mode 0600), so a crash never leaves half a CA behind.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from meshbox.api.files import write_atomically

CERT_FILE = "ca.crt"
KEY_FILE = "ca.key"
ROOTS_FILE = "roots.pem"
ROOT_VALIDITY = datetime.timedelta(days=3650)

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class CaFilesError(ValueError):
    """The CA directory cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class CaMaterial:
    """The signing root and its key, and the trust bundle (which includes the signing root)."""

    cert: x509.Certificate
    key: SigningKey
    roots: tuple[x509.Certificate, ...]

    @property
    def roots_pem(self) -> list[str]:
        return [r.public_bytes(serialization.Encoding.PEM).decode() for r in self.roots]

    @property
    def version(self) -> str:
        """A content hash of the bundle and of which root signs: changes when either changes."""
        digest = hashlib.sha256()
        for root in (self.cert, *self.roots):
            digest.update(root.fingerprint(hashes.SHA256()))
        return digest.hexdigest()[:16]


def generate_root(trust_domain: str, now: datetime.datetime | None = None) -> tuple[x509.Certificate, SigningKey]:
    """A fresh self-signed root (ECDSA P-256, 10 years) named after the trust domain."""
    key = ec.generate_private_key(ec.SECP256R1())
    return self_sign(key, trust_domain, now), key


def self_sign(key: SigningKey, trust_domain: str, now: datetime.datetime | None = None) -> x509.Certificate:
    """A root certificate for ``key``."""
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"meshbox root CA {start:%Y-%m-%d %H:%M:%S}")])
    public = key.public_key()
    return (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(start + ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CaFilesError(f"{path}: cannot read: {exc.strerror}") from None


def _parse_certs(pem: bytes, where: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise CaFilesError(f"{where}: not PEM certificates: {exc}") from None
    for cert in certs:
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CaFilesError(f"{where}: {cert.subject.rfc4514_string()} is not a CA certificate")
    return certs


def material_from_pem(cert_pem: bytes, key_pem: bytes, roots_pem: bytes | None, *, where: str) -> CaMaterial:
    """Signing root, key and optional bundle from PEM bytes; CaFilesError names ``where`` (a file or Secret)."""
    certs = _parse_certs(cert_pem, f"{where}{CERT_FILE}")
    if len(certs) != 1:
        raise CaFilesError(f"{where}{CERT_FILE}: expected one certificate, found {len(certs)}")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CaFilesError(f"{where}{KEY_FILE}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CaFilesError(f"{where}{KEY_FILE}: only ECDSA and RSA keys can sign, got {type(key).__name__}")
    cert = certs[0]
    if cert.public_key() != key.public_key():
        raise CaFilesError(f"{where}{KEY_FILE} is not the key of {where}{CERT_FILE}")
    roots = tuple(_parse_certs(roots_pem, f"{where}{ROOTS_FILE}")) if roots_pem is not None else (cert,)
    if cert not in roots:
        raise CaFilesError(f"{where}{ROOTS_FILE} does not contain the signing root {where}{CERT_FILE}: workloads "
                           "would not trust the certificates it signs")
    return CaMaterial(cert, key, roots)


def load(directory: Path) -> CaMaterial:
    """Read the CA directory; raises CaFilesError naming the bad file."""
    roots_path = directory / ROOTS_FILE
    return material_from_pem(_read(directory / CERT_FILE), _read(directory / KEY_FILE),
                             _read(roots_path) if roots_path.exists() else None, where=f"{directory}/")


def has_material(directory: Path) -> bool:
    """Whether the directory holds a signing root (or half of one)."""
    return (directory / CERT_FILE).exists() or (directory / KEY_FILE).exists()


def load_or_create(directory: Path, trust_domain: str) -> tuple[CaMaterial, bool]:
    """The CA in ``directory``; when it has no ca.crt and no ca.key, a new root written there first.

    Returns the material and whether it was just created.
    """
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.exists() or key_path.exists():
        if key_path.exists() and not cert_path.exists():
            # A crash between the two writes of a generated root: finish it from the kept key.
            key = load_key_only(key_path)
            write_atomically(cert_path, self_sign(key, trust_domain).public_bytes(serialization.Encoding.PEM))
        return load(directory), False
    if not directory.is_dir():
        raise CaFilesError(f"CA directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise CaFilesError(f"CA directory {directory} holds no {CERT_FILE}/{KEY_FILE} and is not writable: "
                           "provide the root (Kubernetes: the Secret meshbox-ca) or a writable directory")
    cert, key = generate_root(trust_domain)
    write_atomically(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), mode=0o600)
    write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return load(directory), True


def load_key_only(path: Path) -> SigningKey:
    key = serialization.load_pem_private_key(_read(path), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CaFilesError(f"{path}: only ECDSA and RSA keys can sign")
    return key


def fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, mtime, size) of the CA files: changes when the operator replaces any of them."""
    prints = []
    for name in (CERT_FILE, KEY_FILE, ROOTS_FILE):
        try:
            st = (directory / name).stat()
        except FileNotFoundError:
            continue
        prints.append((name, st.st_mtime_ns, st.st_size))
    return tuple(prints)
