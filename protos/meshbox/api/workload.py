"""Which workload a pod belongs to: the one rule the proxy (its own metric labels) and discovery
(the labels of the endpoints it serves) both apply, so the two sides of a graph edge agree."""

from __future__ import annotations

import re
from collections.abc import Mapping

# A Deployment's pod is <deployment>-<replicaset hash>-<5 characters>.
_POD_OF_DEPLOYMENT = re.compile(r"^(?P<workload>.+)-[a-z0-9]{5,10}-[a-z0-9]{5}$")
# Istio's canonical-service order: the first of these pod labels names the app.
APP_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")


def workload_name(pod_name: str) -> str:
    """The Deployment a pod name belongs to, else the pod itself ("unknown" when empty)."""
    m = _POD_OF_DEPLOYMENT.match(pod_name)
    return m.group("workload") if m else (pod_name or "unknown")


def app_name(labels: Mapping[str, str], workload: str) -> str:
    """The app of a pod: its first app label (APP_LABELS), else its workload name."""
    for key in APP_LABELS:
        if labels.get(key):
            return labels[key]
    return workload
