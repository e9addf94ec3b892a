"""The mesh CA: signs workload CSRs for the identity their caller proved, and discovery's own certificate.

A workload certificate has exactly one URI SAN, the caller's SPIFFE ID, no DNS names and no CA
power, and lives 24 h unless asked for less (never more than MAX_TTL). The CSR must be well
formed, self-signed by its key, and name that same SPIFFE ID (or no identity at all); anything
else is refused with a CsrError saying why.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshbox.api.identity import WorkloadIdentity
from meshbox.discovery.ca_files import CaMaterial

DEFAULT_TTL = datetime.timedelta(hours=24)
MAX_TTL = datetime.timedelta(days=7)
MIN_TTL = datetime.timedelta(minutes=1)
BACKDATE = datetime.timedelta(minutes=1)  # absorbs clock skew between CA and peers
MAX_CSR_BYTES = 16 * 1024
MIN_RSA_BITS = 2048


class CsrError(ValueError):
    """A CSR that will not be signed; the message says why."""


class CsrIdentityError(CsrError):
    """A CSR for an identity other than the one the caller proved."""


@dataclass(frozen=True)
class IssuedCertificate:
    chain_pem: list[str]  # leaf first; the root is not included (it is in the bundle)
    not_after: datetime.datetime


def _check_public_key(csr: x509.CertificateSigningRequest) -> None:
    key = csr.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CsrError(f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are needed")
    elif not isinstance(key, ec.EllipticCurvePublicKey):
        raise CsrError(f"unsupported key type {type(key).__name__} (use ECDSA or RSA)")


def parse_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """PEM → CSR, with its signature checked; raises CsrError."""
    if len(csr_pem) > MAX_CSR_BYTES:
        raise CsrError(f"CSR of {len(csr_pem)} bytes is larger than {MAX_CSR_BYTES}")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise CsrError(f"not a PEM certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise CsrError("the CSR's signature does not match its public key")
    _check_public_key(csr)
    return csr


def csr_identities(csr: x509.CertificateSigningRequest) -> list[str]:
    """The URI SANs a CSR asks for, and any DNS/IP/e-mail names spelled as 'kind:value'."""
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = list(sans.get_values_for_type(x509.UniformResourceIdentifier))
    names += [f"dns:{n}" for n in sans.get_values_for_type(x509.DNSName)]
    names += [f"ip:{n}" for n in sans.get_values_for_type(x509.IPAddress)]
    names += [f"email:{n}" for n in sans.get_values_for_type(x509.RFC822Name)]
    return names


class CertificateAuthority:
    """Signs with the current CaMaterial; :meth:`replace` swaps in new material (a rotated root)."""

    def __init__(self, material: CaMaterial, *, default_ttl: datetime.timedelta = DEFAULT_TTL) -> None:
        self.material = material
        self.default_ttl = default_ttl

    def replace(self, material: CaMaterial) -> None:
        self.material = material

    def _ttl(self, requested: datetime.timedelta | None) -> datetime.timedelta:
        if requested is None or requested <= datetime.timedelta(0):
            return self.default_ttl
        return max(MIN_TTL, min(requested, MAX_TTL))

    def _build(self, public_key: object, sans: list[x509.GeneralName], common_name: str,
               ttl: datetime.timedelta, now: datetime.datetime | None) -> IssuedCertificate:
        start = (now or datetime.datetime.now(datetime.UTC)) - BACKDATE
        # A certificate never outlives the root that signs it.
        end = min(start + BACKDATE + ttl, self.material.cert.not_valid_after_utc)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
            .issuer_name(self.material.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True,
                                         key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                                         content_commitment=False, data_encipherment=False, key_agreement=False,
                                         key_cert_sign=False, crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.material.key.public_key()),
                           critical=False)
        )
        cert = builder.sign(self.material.key, hashes.SHA256())
        return IssuedCertificate([cert.public_bytes(serialization.Encoding.PEM).decode()], end)

    def sign_workload_csr(self, csr_pem: str, identity: WorkloadIdentity, *,
                          requested_ttl: datetime.timedelta | None = None,
                          now: datetime.datetime | None = None) -> IssuedCertificate:
        """A certificate for ``identity`` (proven by the caller) over the CSR's key; CsrError if refused."""
        csr = parse_csr(csr_pem)
        asked = csr_identities(csr)
        if asked and asked != [identity.spiffe_id]:
            raise CsrIdentityError(f"the CSR asks for {', '.join(asked)} but the caller's token proves "
                                   f"{identity.spiffe_id}")
        return self._build(csr.public_key(), [x509.UniformResourceIdentifier(identity.spiffe_id)],
                           identity.spiffe_id, self._ttl(requested_ttl), now=now)

    def issue_server_certificate(self, identity: WorkloadIdentity, names: list[str],
                                 ttl: datetime.timedelta | None = None) -> tuple[bytes, IssuedCertificate]:
        """A fresh key and a certificate for discovery itself: its SPIFFE ID plus DNS names / IPs."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.spiffe_id)]
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        issued = self._build(key.public_key(), sans, names[0] if names else identity.spiffe_id,
                             self._ttl(ttl), now=None)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return key_pem, issued
