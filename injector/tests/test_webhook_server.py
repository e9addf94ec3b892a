"""The webhook over real TLS on loopback: AdmissionReviews for each workload shape, errors, cert reload.

The API server itself cannot run here; these tests send what it sends (admission.k8s.io/v1
AdmissionReviews of Pods as controllers create them) and apply the returned JSON Patch with
jsonpatch, as the API server would, then compare with what kube-inject's function produces.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import pytest

from meshbox.api.kube.names import service_dns_names
from meshbox.injector.certs import TlsMaterial, generate_tls_material, write_serving_pair
from meshbox.injector.inject import InjectSettings, inject
from meshbox.injector.webhook_policy import InjectionPolicy
from meshbox.injector.webhook_server import MAX_BODY_BYTES, CertificateReloader, WebhookServer

SERVICE_HOST = "meshbox-webhook.meshbox-system.svc"
SETTINGS = InjectSettings()


class Webhook:
    """A running WebhookServer on 127.0.0.1 and the files it serves from."""

    def __init__(self, tmp: Path, material: TlsMaterial) -> None:
        self.cert_file, self.key_file = tmp / "tls.crt", tmp / "tls.key"
        write_serving_pair(material, self.cert_file, self.key_file)
        self.material = material
        self.reloader = CertificateReloader(self.cert_file, self.key_file)
        self.server = WebhookServer(("127.0.0.1", 0), self.reloader, InjectionPolicy(SETTINGS).decide)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def connect(self, ca_pem: bytes | None = None, **context_args: Any) -> http.client.HTTPSConnection:
        """An HTTPS connection that verifies the server as SERVICE_HOST against ``ca_pem``."""
        return https_connection(self.server.port, ca_pem or self.material.ca_cert_pem, **context_args)

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                ) -> tuple[int, bytes]:
        conn = self.connect()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def review(self, review: dict[str, Any]) -> dict[str, Any]:
        status, body = self.request("POST", "/inject", json.dumps(review).encode(),
                                    {"Content-Type": "application/json"})
        assert status == 200, body
        out: dict[str, Any] = json.loads(body)
        return out

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def https_connection(port: int, ca_pem: bytes, *, maximum_version: ssl.TLSVersion | None = None,
                     ) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cadata=ca_pem.decode())
    if maximum_version is not None:
        # An old client on purpose: allow what OpenSSL would refuse by itself, so the server decides.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1
            context.maximum_version = maximum_version
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    conn = http.client.HTTPSConnection(SERVICE_HOST, port, context=context, timeout=10)
    # Reach 127.0.0.1 but verify the certificate as the API server does: for the Service's name.
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sock = context.wrap_socket(raw, server_hostname=SERVICE_HOST)
    return conn


@pytest.fixture
def webhook(tmp_path: Path) -> Iterator[Webhook]:
    hook = Webhook(tmp_path, generate_tls_material(service_dns_names("meshbox-webhook", "meshbox-system")))
    yield hook
    hook.stop()


def admission_review(pod: dict[str, Any], namespace: str = "default", uid: str = "3f1c-uid",
                     operation: str = "CREATE") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def apply_response(pod: dict[str, Any], review_out: dict[str, Any]) -> dict[str, Any]:
    response = review_out["response"]
    if "patch" not in response:
        return pod
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    patched: dict[str, Any] = jsonpatch.apply_patch(pod, ops)
    return patched


# --- workloads as users write them, and the Pods their controllers create ---------------------

def _template(app: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [{"name": "app", "image": "gcr.io/google_containers/echoserver:1.4",
                                 "ports": [{"containerPort": 8080}]}], **spec},
    }


WORKLOADS: dict[str, dict[str, Any]] = {
    "deployment": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "service-one"},
                   "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "service-one"}},
                            "template": _template("service-one")}},
    "statefulset": {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
                    "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                             "template": _template("db")}},
    "daemonset": {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
                  "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": _template("agent")}},
    "job": {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
            "spec": {"template": _template("once", restartPolicy="Never")}},
    "cronjob": {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
                "spec": {"schedule": "0 3 * * *",
                         "jobTemplate": {"spec": {"template": _template("nightly", restartPolicy="OnFailure")}}}},
    "user-init-containers": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "migrate"},
                             "spec": {"selector": {"matchLabels": {"app": "migrate"}},
                                      "template": _template("migrate", initContainers=[
                                          {"name": "schema", "image": "migrate:1", "args": ["up"]}])}},
    "annotated": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "noted"},
                  "spec": {"selector": {"matchLabels": {"app": "noted"}},
                           "template": {**_template("noted"),
                                        "metadata": {"labels": {"app": "noted"},
                                                     "annotations": {"prometheus.io/scrape": "true"}}}}},
}

OWNERS = {"deployment": "ReplicaSet", "statefulset": "StatefulSet", "daemonset": "DaemonSet", "job": "Job",
          "cronjob": "Job", "user-init-containers": "ReplicaSet", "annotated": "ReplicaSet"}


def template_of(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template: dict[str, Any] = spec["template"]
    return template


def pod_from(workload: dict[str, Any], shape: str) -> dict[str, Any]:
    """The Pod a controller creates from the workload's template, as the webhook receives it."""
    template = copy.deepcopy(template_of(workload))
    metadata = {
        "generateName": f"{workload['metadata']['name']}-7d9f8c-",
        "namespace": "default",
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": OWNERS[shape], "name": workload["metadata"]["name"],
                             "uid": "0b6a", "controller": True, "blockOwnerDeletion": True}],
        **template["metadata"],
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}


@pytest.mark.parametrize("shape", sorted(WORKLOADS))
def test_patch_gives_the_pod_kube_inject_gives_the_template(webhook: Webhook, shape: str) -> None:
    workload = WORKLOADS[shape]
    pod = pod_from(workload, shape)
    out = webhook.review(admission_review(pod))
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    assert out["response"]["uid"] == "3f1c-uid"
    assert out["response"]["allowed"] is True
    patched = apply_response(copy.deepcopy(pod), out)

    kube_injected = template_of(inject(copy.deepcopy(workload), SETTINGS).obj)
    assert patched["spec"] == kube_injected["spec"]
    assert patched["metadata"]["annotations"] == kube_injected["metadata"]["annotations"]
    # Nothing else about the pod changed.
    assert {k: v for k, v in patched["metadata"].items() if k != "annotations"} == \
        {k: v for k, v in pod["metadata"].items() if k != "annotations"}
    names = [c["name"] for c in patched["spec"]["containers"]]
    assert "proxy" in names and patched["spec"]["initContainers"][-1]["name"] == "init"


def test_a_bare_pod_with_a_name_and_no_kind_fields(webhook: Webhook) -> None:
    pod = {"metadata": {"name": "solo", "namespace": "default"},
           "spec": {"containers": [{"name": "app", "image": "nginx"}]}}
    out = webhook.review(admission_review(copy.deepcopy(pod)))
    patched = apply_response(copy.deepcopy(pod), out)
    expected = inject({"apiVersion": "v1", "kind": "Pod", **pod}, SETTINGS).obj
    assert patched == {k: v for k, v in expected.items() if k not in ("apiVersion", "kind")}
    # The patch creates the annotations map (missing here) with an add at its parent.
    ops = json.loads(base64.b64decode(out["response"]["patch"]))
    assert {"op": "add", "path": "/metadata/annotations"} in [{k: o[k] for k in ("op", "path")} for o in ops]


def test_annotation_keys_are_escaped_in_patch_paths(webhook: Webhook) -> None:
    pod = pod_from(WORKLOADS["annotated"], "annotated")
    out = webhook.review(admission_review(pod))
    paths = [o["path"] for o in json.loads(base64.b64decode(out["response"]["patch"]))]
    assert "/metadata/annotations/sidecar.meshbox.io~1status" in paths


@pytest.mark.parametrize(("why", "pod_changes", "namespace"), [
    ("opt-out annotation", {"metadata": {"annotations": {"sidecar.meshbox.io/inject": "false"}}}, "default"),
    ("host network", {"spec": {"hostNetwork": True}}, "default"),
    ("mesh namespace", {}, "meshbox-system"),
    ("kube-system", {}, "kube-system"),
])
def test_pods_not_to_inject_get_an_empty_allowed_response(
    webhook: Webhook, why: str, pod_changes: dict[str, Any], namespace: str
) -> None:
    pod = pod_from(WORKLOADS["deployment"], "deployment")
    for key, value in pod_changes.items():
        pod[key] = {**pod[key], **value}
    out = webhook.review(admission_review(pod, namespace=namespace))
    assert out["response"] == {"uid": "3f1c-uid", "allowed": True}, why


def test_an_already_injected_pod_is_left_alone(webhook: Webhook) -> None:
    injected = inject(copy.deepcopy(WORKLOADS["deployment"]), SETTINGS).obj
    pod = pod_from(injected, "deployment")
    out = webhook.review(admission_review(pod))
    assert out["response"] == {"uid": "3f1c-uid", "allowed": True}


def test_a_pod_with_another_mesh_is_denied_with_the_reason(webhook: Webhook) -> None:
    pod = pod_from(WORKLOADS["deployment"], "deployment")
    pod["spec"]["containers"].append({"name": "istio-proxy", "image": "istio/proxyv2"})
    response = webhook.review(admission_review(pod))["response"]
    assert response["allowed"] is False
    assert "istio" in response["status"]["message"].lower()


def test_updates_and_other_kinds_pass_unchanged(webhook: Webhook) -> None:
    pod = pod_from(WORKLOADS["deployment"], "deployment")
    assert webhook.review(admission_review(pod, operation="UPDATE"))["response"] == \
        {"uid": "3f1c-uid", "allowed": True}
    review = admission_review({"metadata": {"name": "s"}})
    review["request"]["kind"] = {"group": "", "version": "v1", "kind": "Service"}
    response = webhook.review(review)["response"]
    assert response["allowed"] is True and "patch" not in response
    assert "Pods only" in response["warnings"][0]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "reason"), [
    ("POST", "/inject", b"{oops", {"Content-Type": "application/json"}, 400, "body is not JSON"),
    ("POST", "/inject", json.dumps({"apiVersion": "v1", "kind": "AdmissionReview"}).encode(),
     {"Content-Type": "application/json"}, 400, "apiVersion must be"),
    ("POST", "/inject", json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                                    "request": {"uid": "x", "kind": {}, "operation": "CREATE"}}).encode(),
     {"Content-Type": "application/json"}, 400, "request.object is missing"),
    ("POST", "/inject", b"{}", {"Content-Type": "text/plain"}, 400, "Content-Type must be application/json"),
    ("GET", "/inject", b"", {}, 405, "takes POST"),
    ("POST", "/other", b"{}", {"Content-Type": "application/json"}, 404, "no such path"),
])
def test_bad_requests_get_a_status_and_a_reason(
    webhook: Webhook, method: str, path: str, body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    got_status, got_body = webhook.request(method, path, body, headers)
    assert got_status == status
    assert reason in got_body.decode()
    # And the server carries on.
    assert webhook.request("GET", "/ready") == (200, b"ready\n")


def test_one_connection_carries_many_reviews(webhook: Webhook) -> None:
    """The API server keeps connections alive; so must the webhook, errors included."""
    conn = webhook.connect()
    pod = pod_from(WORKLOADS["deployment"], "deployment")
    for uid, body in (("a", json.dumps(admission_review(pod, uid="a")).encode()), ("bad", b"{"),
                      ("b", json.dumps(admission_review(pod, uid="b")).encode())):
        conn.request("POST", "/inject", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = response.read()
        if uid == "bad":
            assert response.status == 400
        else:
            assert json.loads(payload)["response"]["uid"] == uid
    conn.close()


def test_an_oversized_body_is_refused_before_it_is_read(webhook: Webhook) -> None:
    conn = webhook.connect()
    conn.putrequest("POST", "/inject")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    conn.close()


def test_tls_below_1_2_is_refused_and_1_2_plus_is_used(webhook: Webhook) -> None:
    conn = webhook.connect()
    conn.request("GET", "/ready")
    assert conn.getresponse().status == 200
    assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
    conn.close()
    with pytest.raises(ssl.SSLError) as refused:
        webhook.connect(maximum_version=ssl.TLSVersion.TLSv1_1)
    # The server's alert, not the client giving up on its own.
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


def test_a_client_that_does_not_trust_the_ca_fails(webhook: Webhook) -> None:
    stranger = generate_tls_material([SERVICE_HOST])
    with pytest.raises(ssl.SSLCertVerificationError):
        webhook.connect(stranger.ca_cert_pem)


def test_certificate_is_reloaded_when_the_files_change(webhook: Webhook) -> None:
    old_ca = webhook.material.ca_cert_pem
    rotated = generate_tls_material(service_dns_names("meshbox-webhook", "meshbox-system"))
    write_serving_pair(rotated, webhook.cert_file, webhook.key_file)
    conn = webhook.connect(rotated.ca_cert_pem)
    conn.request("GET", "/ready")
    assert conn.getresponse().status == 200
    conn.close()
    assert webhook.reloader.reloads == 1
    with pytest.raises(ssl.SSLCertVerificationError):
        webhook.connect(old_ca)


def test_a_broken_certificate_file_keeps_the_old_one_serving(webhook: Webhook) -> None:
    webhook.cert_file.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    conn = webhook.connect()
    conn.request("GET", "/ready")
    assert conn.getresponse().status == 200
    conn.close()
    assert webhook.reloader.reloads == 0
    # Once a good pair arrives, it is picked up.
    fixed = generate_tls_material([SERVICE_HOST])
    write_serving_pair(fixed, webhook.cert_file, webhook.key_file)
    webhook.connect(fixed.ca_cert_pem).close()
    assert webhook.reloader.reloads == 1


def test_meshbox_webhook_cli_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    material = generate_tls_material([SERVICE_HOST])
    write_serving_pair(material, tmp_path / "tls.crt", tmp_path / "tls.key")
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("hub: registry.example/meshbox\ntag: t1\n")
    exe = Path(sys.executable).parent / "meshbox-webhook"
    proc = subprocess.Popen(
        [str(exe), "--tls-cert-file", str(tmp_path / "tls.crt"), "--tls-key-file", str(tmp_path / "tls.key"),
         "--address", "127.0.0.1", "--port", "0", "--mesh-config", str(mesh)],
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"https://127\.0\.0\.1:(\d+)/inject", line)
        assert match, line
        conn = https_connection(int(match.group(1)), material.ca_cert_pem)
        pod = pod_from(WORKLOADS["deployment"], "deployment")
        conn.request("POST", "/inject", json.dumps(admission_review(pod)).encode(),
                     {"Content-Type": "application/json"})
        patched = apply_response(pod, json.loads(conn.getresponse().read()))
        conn.close()
        images = {c["name"]: c["image"] for c in [*patched["spec"]["containers"], *patched["spec"]["initContainers"]]}
        assert images["proxy"] == "registry.example/meshbox/proxy:t1"
        assert images["init"] == "registry.example/meshbox/init:t1"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_meshbox_webhook_cli_rejects_a_key_that_does_not_match(tmp_path: Path) -> None:
    a, b = generate_tls_material([SERVICE_HOST]), generate_tls_material([SERVICE_HOST])
    (tmp_path / "tls.crt").write_bytes(a.cert_pem)
    (tmp_path / "tls.key").write_bytes(b.key_pem)
    exe = Path(sys.executable).parent / "meshbox-webhook"
    result = subprocess.run(
        [str(exe), "--tls-cert-file", str(tmp_path / "tls.crt"), "--tls-key-file", str(tmp_path / "tls.key"),
         "--port", "0", "--address", "127.0.0.1"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    assert "cannot load certificate" in result.stderr


def test_a_missing_content_length_is_refused(webhook: Webhook) -> None:
    conn = webhook.connect()
    conn.putrequest("POST", "/inject")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 411
    assert b"Content-Length" in response.read()
    conn.close()


def test_a_crash_while_deciding_denies_that_pod_and_keeps_serving(tmp_path: Path) -> None:
    def broken(request: Any) -> Any:
        raise RuntimeError("boom")

    hook = Webhook(tmp_path, generate_tls_material([SERVICE_HOST]))
    hook.server.decide = broken
    try:
        pod = pod_from(WORKLOADS["deployment"], "deployment")
        response = hook.review(admission_review(pod))["response"]
        assert response["allowed"] is False
        assert "internal error" in response["status"]["message"]
        assert hook.request("GET", "/ready") == (200, b"ready\n")
    finally:
        hook.stop()
