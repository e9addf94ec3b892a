"""Whether and how to inject the Pod of one admission request, through the kube-inject function.

The webhook has no injection logic of its own: it calls ``meshbox.injector.inject.inject``
(the function behind ``meshctl kube-inject``) on the Pod and diffs the result into a JSON
Patch. Namespace opt-in (label ``meshbox-injection=enabled``) is the API server's job through
the MutatingWebhookConfiguration's namespaceSelector; here the mesh's own namespace and the
system namespaces are refused again, in case the registration was edited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshbox.api.kube.names import MESH_NAMESPACE
from meshbox.injector.inject import SYSTEM_NAMESPACES, WARNING, InjectionError, InjectSettings, inject
from meshbox.injector.webhook_patch import json_patch
from meshbox.injector.webhook_review import AdmissionRequest, Decision

DEFAULT_MESH_NAMESPACE = MESH_NAMESPACE


@dataclass(frozen=True)
class InjectionPolicy:
    """Decides admission requests with fixed injection settings."""

    settings: InjectSettings
    mesh_namespace: str = DEFAULT_MESH_NAMESPACE

    def decide(self, request: AdmissionRequest) -> Decision:
        """Allowed with a patch, allowed unchanged, or denied when the Pod cannot be injected."""
        if request.kind != "Pod":
            return Decision(warnings=[f"meshbox webhook injects Pods only, got {request.kind or 'no kind'}; "
                                      "check the MutatingWebhookConfiguration's rules"])
        if request.operation != "CREATE" or request.object is None:
            return Decision()
        if request.namespace == self.mesh_namespace or request.namespace in SYSTEM_NAMESPACES:
            return Decision()
        # The review's object normally carries apiVersion and kind; inject() needs them to
        # know it is a Pod, so fill them in on both sides of the diff when they are absent.
        pod: dict[str, Any] = dict(request.object)
        pod.setdefault("apiVersion", "v1")
        pod.setdefault("kind", "Pod")
        try:
            result = inject(pod, self.settings, namespace=request.namespace)
        except InjectionError as e:
            return Decision(allowed=False, message=f"meshbox sidecar injection refused this pod: {e}")
        warnings = [r.line() for r in result.reports if r.action == WARNING]
        if not result.changed:
            return Decision(warnings=warnings)
        return Decision(patch=json_patch(pod, result.obj), warnings=warnings)
