"""A pod's processes: the pause process, init containers, containers, and their readiness (needs root).

Each container is a process started with ``ip netns exec <netns> nsenter -t <pause> -u`` (the
pod's network and hostname), then ``setpriv`` to the container's user. Used by the cluster to
start pods and by the kubelet to restart a container that exited.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from meshbox.cluster import host, workload_identity
from meshbox.cluster.host import ProcessRef
from meshbox.cluster.images import Launch, is_agent, launch_for
from meshbox.cluster.model import ContainerState, PodRecord
from meshbox.cluster.objects import Obj, container_env

BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
INIT_TIMEOUT = 60.0


def in_pod(rec: PodRecord, launch: Launch) -> list[str]:
    """argv that runs ``launch`` inside a pod: its network and UTS namespaces, its hosts file, its user."""
    if rec.pause is None:
        raise host.HostError(f"pod {rec.name} has no pause process")
    argv = ["ip", "netns", "exec", rec.netns, "nsenter", "-t", str(rec.pause.pid), "-u", "--"]
    if launch.uid != 0:
        argv += ["setpriv", f"--reuid={launch.uid}", f"--regid={launch.gid}", "--clear-groups", "--"]
    return argv + launch.argv


def environment(rec: PodRecord, container: Obj, uid: int) -> dict[str, str]:
    """A container's environment: a base PATH, HOME, HOSTNAME and its own env (downward API included)."""
    env = dict(BASE_ENV, HOME="/root" if uid == 0 else "/", HOSTNAME=rec.name)
    env.update(container_env(container, rec.body, rec.ip))
    return env


def start_pause(netns: str, pod_name: str, log: Path) -> ProcessRef:
    """Start the process that holds the pod's UTS namespace and sets its hostname."""
    return host.spawn(["ip", "netns", "exec", netns, "unshare", "--uts", "--", "sh", "-c",
                       'hostname "$1" && exec sleep infinity', "pause", pod_name], log=log, env=BASE_ENV)


def run_init(rec: PodRecord, container: Obj, log: Path) -> int:
    """Run one init container to completion; its exit code (-1 when it ran past INIT_TIMEOUT)."""
    launch = launch_for(container, init=True)
    with open(log, "ab") as out:
        try:
            return subprocess.run(in_pod(rec, launch), stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, env=environment(rec, container, launch.uid),
                                  timeout=INIT_TIMEOUT, check=False).returncode
        except subprocess.TimeoutExpired:
            return -1


def start_container(rec: PodRecord, container: Obj, log: Path) -> ContainerState:
    """Start one container in its pod; its log is appended to (a restart keeps the earlier lines).

    The sidecar agent is pointed at the token and roots the cluster provisioned for the pod.
    """
    launch = launch_for(container, init=False)
    if is_agent(launch):
        launch = Launch(workload_identity.with_agent_flags(launch.argv, workload_identity.agent_flags(rec.netns)),
                        launch.uid, launch.gid)
    ref = host.spawn(in_pod(rec, launch), log=log, env=environment(rec, container, launch.uid))
    return ContainerState(ref.pid, ref.start, launch.uid, started_at=time.time())


def container_ready(rec: PodRecord, container: Obj) -> bool:
    """Running, and its readiness probe (or first port) answers inside the pod."""
    info = rec.containers.get(container["name"])
    if info is None or not host.alive(info.ref):
        return False
    probe = (container.get("readinessProbe") or {}).get("httpGet")
    if probe:
        port = probe["port"]
        # Kubernetes lets a probe name one of the container's ports instead of its number.
        named = {p.get("name"): p["containerPort"] for p in container.get("ports") or [] if p.get("name")}
        port = named.get(port, port)
        code = host.http_status(rec.netns, f"http://127.0.0.1:{port}{probe.get('path', '/')}")
        return 200 <= code < 400
    ports = container.get("ports") or []
    return host.tcp_open(rec.netns, int(ports[0]["containerPort"])) if ports else True
