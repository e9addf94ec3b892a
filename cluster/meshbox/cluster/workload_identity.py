"""Workload identity on the local cluster: the mesh CA's directory and the per-pod tokens.

Where a Kubernetes cluster has an API server to sign and review service-account tokens, the
local cluster keeps a key (``<state>/token.key``) and mints one token per pod when it starts
the pod (meshbox.api.local_tokens); discovery checks them with the same key. The CA's directory
(``ca/``) and the key live in ``<state>/security/``, readable by root only. Each pod with a sidecar
gets a directory only its proxy user can read, ``/run/meshbox-local/<pod netns>/`` (outside the
state directory, which the proxy user may not be able to traverse):

- ``token``: the pod's service-account token (what the kubelet would mount);
- ``root-cert.pem``: the mesh CA's roots, to trust the CA at first contact (kept current by the
  kubelet, :func:`refresh_pod_roots`, as Kubernetes keeps a mounted ConfigMap current);
- ``certs/``: where the agent writes the workload key and certificate (docs/security.md).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from meshbox.api import local_tokens
from meshbox.api.files import write_atomically

CA_PORT = 15012
TOKEN_LIFETIME_S = 30 * 86400
POD_SECRETS = Path("/run/meshbox-local")


class IdentityError(RuntimeError):
    """A pod's identity cannot be provisioned; the message says why."""


def security_dir(root: Path) -> Path:
    return root / "security"


def ca_dir(root: Path) -> Path:
    return security_dir(root) / "ca"


def token_key_file(root: Path) -> Path:
    return security_dir(root) / "token.key"


def discovery_args(root: Path) -> list[str]:
    """Flags that make the cluster's discovery the mesh CA (its root generated on first start)."""
    security_dir(root).mkdir(mode=0o700, exist_ok=True)
    ca_dir(root).mkdir(mode=0o700, exist_ok=True)
    if not token_key_file(root).exists():
        write_atomically(token_key_file(root), local_tokens.new_key().hex().encode(), mode=0o600)
    return ["--ca-dir", str(ca_dir(root)), "--local-token-key", str(token_key_file(root)), "--ca-port", str(CA_PORT)]


def pod_dir(netns: str) -> Path:
    return POD_SECRETS / netns


def _roots_file(root: Path) -> Path:
    """The CA's trust bundle: ``roots.pem``, else the signing root alone."""
    roots = ca_dir(root) / "roots.pem"
    return roots if roots.exists() else ca_dir(root) / "ca.crt"


def provision(root: Path, netns: str, pod: dict[str, Any], uid: int, gid: int) -> None:
    """Mint the pod's token and give it the roots (files only the proxy user ``uid`` can read)."""
    roots = _roots_file(root)
    if not roots.exists() or not token_key_file(root).exists():
        raise IdentityError("no mesh CA in this cluster (started without discovery?): a sidecar cannot get a "
                            "certificate")
    meta = pod["metadata"]
    account = pod["spec"].get("serviceAccountName") or "default"
    key = bytes.fromhex(token_key_file(root).read_text().strip())
    token = local_tokens.mint(key, local_tokens.TokenClaims(meta["namespace"], account, meta["name"],
                                                            int(time.time()) + TOKEN_LIFETIME_S))
    POD_SECRETS.mkdir(mode=0o711, exist_ok=True)
    directory = pod_dir(netns)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700)
    write_atomically(directory / "token", token.encode(), mode=0o400)
    write_atomically(directory / "root-cert.pem", roots.read_bytes(), mode=0o444)
    for path in (directory, directory / "token"):
        os.chown(path, uid, gid)


def refresh_pod_roots(root: Path, netns_names: Iterable[str]) -> list[str]:
    """Give every sidecar pod among ``netns_names`` the CA's current roots, as Kubernetes updates the mounted
    ConfigMap discovery publishes: an agent that restarts after a root rotation must trust the CA's new
    serving certificate. The pods whose file changed, by netns."""
    try:
        roots = _roots_file(root).read_bytes()
    except OSError:
        return []  # no CA (yet), or a file being replaced: next time
    changed = []
    for netns in netns_names:
        target = pod_dir(netns) / "root-cert.pem"
        try:
            if target.read_bytes() == roots:
                continue
        except FileNotFoundError:
            continue  # no sidecar in that pod, or it is being provisioned
        write_atomically(target, roots, mode=0o444)
        changed.append(netns)
    return changed


def agent_flags(netns: str) -> list[str]:
    """The agent flags that point at the files :func:`provision` wrote for the pod."""
    directory = pod_dir(netns)
    return ["--ca-root-file", str(directory / "root-cert.pem"), "--token-file", str(directory / "token"),
            "--cert-dir", str(directory / "certs")]


def with_agent_flags(argv: list[str], flags: list[str]) -> list[str]:
    """``meshbox-agent sidecar ARGS`` with ``flags`` right after the subcommand (before any ``--``)."""
    if "sidecar" not in argv:
        return argv
    at = argv.index("sidecar") + 1
    return [*argv[:at], *flags, *argv[at:]]
