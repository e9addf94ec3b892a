"""deploy/ and `meshctl install`: manifests valid against Kubernetes' schemas, least privilege, TLS that verifies.

No Kubernetes API server runs here, so the manifests are checked offline against the
published OpenAPI schemas (kubernetes-validate, strict: unknown fields fail), and the
TLS material is checked with cryptography as the API server would use it.
"""

from __future__ import annotations

import base64
import datetime
import io
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID
from ruamel.yaml import YAML

from meshbox.api.kube.names import service_dns_names
from meshbox.api.loader import load_mesh_config, parse_route_rule
from meshbox.ctl.install import InstallOptions, install, render, render_yaml
from meshbox.discovery.cli import main as discovery_main
from meshbox.injector.certs import generate_tls_material
from meshbox.injector.webhook_cli import main as webhook_main

REPO = Path(__file__).resolve().parent.parent
CHECKED_IN = REPO / "deploy" / "manifests" / "meshbox.yaml"
KUBERNETES_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())


def load_all(text: str) -> list[dict[str, Any]]:
    return [d for d in YAML(typ="safe").load_all(io.StringIO(text)) if d is not None]


def rendered(**cli_args: str) -> list[dict[str, Any]]:
    args = ["--dry-run"] + [x for k, v in cli_args.items() for x in (f"--{k.replace('_', '-')}", v)]
    result = CliRunner().invoke(install, args)
    assert result.exit_code == 0, result.output
    return load_all(result.output)


def by_kind(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def test_checked_in_manifests_are_what_install_renders() -> None:
    expected = render_yaml(InstallOptions(mesh=load_mesh_config(None)), None)
    assert CHECKED_IN.read_text() == expected, (
        "deploy/manifests/meshbox.yaml is stale: regenerate with "
        "`.venv/bin/meshctl install --dry-run --without-tls > deploy/manifests/meshbox.yaml`"
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_kubernetes(version: str) -> None:
    objects = rendered() + load_all(CHECKED_IN.read_text()) + load_all((REPO / "deploy/kind/apps.yaml").read_text())
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
            "ConfigMap", "Secret", "Deployment", "Service", "MutatingWebhookConfiguration"} <= kinds
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_rejects_a_broken_object() -> None:
    deployment = by_kind(rendered(), "Deployment", "meshbox-webhook")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_rbac_is_exactly_what_discovery_needs() -> None:
    """Read-only on what it watches; for the mesh CA: TokenReviews, the bundle ConfigMap in every
    namespace, and its own root Secret in its own namespace (get by name, create)."""
    objects = rendered()
    roles = [o for o in objects if o["kind"] in ("Role", "ClusterRole")]
    assert [(r["kind"], r["metadata"]["name"]) for r in roles] == [("ClusterRole", "meshbox-discovery"),
                                                                   ("Role", "meshbox-discovery")]
    granted = {(g, r, v) for rule in roles[0]["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert granted == {(g, r, v) for g, r in [("", "services"), ("", "pods"),
                                               ("discovery.k8s.io", "endpointslices"),
                                               ("routing.meshbox.io", "routerules"),
                                               ("security.istio.io", "peerauthentications"),
                                               ("security.istio.io", "authorizationpolicies")]
                       for v in ("get", "list", "watch")} | {
        ("authentication.k8s.io", "tokenreviews", "create"), ("", "namespaces", "list"),
        ("", "configmaps", "get"), ("", "configmaps", "create"), ("", "configmaps", "update")}
    secret_rules = roles[1]["rules"]
    assert roles[1]["metadata"]["namespace"] == "meshbox-system"
    assert secret_rules == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["meshbox-ca"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]
    binding = by_kind(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "meshbox-discovery",
                                    "namespace": "meshbox-system"}]
    webhook_sa = by_kind(objects, "ServiceAccount", "meshbox-webhook")
    assert webhook_sa["automountServiceAccountToken"] is False


def test_control_plane_containers_run_locked_down() -> None:
    for name in ("meshbox-discovery", "meshbox-webhook"):
        pod = by_kind(rendered(), "Deployment", name)["spec"]["template"]["spec"]
        security = pod["containers"][0]["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}


def test_webhook_registration_follows_the_rules() -> None:
    objects = rendered()
    hook = by_kind(objects, "MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["failurePolicy"] == "Fail"
    assert hook["sideEffects"] == "None"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert 1 <= hook["timeoutSeconds"] <= 30
    assert hook["namespaceSelector"]["matchLabels"] == {"meshbox-injection": "enabled"}
    excluded = hook["namespaceSelector"]["matchExpressions"][0]
    assert excluded["operator"] == "NotIn" and {"meshbox-system", "kube-system"} <= set(excluded["values"])
    assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    service = hook["clientConfig"]["service"]
    svc = by_kind(objects, "Service", service["name"])
    assert svc["metadata"]["namespace"] == service["namespace"]
    assert [p["port"] for p in svc["spec"]["ports"]] == [service["port"]]


def test_ca_bundle_verifies_the_serving_certificate_in_the_secret() -> None:
    objects = rendered()
    hook = by_kind(objects, "MutatingWebhookConfiguration")["webhooks"][0]
    ca = x509.load_pem_x509_certificate(base64.b64decode(hook["clientConfig"]["caBundle"]))
    secret = by_kind(objects, "Secret", "meshbox-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert "meshbox-webhook.meshbox-system.svc" in names
    assert ExtendedKeyUsageOID.SERVER_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    key = load_pem_private_key(base64.b64decode(secret["data"]["tls.key"]), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    # A second install makes a different CA (fresh material each run).
    again = by_kind(rendered(), "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["caBundle"]
    assert again != hook["clientConfig"]["caBundle"]


def test_another_namespace_moves_everything_with_it() -> None:
    objects = rendered(namespace="mesh-ops")
    namespaced = [o for o in objects if "namespace" in o["metadata"]]
    assert namespaced and {o["metadata"]["namespace"] for o in namespaced} == {"mesh-ops"}
    hook = by_kind(objects, "MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["clientConfig"]["service"]["namespace"] == "mesh-ops"
    assert "mesh-ops" in hook["namespaceSelector"]["matchExpressions"][0]["values"]
    mesh = YAML(typ="safe").load(by_kind(objects, "ConfigMap")["data"]["mesh.yaml"])
    assert mesh["discoveryAddress"] == "meshbox-discovery.mesh-ops.svc:15010"
    secret = by_kind(objects, "Secret")
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName)
    assert names == service_dns_names("meshbox-webhook", "mesh-ops")


def test_hub_and_tag_name_the_images_and_reach_the_webhook(tmp_path: Path) -> None:
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text("hub: quay.example/mesh\ntag: v9\nexcludeOutboundCidrs: [169.254.169.254/32]\n")
    objects = rendered(mesh_config=str(mesh_file), tag="v10")
    images = {c["image"] for o in objects if o["kind"] == "Deployment"
              for c in o["spec"]["template"]["spec"]["containers"]}
    assert images == {"quay.example/mesh/control-plane:v10"}
    mesh = YAML(typ="safe").load(by_kind(objects, "ConfigMap")["data"]["mesh.yaml"])
    assert (mesh["hub"], mesh["tag"], mesh["excludeOutboundCidrs"]) == ("quay.example/mesh", "v10",
                                                                         ["169.254.169.254/32"])
    # What the ConfigMap holds is what the webhook will load.
    (tmp_path / "stored.yaml").write_text(by_kind(objects, "ConfigMap")["data"]["mesh.yaml"])
    assert load_mesh_config(tmp_path / "stored.yaml").tag == "v10"


def _flags(args: list[str]) -> list[str]:
    return [a for a in args if a.startswith("--")]


def test_container_args_are_flags_the_commands_know() -> None:
    objects = rendered()
    known = {
        "meshbox-discovery": {o for p in discovery_main.params for o in p.opts},
        "meshbox-webhook": {o for p in webhook_main.params for o in p.opts},
    }
    discovery = by_kind(objects, "Deployment", "meshbox-discovery")["spec"]["template"]["spec"]["containers"][0]
    webhook = by_kind(objects, "Deployment", "meshbox-webhook")["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in discovery  # the control-plane image's entrypoint is meshbox-discovery
    assert webhook["command"] == ["meshbox-webhook"]
    assert set(_flags(discovery["args"])) <= known["meshbox-discovery"]
    assert set(_flags(webhook["args"])) <= known["meshbox-webhook"]
    mounts = {m["mountPath"] for m in webhook["volumeMounts"]}
    for flag in ("--tls-cert-file", "--tls-key-file", "--mesh-config"):
        path = webhook["args"][webhook["args"].index(flag) + 1]
        assert str(Path(path).parent) in mounts, flag


def test_route_rule_crd_schema_accepts_what_the_loader_accepts() -> None:
    crd = by_kind(rendered(), "CustomResourceDefinition")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rule: dict[str, Any] = {
        "apiVersion": "routing.meshbox.io/v1alpha1", "kind": "RouteRule",
        "metadata": {"name": "reviews-v2", "namespace": "default"},
        "spec": {"destination": "service-two", "precedence": 2,
                 "match": {"pathPrefix": "/api", "headers": [{"name": "x-user", "exact": "jason"}]},
                 "route": [{"labels": {"version": "v1"}, "weight": 90}, {"labels": {"version": "v2"}, "weight": 10}],
                 "timeout": "2s", "retries": {"attempts": 3, "perTryTimeout": "0.5s"},
                 "fault": {"abort": {"percent": 10.0, "httpStatus": 503}}},
    }
    parse_route_rule(rule)
    jsonschema.validate(rule, schema)
    bad = {**rule, "spec": {**rule["spec"], "route": [{"weight": "ten"}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**rule, "spec": {"precedence": 1}}, schema)  # destination is required


@pytest.mark.parametrize(("args", "message"), [
    (["--namespace", "Mesh_System"], "not a valid namespace name"),
    (["--mesh-config", "/nonexistent/mesh.yaml"], "cannot read file"),
    (["--hub", "Bad Hub"], "--hub: not an image registry/repository prefix: 'Bad Hub'"),
    (["--tag", ":x"], "--tag: not an image tag: ':x'"),
])
def test_bad_input_is_a_clear_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(install, ["--dry-run", *args])
    assert result.exit_code != 0
    assert message in result.output


def test_a_bad_mesh_config_names_the_field(tmp_path: Path) -> None:
    mesh_file = tmp_path / "mesh.yaml"
    mesh_file.write_text("ports:\n  admn: 1\n")
    result = CliRunner().invoke(install, ["--dry-run", "--mesh-config", str(mesh_file)])
    assert result.exit_code != 0
    assert "ports.admn" in result.output


def test_apply_without_kubectl_says_so() -> None:
    result = CliRunner().invoke(install, ["--kubectl", "/nonexistent/kubectl"])
    assert result.exit_code != 0
    assert "not found" in result.output and "--dry-run" in result.output


def test_apply_reports_a_failing_kubectl() -> None:
    """`false` stands in for a kubectl whose apply fails (no cluster can run here)."""
    result = CliRunner().invoke(install, ["--kubectl", "false"])
    assert result.exit_code != 0
    assert "kubectl apply failed (exit 1)" in result.output


def test_meshctl_lists_install() -> None:
    out = subprocess.run([str(REPO / ".venv/bin/meshctl"), "install", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--dry-run" in out and "--without-tls" in out


def test_material_for_a_service_has_its_names() -> None:
    material = generate_tls_material(service_dns_names("a", "b"))
    cert = x509.load_pem_x509_certificate(material.cert_pem)
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["a", "a.b", "a.b.svc", "a.b.svc.cluster.local"]
    assert render(InstallOptions(mesh=load_mesh_config(None)), material)[0]["kind"] == "Namespace"


def test_the_kind_demos_kube_inject_step_gives_valid_manifests() -> None:
    """deploy/kind/demo.sh pipes `meshctl kube-inject -f apps.yaml --hub --tag` into kubectl apply."""
    result = subprocess.run(
        [str(REPO / ".venv/bin/meshctl"), "kube-inject", "-f", str(REPO / "deploy/kind/apps.yaml"),
         "--hub", "localhost/meshbox", "--tag", "dev"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    objects = load_all(result.stdout)
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSIONS[-1], strict=True)
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert len(deployments) == 2
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        images = {c["name"]: c["image"] for c in [*pod["initContainers"], *pod["containers"]]}
        # The images demo.sh builds and loads into kind, pulled only if not present.
        assert images["init"] == "localhost/meshbox/init:dev"
        assert images["proxy"] == "localhost/meshbox/proxy:dev"
        injected = [c for c in [*pod["initContainers"], *pod["containers"]] if c["name"] in ("init", "proxy")]
        assert [c.get("imagePullPolicy") for c in injected] == ["IfNotPresent", "IfNotPresent"]
