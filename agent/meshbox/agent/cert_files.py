"""The workload's key, certificate chain and trust bundle on disk, for the proxy to read.

Layout of the certificate directory (``--cert-dir``, default /var/run/meshbox/certs):

    <dir>/current -> .gen-<n>          a symlink, swapped atomically (rename) on every update
    <dir>/.gen-<n>/key.pem             PKCS#8 PEM private key (ECDSA P-256), mode 0600
    <dir>/.gen-<n>/cert-chain.pem      PEM: the workload certificate, then any intermediates
    <dir>/.gen-<n>/root-cert.pem       PEM: every root of the trust bundle

A reader resolves ``current`` once and reads the three files from that generation, so it never
pairs a key with another key's certificate (the same scheme as Kubernetes' atomic volume writer).
The previous generation is kept until the next update, so a read that started just before a
swap still completes.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

KEY_FILE = "key.pem"
CHAIN_FILE = "cert-chain.pem"
ROOTS_FILE = "root-cert.pem"
CURRENT = "current"
GEN_PREFIX = ".gen-"


@dataclass(frozen=True)
class WorkloadCredentials:
    key_pem: bytes
    chain_pem: bytes
    roots_pem: bytes


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _generations(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for entry in directory.iterdir():
        if entry.name.startswith(GEN_PREFIX) and entry.name[len(GEN_PREFIX):].isdigit():
            found.append((int(entry.name[len(GEN_PREFIX):]), entry))
    return sorted(found)


def write_credentials(directory: Path, credentials: WorkloadCredentials) -> Path:
    """Write a new generation and point ``current`` at it in one rename; returns the generation's path."""
    directory.mkdir(parents=True, exist_ok=True)
    generations = _generations(directory)
    number = generations[-1][0] + 1 if generations else 1
    target = directory / f"{GEN_PREFIX}{number}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(mode=0o700)
    try:
        _write(target / KEY_FILE, credentials.key_pem, 0o600)
        _write(target / CHAIN_FILE, credentials.chain_pem, 0o644)
        _write(target / ROOTS_FILE, credentials.roots_pem, 0o644)
        target.chmod(0o755)
        link = directory / f".{CURRENT}.tmp"
        link.unlink(missing_ok=True)
        os.symlink(target.name, link)
        os.replace(link, directory / CURRENT)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for _, old in generations[:-1]:  # keep the one just replaced for readers mid-read
        shutil.rmtree(old, ignore_errors=True)
    return target


def read_credentials(directory: Path) -> WorkloadCredentials:
    """The current generation's files (as the proxy reads them)."""
    generation = directory / os.readlink(directory / CURRENT)
    return WorkloadCredentials((generation / KEY_FILE).read_bytes(), (generation / CHAIN_FILE).read_bytes(),
                               (generation / ROOTS_FILE).read_bytes())
