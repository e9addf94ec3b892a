"""The injected tutorial, with its apiVersions modernised (apps/v1), is valid Kubernetes.

No API server runs here (no kind, no Docker), so the check stops at the published OpenAPI
schemas: kubernetes-validate, offline, strict (unknown fields are errors).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from ruamel.yaml import YAML

from meshbox.injector.inject import InjectSettings
from meshbox.injector.manifest import inject_manifest

APPS = Path(__file__).parent / "golden" / "tutorial" / "apps.yaml"
K8S_VERSION = "1.30.0"


def modernised(text: str) -> str:
    """extensions/v1beta1 Deployments → apps/v1, which also requires a selector."""
    for name in ("service-one", "service-two"):
        text = text.replace(
            f"apiVersion: extensions/v1beta1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n",
            f"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n"
            f"  selector:\n    matchLabels:\n      app: {name}\n",
        )
    assert "extensions/v1beta1" not in text
    return text


def injected_docs() -> list[Any]:
    result = inject_manifest(modernised(APPS.read_text()), InjectSettings(), source="apps.yaml")
    return [d for d in YAML(typ="safe").load_all(result.text) if d]


def test_injected_tutorial_validates_against_the_kubernetes_schemas() -> None:
    docs = injected_docs()
    assert [d["kind"] for d in docs] == ["Service", "Deployment", "Service", "Deployment"]
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_check_does_catch_a_broken_sidecar() -> None:
    deployment = copy.deepcopy(injected_docs()[1])
    deployment["spec"]["template"]["spec"]["containers"][1]["securityContext"]["runAsUser"] = "1337"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(injected_docs()[1])
    deployment["spec"]["template"]["spec"]["initContainers"][0]["capabilities"] = ["NET_ADMIN"]  # misplaced field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
