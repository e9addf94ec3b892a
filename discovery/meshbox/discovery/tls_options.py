"""From command-line TLS options to the running pieces: the CA keeper and the token authenticator."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

from meshbox.api.kube.names import DISCOVERY_SERVICE, MESH_NAMESPACE, service_dns_names
from meshbox.discovery.ca_files import CaMaterial
from meshbox.discovery.ca_keeper import CaKeeper
from meshbox.discovery.server import Security
from meshbox.discovery.token_auth import (
    SA_DIR,
    Authenticator,
    AuthenticatorUnavailable,
    LocalTokenAuthenticator,
    TokenReviewAuthenticator,
)

DISCOVERY_NAMESPACE = MESH_NAMESPACE


def default_server_names(namespace: str = MESH_NAMESPACE) -> list[str]:
    """The discovery Service's in-cluster names: what agents dial, what its certificate must name."""
    return service_dns_names(DISCOVERY_SERVICE, namespace)


@dataclass(frozen=True)
class TlsOptions:
    ca_dir: Path
    ca_port: int
    trust_domain: str
    server_names: list[str] = field(default_factory=list)
    local_token_key: Path | None = None
    token_review_url: str | None = None
    token_review_ca_file: Path | None = None
    token_review_token_file: Path | None = None
    token_audiences: tuple[str, ...] = ()
    workload_cert_ttl: float = 86400.0
    ca_secret: str | None = None  # Kubernetes: the Secret holding (or to hold) the root, in `namespace`
    namespace: str = DISCOVERY_NAMESPACE


def authenticator_from_options(options: TlsOptions, *, kubernetes: bool) -> Authenticator:
    """Local tokens when a key is given; else TokenReviews (explicit URL, or the cluster we run in)."""
    if options.local_token_key is not None:
        try:
            return LocalTokenAuthenticator.from_file(options.local_token_key)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--local-token-key: {exc}") from None
    if options.token_review_url:
        return TokenReviewAuthenticator(options.token_review_url, ca_file=options.token_review_ca_file,
                                        credential_file=options.token_review_token_file or SA_DIR / "token",
                                        audiences=options.token_audiences)
    if not kubernetes:
        raise ValueError("--ca-dir with --registry-dir needs a way to check tokens: --local-token-key FILE "
                         "or --token-review-url URL")
    try:
        return TokenReviewAuthenticator.in_cluster(options.token_audiences)
    except AuthenticatorUnavailable as exc:
        raise ValueError(f"cannot check tokens with TokenReviews: {exc}; give --token-review-url") from None


def security_from_options(options: TlsOptions, *, kubernetes: bool,
                          material: CaMaterial | None = None) -> Security:
    """The running pieces; ``material`` is the root from the Kubernetes Secret when the mount is still empty."""
    keeper = CaKeeper(options.ca_dir, options.trust_domain,
                      options.server_names or default_server_names(namespace=options.namespace),
                      namespace=options.namespace, material=material)
    keeper.ca.default_ttl = datetime.timedelta(seconds=options.workload_cert_ttl)
    return Security(keeper, authenticator_from_options(options, kubernetes=kubernetes), options.ca_port)
