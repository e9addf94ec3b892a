"""Peer authentication and authorization on the local mesh (issue 13). Needs root.

The tutorial's two services, injected. A client outside the mesh is the node namespace itself
(no sidecar: it speaks plaintext straight to service-two's pod IP). PERMISSIVE (the default) lets
it in; a STRICT PeerAuthentication closes it while the mesh's own mutual TLS traffic goes on; then
an authorization matrix between the pods: allow by principal, deny by path, DENY wins.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

CLIENT = "CLIENT=$(meshctl local get pod -l app=service-one -o jsonpath='{.items[0].metadata.name}')"
IN_MESH = f"{CLIENT}; meshctl local exec ${{CLIENT}} -c app -- curl -s -o /dev/null -w '%{{http_code}}' "
STRICT = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: STRICT}
"""
POLICIES = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-default-sa, namespace: default}
spec:
  selector: {matchLabels: {app: service-two}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/default"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector: {matchLabels: {app: service-two}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
"""


@pytest.fixture(scope="module")
def apps(mesh: Any) -> Any:
    mesh.sh("meshctl local apply -f <(meshctl kube-inject -f apps.yaml)")
    mesh.sh("meshctl local wait --timeout 60")
    return mesh


def _outside(mesh: Any) -> str:
    """curl from the node namespace (outside the mesh) to service-two's pod: the status, or the failure."""
    ip = mesh.sh("meshctl local get pod -l app=service-two -o jsonpath='{.items[0].status.podIP}'")
    done = subprocess.run(["ip", "netns", "exec", f"{mesh.prefix}-node", "curl", "-s", "-m", "5", "-o", "/dev/null",
                           "-w", "%{http_code}", f"http://{ip}:8080/"], capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else f"curl exit {done.returncode}"


def _until(check: Any, want: str, timeout: float = 15) -> str:
    """Poll ``check()`` until it returns ``want`` (config reaches the proxies asynchronously)."""
    deadline = time.monotonic() + timeout
    got = check()
    while got != want and time.monotonic() < deadline:
        time.sleep(0.3)
        got = check()
    return str(got)


def test_permissive_lets_a_plaintext_client_in_and_strict_refuses_it(apps: Any, tmp_path: Any) -> None:
    assert _outside(apps) == "200"
    (tmp_path / "strict.yaml").write_text(STRICT)
    out = apps.sh(f"meshctl local apply -f {tmp_path / 'strict.yaml'}")
    assert out.strip() == "peerauthentication.security.istio.io/default created"
    assert _until(lambda: _outside(apps), "curl exit 52").startswith("curl exit")  # closed: empty reply
    assert apps.sh(IN_MESH + "service-two:80/") == "200"  # mutual TLS between the pods goes on
    server = "$(meshctl local get pod -l app=service-two -o jsonpath='{.items[0].metadata.name}')"
    assert "refused plaintext connection" in apps.sh(f"meshctl local logs {server} proxy")
    apps.sh(f"meshctl local delete -f {tmp_path / 'strict.yaml'}")
    assert _until(lambda: _outside(apps), "200") == "200"


def test_authorization_matrix_between_the_pods(apps: Any, tmp_path: Any) -> None:
    (tmp_path / "policies.yaml").write_text(POLICIES)
    apps.sh(f"meshctl local apply -f {tmp_path / 'policies.yaml'}")
    # DENY wins over the ALLOW that matches the caller's principal.
    assert _until(lambda: apps.sh(IN_MESH + "service-two:80/admin"), "403") == "403"
    assert apps.sh(IN_MESH + "service-two:80/public") == "200"  # allowed by principal
    assert _outside(apps) == "403"  # plaintext: no principal, no ALLOW rule matches
    body = apps.sh(f"{CLIENT}; meshctl local exec ${{CLIENT}} -c app -- curl -s service-two:80/admin")
    assert body == "RBAC: access denied"
    apps.sh(f"meshctl local delete -f {tmp_path / 'policies.yaml'}")
    assert _until(lambda: apps.sh(IN_MESH + "service-two:80/admin"), "200") == "200"
