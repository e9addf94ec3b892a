"""Peer authentication and authorization on the local mesh (issue 13). Needs root.

The tutorial's two services, injected. A client outside the mesh is the node namespace itself
(no sidecar: it speaks plaintext straight to service-two's pod IP). PERMISSIVE (the default) lets
it in; a STRICT PeerAuthentication closes it while the mesh's own mutual TLS traffic goes on; then
an authorization matrix between the pods: allow by principal, deny by path, DENY wins.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Pki  # type: ignore[import-not-found]

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


# --- the mesh root rotated through a two-root bundle under load (docs/security.md, "Rotating the root") ---

TRUST_DOMAIN_SA = "spiffe://cluster.local/ns/default/sa/default"
LOAD_REQUESTS = 1500  # the load's bound in count (it stops earlier when the test says so)


def _load(stop: Path) -> str:
    """One status line per request from service-one's app to service-two through both sidecars (mutual TLS
    between them), until ``stop`` exists or LOAD_REQUESTS are done."""
    loop = (f"for i in \\$(seq 1 {LOAD_REQUESTS}); do [ -e {stop} ] && break; "
            "curl -s -m 5 -o /dev/null -w '%{http_code}\\n' service-two:80/load/\\$i; sleep 0.02; done")
    return f"{CLIENT}; meshctl local exec ${{CLIENT}} -c app -- bash -c \"{loop}\""


# A TLS client in the node namespace (outside the mesh) with a certificate of its own: the answer's status line,
# or the TLS error.
TLS_PROBE = """
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.load_verify_locations(sys.argv[2])
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
try:
    with socket.create_connection((sys.argv[1], 8080), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        tls.sendall(b"GET /probe HTTP/1.1\\r\\nhost: service-two\\r\\nconnection: close\\r\\n\\r\\n")
        # TLS 1.3: the server checks the client certificate after the client's side of the handshake is done,
        # so a refusal shows as an alert or a close on the first read.
        print(tls.recv(64).split(b"\\r\\n")[0].decode() or "refused: closed without an answer")
except (OSError, ssl.SSLError) as exc:
    print(f"refused: {exc}")
"""


def _pod_certs(mesh: Any) -> dict[str, Path]:
    """Each sidecar pod's certificate directory (the agent's ``current`` generation), by pod netns."""
    return {d.name: d / "certs" / "current" for d in Path("/run/meshbox-local").glob(f"{mesh.prefix}-default-*")}


def _issuers_and_bundles(mesh: Any, pki: Any) -> set[tuple[str, tuple[str, ...]]]:
    """(issuer CN of the workload certificate, CNs of the roots in its bundle) over every sidecar pod."""
    x509 = pki.x509
    seen = set()
    for current in _pod_certs(mesh).values():
        try:
            leaf = x509.load_pem_x509_certificates((current / "cert-chain.pem").read_bytes())[0]
            roots = x509.load_pem_x509_certificates((current / "root-cert.pem").read_bytes())
        except (OSError, ValueError):
            return set()  # between two generations: look again
        cn = pki.NameOID.COMMON_NAME
        seen.add((leaf.issuer.get_attributes_for_oid(cn)[0].value,
                  tuple(sorted(r.subject.get_attributes_for_oid(cn)[0].value for r in roots))))
    return seen


def _write(path: Path, data: bytes) -> None:
    """Replace a CA file as an operator's tooling would: a whole new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    os.replace(tmp, path)


def _tls_probe(mesh: Any, pki: Any, tmp: Path, trust: Any, issuer: Any, issuer_key: Any, name: str) -> str:
    ip = mesh.sh("meshctl local get pod -l app=service-two -o jsonpath='{.items[0].status.podIP}'").strip()
    cert, key = pki.leaf(issuer, issuer_key, uris=(TRUST_DOMAIN_SA,))
    files = [tmp / f"{name}-{part}.pem" for part in ("trust", "cert", "key")]
    for path, data in zip(files, (pki.pem(trust), pki.pem(cert), pki.key_pem(key)), strict=True):
        path.write_bytes(data)
    done = subprocess.run(["ip", "netns", "exec", f"{mesh.prefix}-node", sys.executable, "-c", TLS_PROBE, ip,
                           *map(str, files)], capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip() or done.stderr.strip()


def test_root_rotation_through_a_two_root_bundle_under_load(apps: Any, tmp_path: Path) -> None:
    """The three steps of docs/security.md on the running mesh while service-one calls service-two over
    mutual TLS: old+new roots trusted, then the new root signs, then the new root alone. No request fails;
    every sidecar ends with a certificate of the new root and a bundle of the new root only; a client
    certificate of the old root is refused by service-two's sidecar, one of the new root accepted."""
    pki = Pki()
    ca = apps.state / "security" / "ca"
    old = pki.x509.load_pem_x509_certificate((ca / "ca.crt").read_bytes())
    old_key = pki.serialization.load_pem_private_key((ca / "ca.key").read_bytes(), password=None)
    old_cn = old.subject.get_attributes_for_oid(pki.NameOID.COMMON_NAME)[0].value
    new, new_key = pki.root("cluster.local rotated root")
    new_cn = "cluster.local rotated root"
    assert _until(lambda: str(_issuers_and_bundles(apps, pki)), str({(old_cn, (old_cn,))})) == str(
        {(old_cn, (old_cn,))}) and len(_pod_certs(apps)) == 2

    stop = tmp_path / "stop-load"
    load = subprocess.Popen(["bash", "-c", _load(stop)], cwd=apps.state.parent, env=apps.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        steps = [  # (files to write, what every sidecar must have before the next step)
            ([("roots.pem", pki.pem(old) + pki.pem(new))], (old_cn, tuple(sorted((old_cn, new_cn))))),
            ([("ca.key", pki.key_pem(new_key)), ("ca.crt", pki.pem(new))], (new_cn, tuple(sorted((old_cn, new_cn))))),
            ([("roots.pem", pki.pem(new))], (new_cn, (new_cn,))),
        ]
        reached = []
        for files, want in steps:
            for name, data in files:
                _write(ca / name, data)
            reached.append(_until(lambda: str(_issuers_and_bundles(apps, pki)), str({want}), timeout=30))
            time.sleep(2)  # the proxies take new files for new connections at most once a second
        stop.touch()
        out, err = load.communicate(timeout=120)
    finally:
        stop.touch()
        if load.poll() is None:
            load.kill()
            load.communicate()
    statuses = out.split()
    assert reached == [str({want}) for _, want in steps], (reached, err)
    assert len(statuses) > 100 and set(statuses) == {"200"}, (statuses.count("200"), len(statuses), err)
    # New handshakes at service-two's sidecar: the new root only.
    assert _tls_probe(apps, pki, tmp_path, new, new, new_key, "new") == "HTTP/1.1 200 OK"
    refused = _tls_probe(apps, pki, tmp_path, new, old, old_key, "old")
    assert refused.startswith("refused"), refused
    server = "$(meshctl local get pod -l app=service-two -o jsonpath='{.items[0].metadata.name}')"
    assert "unable to get local issuer certificate" in apps.sh(f"meshctl local logs {server} proxy")
    _sidecar_restarts_under_the_new_root(apps, pki, new_cn)


def _sidecar_restarts_under_the_new_root(mesh: Any, pki: Any, new_cn: str) -> None:
    """service-one's sidecar stopped after the rotation (by its PID: the kubelet restarts it) comes back: its
    agent trusts the CA at first contact through the pod's root-cert.pem, which must now hold the new root
    (the CA serves with a certificate of the new root), gets a certificate of the new root and the pods talk
    mutual TLS again."""
    state = json.loads((mesh.state / "state.json").read_text())
    pod = next(p for p in state["pods"].values() if p["body"]["metadata"].get("labels", {}).get("app") == "service-one")
    certs = Path("/run/meshbox-local") / pod["netns"] / "certs"
    before = os.readlink(certs / "current")
    sidecar = next(c for name, c in pod["containers"].items() if name != "app")
    os.kill(sidecar["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 60
    while os.readlink(certs / "current") == before and time.monotonic() < deadline:
        time.sleep(0.3)
    assert os.readlink(certs / "current") != before, "the restarted sidecar got no new certificate"
    assert _until(lambda: apps_status(mesh), "200", timeout=30) == "200"
    leaf = pki.x509.load_pem_x509_certificates((certs / "current" / "cert-chain.pem").read_bytes())[0]
    assert leaf.issuer.get_attributes_for_oid(pki.NameOID.COMMON_NAME)[0].value == new_cn


def apps_status(mesh: Any) -> str:
    return mesh.sh(IN_MESH + "service-two:80/after-restart", check=False)
