"""Which Kubernetes kinds carry a pod template, and where."""

from __future__ import annotations

# kind → API groups it is a workload in ("" is the core group) and the path to its pod template.
_WORKLOADS: dict[str, tuple[frozenset[str], tuple[str, ...]]] = {
    "Pod": (frozenset({""}), ()),
    "ReplicationController": (frozenset({""}), ("spec", "template")),
    "Deployment": (frozenset({"apps", "extensions"}), ("spec", "template")),
    "DaemonSet": (frozenset({"apps", "extensions"}), ("spec", "template")),
    "ReplicaSet": (frozenset({"apps", "extensions"}), ("spec", "template")),
    "StatefulSet": (frozenset({"apps"}), ("spec", "template")),
    "Job": (frozenset({"batch"}), ("spec", "template")),
    "CronJob": (frozenset({"batch"}), ("spec", "jobTemplate", "spec", "template")),
    # OpenShift: apps.openshift.io/v1, and plain v1 on OpenShift 3.x.
    "DeploymentConfig": (frozenset({"apps.openshift.io", ""}), ("spec", "template")),
}

WORKLOAD_KINDS = tuple(_WORKLOADS)


def api_group(api_version: str) -> str:
    """`apps/v1` → `apps`; `v1` → `` (core)."""
    return api_version.rpartition("/")[0]


def pod_template_path(kind: str, api_version: str) -> tuple[str, ...] | None:
    """Keys from the object to its pod template (``()`` for a Pod), or None if not a workload."""
    entry = _WORKLOADS.get(kind)
    if entry is None or api_group(api_version) not in entry[0]:
        return None
    return entry[1]
