"""The local cluster's kubelet: restarts containers that exit and keeps readiness and endpoints current.

Started by ``meshctl local up`` as ``python -m meshbox.cluster.kubelet --state-dir DIR`` (root, in
the host's namespaces) and stopped by ``down`` like every process in the ledger. Once a second
it probes every container without the cluster's lock, then, holding the lock, applies what it
found to the state as it is *then* (a pod deleted or replaced meanwhile is left alone):

- a container whose process is gone is restarted after a back-off that starts at 0 and doubles
  from 1s up to 30s (Kubernetes: 10s to 5 min; shorter here so a crash loop shows in seconds),
  reset once a container has run for a minute; ``restartPolicy: Never`` pods are not restarted.
  The process's exit code is not known (meshctl, its parent, has exited), so ``OnFailure``
  restarts on any exit, as ``Always`` does;
- a sidecar pod's ``root-cert.pem`` follows the mesh CA's roots (workload_identity.refresh_pod_roots);
- a pod is Ready when all its containers are; a change rewrites the pod's registry file (its
  Ready condition, which discovery reads) and the node's Service NAT (ready endpoints only).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from meshbox.cluster import host, workload_identity
from meshbox.cluster.cluster import LocalCluster
from meshbox.cluster.containers import container_ready, start_container
from meshbox.cluster.model import ClusterState, ContainerState, PodRecord
from meshbox.cluster.state import StateError

PERIOD = 1.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
BACKOFF_RESET_AFTER = 60.0  # seconds of running after which a container's back-off starts again at 0
log = logging.getLogger("meshbox.cluster.kubelet")

Observed = dict[tuple[str, str, int, int], tuple[bool, bool]]  # (pod, container, pid, start) → (alive, ready)


def observe(state: ClusterState) -> Observed:
    """Probe every running container (no lock held: probes take time)."""
    seen: Observed = {}
    for rec in state.pods.values():
        if rec.phase != "Running":
            continue
        for container in rec.spec["containers"]:
            info = rec.containers.get(container["name"])
            if info is None:
                continue
            alive = host.alive(info.ref)
            ready = alive and container_ready(rec, container)
            seen[(rec.key, container["name"], info.pid, info.start)] = (alive, ready)
    return seen


def _restart(cluster: LocalCluster, state: ClusterState, rec: PodRecord, container: dict[str, object],
             old: ContainerState, now: float) -> ContainerState:
    name = str(container["name"])
    ran = (old.exited_at or now) - old.started_at
    backoff = 0.0 if ran >= BACKOFF_RESET_AFTER else min(max(old.backoff * 2, BACKOFF_FIRST), BACKOFF_MAX)
    new = start_container(rec, container, cluster.dir.pod_log_dir(rec.namespace, rec.name) / f"{name}.log")
    new.restarts, new.backoff = old.restarts + 1, backoff
    cluster.forget(state, {"type": "process", **old.ref.to_json()})
    cluster.record_process(state, new.ref)
    log.info("pod %s: container %s restarted (restart %d, next back-off %.0fs)", rec.key, name, new.restarts,
             backoff)
    return new


def apply_observations(cluster: LocalCluster, state: ClusterState, seen: Observed, now: float) -> bool:
    """Restart what exited and record readiness; whether a pod's readiness changed. Runs under the lock."""
    readiness_changed = False
    for rec in state.pods.values():
        if rec.phase != "Running":
            continue
        for container in rec.spec["containers"]:
            info = rec.containers.get(container["name"])
            found = seen.get((rec.key, container["name"], info.pid, info.start)) if info else None
            if info is None or found is None:
                continue  # changed since it was probed: next round
            alive, ready = found
            if alive:
                info.ready = ready
                continue
            info.ready = False
            if info.exited_at is None:
                info.exited_at = now
                log.info("pod %s: container %s exited", rec.key, container["name"])
            if rec.spec.get("restartPolicy", "Always") != "Never" and now - info.exited_at >= info.backoff:
                try:
                    rec.containers[container["name"]] = _restart(cluster, state, rec, container, info, now)
                except host.HostError as exc:
                    log.warning("pod %s: container %s could not be restarted: %s", rec.key, container["name"], exc)
        ready = all(c.ready for c in rec.containers.values()) and bool(rec.containers)
        if ready != rec.ready:
            rec.ready = ready
            readiness_changed = True
            cluster.write_pod_registry(rec)
            log.info("pod %s: %s", rec.key, "ready" if ready else "not ready")
    return readiness_changed


def tick(cluster: LocalCluster) -> None:
    """One round: probe, then apply under the lock."""
    probed = cluster.dir.load()
    for netns in workload_identity.refresh_pod_roots(cluster.dir.root, (rec.netns for rec in probed.pods.values())):
        log.info("pod %s: the mesh CA's roots changed, root-cert.pem rewritten", netns)
    seen = observe(probed)
    with cluster.dir.locked():
        if not cluster.dir.exists():
            return
        state = cluster.dir.load()
        before = state.to_json()
        if before != probed.to_json():
            # Someone (apply, a rollout) changed the cluster while we probed: a readiness seen before
            # may be older than theirs. Only exits are certain (a process we saw gone stays gone).
            seen = {key: found for key, found in seen.items() if not found[0]}
        if apply_observations(cluster, state, seen, time.time()):
            cluster.sync(state)
            state.endpoints_at = time.time()
        if state.to_json() != before:  # an idle cluster's state file is left alone
            cluster.dir.save(state)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--state-dir DIR``; runs until killed or until the cluster is gone."""
    parser = argparse.ArgumentParser(prog="python -m meshbox.cluster.kubelet", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True, help="the cluster's state directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    cluster = LocalCluster(args.state_dir)
    # SIGTERM (from `down`) ends the process where it stands: the state file is only ever replaced
    # whole, and a container started just before is inside a pod namespace, which `down` empties.
    while cluster.dir.exists():
        try:
            tick(cluster)
        except (StateError, host.HostError, OSError) as exc:
            log.warning("round skipped: %s", exc)
        except Exception:
            log.exception("round failed")
        time.sleep(PERIOD)
    return 0


if __name__ == "__main__":
    sys.exit(main())
