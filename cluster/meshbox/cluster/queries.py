"""Reading the local cluster back: pod status, endpoints, exec, logs and waiting for readiness.

Readiness and restarts are what the kubelet last recorded (it probes every container once a
second), so `get pods`, `wait` and the Service endpoints always agree.
"""

from __future__ import annotations

import time
from pathlib import Path

from meshbox.api.kube.endpoints import endpoint_slice, endpoints_object, matches
from meshbox.cluster import host
from meshbox.cluster.cluster import ClusterError, LocalCluster
from meshbox.cluster.containers import environment, in_pod
from meshbox.cluster.images import Launch
from meshbox.cluster.model import ClusterState, Obj, PodRecord

# The discovery server polls its registry directory twice a second and debounces for 0.1s:
# `wait` lets a readiness change reach it before saying the pods are ready.
DISCOVERY_SETTLE = 1.0


def pod_status(rec: PodRecord) -> tuple[int, int, str]:
    """(ready containers, containers, STATUS) as `kubectl get pods` shows them."""
    containers = rec.spec["containers"]
    if rec.phase != "Running":
        return 0, len(containers), rec.phase
    states = [rec.containers.get(c["name"]) for c in containers]
    alive = [s is not None and s.exited_at is None and host.alive(s.ref) for s in states]
    ready = sum(1 for s, up in zip(states, alive, strict=True) if up and s is not None and s.ready)
    if all(alive):
        return ready, len(containers), "Running"
    waiting = [s for s, up in zip(states, alive, strict=True) if not up and s is not None and s.restarts]
    if waiting and rec.spec.get("restartPolicy", "Always") != "Never":
        return ready, len(containers), "CrashLoopBackOff"
    return ready, len(containers), "Error"


def find_pods(state: ClusterState, namespace: str | None, selector: dict[str, str]) -> list[PodRecord]:
    """Pods in a namespace (all when None) whose labels match a label query."""
    return [rec for rec in state.pods.values()
            if (namespace is None or rec.namespace == namespace) and matches(selector, rec.labels)]


def get_pod(state: ClusterState, namespace: str, name: str) -> PodRecord:
    """One pod's record; ClusterError naming it when absent."""
    rec = state.pods.get(f"{namespace}/{name}")
    if rec is None:
        raise ClusterError(f'pods "{name}" not found in namespace {namespace}')
    return rec


def container_of(rec: PodRecord, container: str | None) -> Obj:
    """The named container, or the first one when no name is given."""
    containers = rec.spec["containers"] + (rec.spec.get("initContainers") or [])
    if container is None:
        return containers[0]
    for c in containers:
        if c["name"] == container:
            return c
    raise ClusterError(f"container {container} is not valid for pod {rec.name}: "
                       f"choose one of {[c['name'] for c in containers]}")


def exec_command(rec: PodRecord, container: str | None, command: list[str]) -> tuple[list[str], dict[str, str]]:
    """argv and environment that run ``command`` in a pod's container, as that container's user."""
    if rec.phase != "Running" or not rec.pause:
        raise ClusterError(f"pod {rec.name} is not running ({rec.phase})")
    spec = container_of(rec, container)
    info = rec.containers.get(spec["name"])
    if info is None:
        raise ClusterError(f"container {spec['name']} is not running (init containers have exited)")
    security = spec.get("securityContext") or {}
    launch = Launch(command, info.uid, int(security.get("runAsGroup", info.uid)))
    return in_pod(rec, launch), environment(rec, spec, info.uid)


def log_path(cluster: LocalCluster, rec: PodRecord, container: str | None) -> Path:
    """A container's log file; a pod with several containers needs the name."""
    names = [c["name"] for c in rec.spec["containers"]] + [c["name"] for c in rec.spec.get("initContainers") or []]
    if container is None:
        if len(rec.spec["containers"]) > 1:
            raise ClusterError(f"a container name must be specified for pod {rec.name}, choose one of: {names}")
        container = names[0]
    if container not in names:
        raise ClusterError(f"container {container} is not valid for pod {rec.name}: choose one of {names}")
    return cluster.dir.pod_log_dir(rec.namespace, rec.name) / f"{container}.log"


def wait_ready(cluster: LocalCluster, namespace: str | None, selector: dict[str, str], timeout: float) -> list[str]:
    """Block until every selected pod is Ready (and discovery has had time to see it); ClusterError otherwise."""
    deadline = time.monotonic() + timeout
    cluster.ensure_kubelet()
    while True:
        state = cluster.dir.load()
        pods = find_pods(state, namespace, selector)
        if not pods:
            raise ClusterError("no pods match")
        report = {rec.name: (pod_status(rec), rec.ready) for rec in pods}
        never = {rec.name for rec in pods if rec.spec.get("restartPolicy", "Always") == "Never"}
        failed = [f"{n} ({s})" for n, ((_, _, s), _) in report.items()
                  if s in ("Init:Error", "Failed") or (s == "Error" and n in never)]
        if failed:
            raise ClusterError(f"pods failed: {', '.join(failed)}")
        settled = state.discovery is None or time.time() >= state.endpoints_at + DISCOVERY_SETTLE
        if all(ready for _, ready in report.values()) and settled:
            return [f"pod/{n} condition met" for n in report]
        if time.monotonic() > deadline:
            waiting = ", ".join(f"{n} {r}/{t} {s}" for n, ((r, t, s), ready) in report.items() if not ready)
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for pods to be ready: {waiting}")
        time.sleep(0.3)


def services(state: ClusterState, namespace: str | None) -> list[Obj]:
    """Service objects in a namespace (all when None)."""
    return [s.body for s in state.services.values() if namespace is None or s.namespace == namespace]


def endpoints(state: ClusterState, namespace: str | None, *, slices: bool = False) -> list[Obj]:
    """The v1 Endpoints (or EndpointSlice) object of every Service, from the pods as the kubelet last saw them."""
    pods = [rec.as_pod() for rec in state.pods.values() if rec.phase == "Running"]
    build = endpoint_slice if slices else endpoints_object
    return [build(s.as_service(), pods) for s in state.services.values()
            if namespace is None or s.namespace == namespace]
