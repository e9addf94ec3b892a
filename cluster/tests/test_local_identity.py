"""Workload identity on the local cluster (root): discovery runs the mesh CA with the cluster's
token key, each sidecar pod gets its own token and a certificate for its service account, the
discovery stream runs over mutual TLS, and everything is removed with the pod / the cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from meshbox.api import local_tokens
from meshbox.cluster.workload_identity import POD_SECRETS, with_agent_flags

BIN = Path(sys.executable).parent
APP = """apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 80, targetPort: 8080, name: http}]
  selector: {app: web}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, labels: {app: web}}
spec:
  serviceAccountName: web
  containers:
  - name: app
    image: gcr.io/google_containers/echoserver:1.4
    ports: [{containerPort: 8080}]
"""


def meshctl(state: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run([str(BIN / "meshctl"), "local", "--state-dir", str(state), *args], input=stdin,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"meshctl local {args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def cluster(root: None, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    state, prefix = tmp_path / "state", "i" + uuid.uuid4().hex[:6]
    meshctl(state, "up", "--prefix", prefix)
    try:
        yield state, prefix
    finally:
        meshctl(state, "down")


def test_sidecar_pods_get_their_service_account_identity(cluster: tuple[Path, str], tmp_path: Path) -> None:
    state, prefix = cluster
    (tmp_path / "app.yaml").write_text(APP)
    injected = subprocess.run([str(BIN / "meshctl"), "kube-inject", "-f", str(tmp_path / "app.yaml")],
                              capture_output=True, text=True, check=True).stdout
    meshctl(state, "apply", "-f", "-", stdin=injected)
    meshctl(state, "wait", "--timeout", "60")
    pod_dir = POD_SECRETS / f"{prefix}-default-web-1"
    token = pod_dir / "token"
    assert (token.stat().st_uid, token.stat().st_mode & 0o777) == (1337, 0o400)
    key = bytes.fromhex((state / "security" / "token.key").read_text())
    claims = local_tokens.verify(key, token.read_text())
    assert (claims.namespace, claims.service_account, claims.pod) == ("default", "web", "web-1")
    chain = (pod_dir / "certs" / "current" / "cert-chain.pem").read_bytes()
    sans = x509.load_pem_x509_certificate(chain).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.value.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://cluster.local/ns/default/sa/web"]
    discovery_log = (state / "logs" / "node" / "discovery.log").read_text()
    assert "gRPC over mutual TLS" in discovery_log
    assert "issued a certificate for spiffe://cluster.local/ns/default/sa/web (pod web-1)" in discovery_log
    assert "connected to discovery" in meshctl(state, "logs", "web-1", "proxy")
    assert os.stat(state / "security" / "ca" / "ca.key").st_mode & 0o777 == 0o600
    meshctl(state, "delete", "-f", "-", stdin=injected)
    assert not pod_dir.exists()


def test_agent_flags_go_before_the_proxy_arguments() -> None:
    argv = ["/v/bin/meshbox-agent", "sidecar", "--discovery-address", "d:15010", "--", "--outbound-port", "0"]
    assert with_agent_flags(argv, ["--token-file", "t"]) == [
        "/v/bin/meshbox-agent", "sidecar", "--token-file", "t", "--discovery-address", "d:15010", "--",
        "--outbound-port", "0"]
    assert with_agent_flags(["/usr/bin/echo"], ["--x"]) == ["/usr/bin/echo"]
