"""Workload identities: SPIFFE IDs ``spiffe://<trust domain>/ns/<namespace>/sa/<service account>``.

Written once here and imported by the CA (discovery), the agent and the proxy. Istio writes the
same identity without the scheme as a *principal* (``cluster.local/ns/default/sa/sleep``), which is
what authorization rules match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
# SPIFFE: a trust domain is lower-case letters, digits, dots, dashes and underscores.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
# Kubernetes namespaces are DNS labels; service account names DNS subdomains.
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


class IdentityError(ValueError):
    """Not a workload identity; the message says which part is wrong."""


def check_trust_domain(value: str) -> None:
    """Raise IdentityError unless value is a SPIFFE trust domain (e.g. cluster.local)."""
    if not _TRUST_DOMAIN.fullmatch(value):
        raise IdentityError(f"not a trust domain (lower-case letters, digits, '.', '-', '_'): {value!r}")


def check_namespace(value: str) -> None:
    """Raise IdentityError unless value is a Kubernetes namespace name (a DNS label)."""
    if not _DNS_LABEL.fullmatch(value):
        raise IdentityError(f"not a namespace name: {value!r}")


def check_service_account(value: str) -> None:
    """Raise IdentityError unless value is a Kubernetes service account name."""
    if not _DNS_SUBDOMAIN.fullmatch(value):
        raise IdentityError(f"not a service account name: {value!r}")


@dataclass(frozen=True)
class WorkloadIdentity:
    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        check_namespace(self.namespace)
        check_service_account(self.service_account)

    @property
    def spiffe_id(self) -> str:
        return f"{SCHEME}{self.principal}"

    @property
    def principal(self) -> str:
        """Istio's spelling, used by AuthorizationPolicy ``principals``: the SPIFFE ID without scheme."""
        return f"{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.spiffe_id


def parse_spiffe_id(uri: str) -> WorkloadIdentity:
    """``spiffe://td/ns/NS/sa/SA`` → WorkloadIdentity; raises IdentityError on anything else."""
    if not uri.startswith(SCHEME):
        raise IdentityError(f"not a SPIFFE ID (must start with {SCHEME}): {uri!r}")
    parts = uri[len(SCHEME):].split("/")
    if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
        raise IdentityError(f"not a workload SPIFFE ID {SCHEME}<trust domain>/ns/<ns>/sa/<sa>: {uri!r}")
    return WorkloadIdentity(parts[0], parts[2], parts[4])
