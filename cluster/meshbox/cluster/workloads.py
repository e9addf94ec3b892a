"""Applying objects to the local cluster: create, update, roll out, scale and delete (needs root).

A changed Deployment template rolls out one pod at a time, each new pod ready before an old
one goes (Kubernetes' RollingUpdate with maxSurge 1, maxUnavailable 0), so the Services never
lose their endpoints; ``strategy.type: Recreate`` replaces them all at once. A changed replica
count alone scales the current pods up or down.
"""

from __future__ import annotations

import copy
import secrets
import time
from typing import Any

from meshbox.api.security_policy import KINDS as SECURITY_KINDS
from meshbox.cluster.addressing import AddressError, check_cluster_ip, next_cluster_ip
from meshbox.cluster.cluster import ClusterError, LocalCluster, now_text, registry_name, yaml_text
from meshbox.cluster.containers import container_ready
from meshbox.cluster.images import ImageError, launch_for
from meshbox.cluster.model import ClusterState, DeploymentRecord, Obj, ServiceRecord
from meshbox.cluster.objects import (
    ISTIO_TRANSLATORS,
    MAX_REPLICAS,
    ManifestError,
    Resource,
    container_env,
    pod_from_deployment,
    template_hash,
)

DEPLOYMENT_NAME_MAX = 46  # leaves room for -<10 hex>-<5 chars> within 63
ROLLOUT_READY_TIMEOUT = 60.0  # seconds new pods get to become ready before a rollout stops
ORDER = {"Service": 0, "ServiceEntry": 1, "DestinationRule": 1, "VirtualService": 1, "RouteRule": 1,
         "DestinationPolicy": 1, "PeerAuthentication": 1, "AuthorizationPolicy": 1, "Deployment": 2, "Pod": 3}


def _same(a: Obj, b: Obj, *ignored: str) -> bool:
    """Equal apart from fields the cluster sets (creation time, assigned ClusterIP) and ``ignored`` spec keys."""
    def strip(obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        obj.get("metadata", {}).pop("creationTimestamp", None)
        for key in ("clusterIP", "type", *ignored):
            obj.get("spec", {}).pop(key, None)
        return obj
    return strip(a) == strip(b)


def _check_workloads(state: ClusterState, resources: list[Resource]) -> None:
    """Everything that could fail about a workload, checked before anything is made."""
    for res in resources:
        if res.kind == "Deployment":
            spec = res.body["spec"]["template"]["spec"]
            pod = pod_from_deployment(res.body, f"{res.name}-check")
        elif res.kind == "Pod":
            spec, pod = res.body["spec"], res.body
            old = state.pods.get(res.key)
            if old is not None and not _same(old.body, res.body):
                raise ClusterError(f'The Pod "{res.name}" is invalid: spec: Forbidden: pod updates may not change '
                                   "fields other than those the local cluster sets: delete it first")
        else:
            continue
        for init, key in ((True, "initContainers"), (False, "containers")):
            for container in spec.get(key) or []:
                try:
                    launch_for(container, init=init)
                    container_env(container, pod, "10.244.0.2")
                except (ImageError, ManifestError) as exc:
                    raise ClusterError(f"{res.label()}: {exc}") from None


def _place_service(cluster: LocalCluster, state: ClusterState, res: Resource) -> str:
    body = copy.deepcopy(res.body)
    spec = body["spec"]
    old = state.services.get(res.key)
    used = [s.cluster_ip for k, s in state.services.items() if k != res.key]
    wanted = spec.get("clusterIP")
    try:
        if old is not None:
            if wanted and wanted != old.cluster_ip:
                raise ClusterError(f'The Service "{res.name}" is invalid: spec.clusterIP: Invalid value: '
                                   f'"{wanted}": field is immutable (is {old.cluster_ip})')
            spec["clusterIP"] = old.cluster_ip
        else:
            spec["clusterIP"] = check_cluster_ip(wanted, used) if wanted else next_cluster_ip(used)
    except AddressError as exc:
        raise ClusterError(f"service/{res.name}: {exc}") from None
    spec.setdefault("type", "ClusterIP")
    if old is not None and _same(old.body, body):
        return "unchanged"
    body["metadata"]["creationTimestamp"] = (old.created if old else None) or now_text()
    state.services[res.key] = ServiceRecord(body)
    cluster.dir.write_registry(registry_name("Service", res.namespace, res.name), yaml_text(body))
    return "configured" if old else "created"


def _apply_rule(cluster: LocalCluster, state: ClusterState, res: Resource) -> str:
    """A RouteRule or an Istio object: recorded and written to the registry for discovery."""
    table = _table(state, res.kind)
    old = table.get(res.key)
    if old is not None and _same(old, res.body):
        return "unchanged"
    body = copy.deepcopy(res.body)
    body["metadata"]["creationTimestamp"] = (old or body)["metadata"].get("creationTimestamp") or now_text()
    table[res.key] = body
    cluster.dir.write_registry(registry_name(res.kind, res.namespace, res.name), yaml_text(body))
    return "configured" if old else "created"


def owned_pods(state: ClusterState, namespace: str, deployment: str) -> list[str]:
    """Keys of the pods a Deployment owns, oldest first."""
    pods = [rec for rec in state.pods.values() if rec.namespace == namespace and rec.owner == deployment]
    return [rec.key for rec in sorted(pods, key=lambda r: (r.created or "", r.veth))]


def _start_replicas(cluster: LocalCluster, state: ClusterState, dep: DeploymentRecord, count: int,
                    errors: list[str]) -> list[str]:
    digest = template_hash(dep.body)
    keys = []
    for _ in range(count):
        pod_name = f"{dep.name[:DEPLOYMENT_NAME_MAX]}-{digest}-{secrets.token_hex(3)[:5]}"
        error = cluster.create_pod(state, pod_from_deployment(dep.body, pod_name))
        keys.append(f"{dep.namespace}/{pod_name}")
        if error:
            errors.append(error)
    return keys


def _wait_ready(cluster: LocalCluster, state: ClusterState, keys: list[str], timeout: float) -> list[str]:
    """Probe new pods (the kubelet waits for the lock this command holds); the names of those not ready."""
    deadline = time.monotonic() + timeout
    while True:
        waiting = []
        for key in keys:
            rec = state.pods.get(key)
            if rec is None or rec.phase != "Running":
                waiting.append(key)
                continue
            for container in rec.spec["containers"]:
                rec.containers[container["name"]].ready = container_ready(rec, container)
            rec.ready = all(c.ready for c in rec.containers.values())
            cluster.write_pod_registry(rec)
            if not rec.ready:
                waiting.append(key)
        if not waiting or time.monotonic() > deadline:
            state.endpoints_at = time.time()
            cluster.dir.save(state)
            return [key.split("/", 1)[1] for key in waiting]
        time.sleep(0.3)


def scale_to(cluster: LocalCluster, state: ClusterState, dep: DeploymentRecord, errors: list[str]) -> None:
    """Start or delete pods until the Deployment has ``spec.replicas`` (the newest go first)."""
    current = owned_pods(state, dep.namespace, dep.name)
    if len(current) < dep.replicas:
        _start_replicas(cluster, state, dep, dep.replicas - len(current), errors)
    elif len(current) > dep.replicas:
        cluster.delete_pods(state, current[dep.replicas:][::-1])


def _roll_out(cluster: LocalCluster, state: ClusterState, dep: DeploymentRecord, errors: list[str]) -> None:
    """Replace the pods of an older template, as the Deployment's strategy says.

    RollingUpdate (the default) goes one pod at a time with a surge of one and none unavailable:
    a new pod starts, once it is ready it joins the Services, then one old pod is deleted. A new
    pod that never gets ready stops the rollout and the old pods left keep serving. Recreate
    deletes every old pod first.
    """
    old = owned_pods(state, dep.namespace, dep.name)
    if (dep.body["spec"].get("strategy") or {}).get("type") == "Recreate":
        cluster.delete_pods(state, old)
        _start_replicas(cluster, state, dep, dep.replicas, errors)
        return
    for step in range(max(dep.replicas, len(old))):
        if step < dep.replicas:
            new = _start_replicas(cluster, state, dep, 1, errors)
            if errors:
                return
            if _wait_ready(cluster, state, new, ROLLOUT_READY_TIMEOUT):
                errors.append(f"deployment {dep.name}: rollout stopped: pod {new[0].split('/', 1)[1]} not ready "
                              f"after {ROLLOUT_READY_TIMEOUT:.0f}s; {len(old)} old pod(s) keep serving")
                return
            cluster.sync(state)  # the new pod joins the Services before an old one leaves
        if old:
            cluster.delete_pods(state, [old.pop(0)])  # out of the Services first, then stopped


def _apply_deployment(cluster: LocalCluster, state: ClusterState, res: Resource, errors: list[str]) -> str:
    old = state.deployments.get(res.key)
    if old is not None and _same(old.body, res.body):
        return "unchanged"
    body = copy.deepcopy(res.body)
    body["metadata"]["creationTimestamp"] = (old.created if old else None) or now_text()
    dep = state.deployments[res.key] = DeploymentRecord(body)
    cluster.dir.save(state)
    if old is None:
        _start_replicas(cluster, state, dep, dep.replicas, errors)
        return "created"
    if template_hash(old.body) != template_hash(body):
        _roll_out(cluster, state, dep, errors)
    else:
        scale_to(cluster, state, dep, errors)
    return "configured"


def _apply_pod(cluster: LocalCluster, state: ClusterState, res: Resource, errors: list[str]) -> str:
    if res.key in state.pods:
        return "unchanged"
    error = cluster.create_pod(state, copy.deepcopy(res.body))
    if error:
        errors.append(error)
    return "created"


def apply(cluster: LocalCluster, resources: list[Resource]) -> tuple[list[str], list[str]]:
    """Create or update objects; returns (kubectl-like lines, errors of pods that failed to start)."""
    with cluster.dir.locked():
        state = cluster.load_up()
        _check_workloads(state, resources)
        lines: list[str] = []
        errors: list[str] = []
        # Services first: every pod's hosts file and the discovery server know them before pods start.
        for res in sorted(resources, key=lambda r: ORDER[r.kind]):
            if res.kind == "Service":
                lines.append(f"service/{res.name} {_place_service(cluster, state, res)}")
                cluster.dir.save(state)
                cluster.sync(state)
            elif res.kind in ("RouteRule", "DestinationPolicy", *ISTIO_TRANSLATORS, *SECURITY_KINDS):
                group = str(res.body.get("apiVersion", "")).split("/")[0]
                lines.append(f"{res.kind.lower()}.{group}/{res.name} {_apply_rule(cluster, state, res)}")
            elif res.kind == "Deployment":
                lines.append(f"deployment.apps/{res.name} {_apply_deployment(cluster, state, res, errors)}")
            else:
                lines.append(f"pod/{res.name} {_apply_pod(cluster, state, res, errors)}")
            cluster.dir.save(state)
        cluster.sync(state)
    return lines, errors


def scale(cluster: LocalCluster, namespace: str, name: str, replicas: int) -> str:
    """``kubectl scale deployment NAME --replicas N``; the line kubectl prints."""
    if not 0 <= replicas <= MAX_REPLICAS:
        raise ClusterError(f'The Deployment "{name}" is invalid: spec.replicas: Invalid value: {replicas}: '
                           f"must be 0-{MAX_REPLICAS} (local cluster)")
    with cluster.dir.locked():
        state = cluster.load_up()
        dep = state.deployments.get(f"{namespace}/{name}")
        if dep is None:
            raise ClusterError(f'Error from server (NotFound): deployments.apps "{name}" not found')
        dep.body["spec"]["replicas"] = replicas
        cluster.dir.save(state)
        errors: list[str] = []
        scale_to(cluster, state, dep, errors)
        cluster.sync(state)
        cluster.dir.save(state)
    if errors:
        raise ClusterError("\n".join(errors))
    return f"deployment.apps/{name} scaled"


def _table(state: ClusterState, kind: str) -> dict[str, Any]:
    tables: dict[str, dict[str, Any]] = {"Service": state.services, "Deployment": state.deployments,
                                         "Pod": state.pods, "RouteRule": state.rules}
    return tables[kind] if kind in tables else state.istio.setdefault(kind, {})


def delete(cluster: LocalCluster, resources: list[Resource]) -> tuple[list[str], list[str]]:
    """Delete objects; returns (kubectl-like lines, not-found errors)."""
    with cluster.dir.locked():
        state = cluster.load_up()
        lines: list[str] = []
        errors: list[str] = []
        for res in resources:
            table = _table(state, res.kind)
            if res.key not in table:
                errors.append(f'{res.kind.lower()}s "{res.name}" not found')
                continue
            if res.kind == "Deployment":
                cluster.delete_pods(state, owned_pods(state, res.namespace, res.name))
            if res.kind == "Pod":
                cluster.delete_pods(state, [res.key])
            else:
                del table[res.key]
                cluster.dir.remove_registry(registry_name(res.kind, res.namespace, res.name))
            cluster.dir.save(state)
            lines.append(f'{res.kind.lower()} "{res.name}" deleted')
        cluster.sync(state)
    return lines, errors
