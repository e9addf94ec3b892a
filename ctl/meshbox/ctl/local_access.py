"""meshctl's way into the local cluster: discovery's HTTP port in the node namespace, a proxy's admin API in
its pod's namespace (both listen where the host cannot route), and the cluster's Prometheus socket."""

from __future__ import annotations

import subprocess
from pathlib import Path

from meshbox.cluster.addressing import node_netns
from meshbox.cluster.cluster import DISCOVERY_HTTP_PORT, ClusterError, LocalCluster
from meshbox.cluster.model import ClusterState
from meshbox.cluster.queries import get_pod
from meshbox.cluster.state import StateError
from meshbox.ctl.mesh_access import ADMIN_PORT, AccessError


def _cluster_state(cluster: LocalCluster) -> ClusterState:
    try:
        if not cluster.dir.exists():
            raise AccessError(f"no local cluster in {cluster.dir.root} (meshctl local up; or say where the "
                              "mesh is with --discovery/--admin URL or --kubernetes)")
        return cluster.dir.load()
    except StateError as exc:
        raise AccessError(str(exc)) from None


def _get_in(netns: str, url: str) -> bytes:
    """GET ``url`` from inside ``netns`` (curl, as the cluster's own probes do)."""
    result = subprocess.run(["ip", "netns", "exec", netns, "curl", "-sS", "-f", "-m", "10", url],
                            capture_output=True, timeout=30, check=False)
    if result.returncode != 0:
        raise AccessError(f"GET {url} in network namespace {netns}: "
                          f"{result.stderr.decode(errors='replace').strip() or f'curl exit {result.returncode}'}")
    return result.stdout


class LocalClusterAccess:
    """Discovery and proxies of the local cluster in ``state_dir`` (needs root, as the cluster does)."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.cluster = LocalCluster(state_dir)

    def discovery_get(self, path: str) -> bytes:
        state = _cluster_state(self.cluster)
        return _get_in(node_netns(state.prefix), f"http://127.0.0.1:{DISCOVERY_HTTP_PORT}{path}")

    def admin_get(self, pod: str, namespace: str, path: str) -> bytes:
        state = _cluster_state(self.cluster)
        try:
            rec = get_pod(state, namespace, pod)
        except ClusterError as exc:
            raise AccessError(str(exc)) from None
        return _get_in(rec.netns, f"http://127.0.0.1:{ADMIN_PORT}{path}")


def local_prometheus(state_dir: Path | None = None) -> str:
    """The address of the local cluster's Prometheus, for ``meshctl dashboard``."""
    cluster = LocalCluster(state_dir)
    state = _cluster_state(cluster)
    scraper = cluster.scraper(state.prefix)
    if not scraper.socket.exists():
        raise AccessError(f"the local cluster in {cluster.dir.root} runs no Prometheus (started with "
                          "--without-prometheus?): give --prometheus URL")
    return scraper.address
