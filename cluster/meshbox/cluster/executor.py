"""The local cluster's network side effects, in one place: what netplan plans, made real (needs root).

netplan.py and addressing.py decide (pure, tested without root); this module runs their
commands, writes the per-pod hosts files and removes what was made. Removing something that
is already gone is not an error, so a teardown after a crash can always finish.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable
from pathlib import Path

from meshbox.api.files import write_atomically
from meshbox.cluster import host
from meshbox.cluster.addressing import RESOLV_CONF, hosts_file, node_netns
from meshbox.cluster.netplan import ServicePort, node_commands, node_rules, pod_commands

NETNS_ETC = Path("/etc/netns")


class NetworkExecutor:
    """Makes and removes the node and pod namespaces of the cluster with one prefix."""

    def __init__(self, prefix: str) -> None:
        self.node = node_netns(prefix)

    def node_exists(self) -> bool:
        """Whether the node namespace is there (the cluster is up)."""
        return host.netns_exists(self.node)

    def make_node(self) -> None:
        """The node namespace: bridge, node address, forwarding."""
        host.run(["ip", "netns", "add", self.node])
        for argv in node_commands(self.node):
            host.run(argv)

    def make_pod_network(self, netns: str, veth: int, ip: str) -> None:
        """A pod's namespace, its veth on the bridge and its /etc/netns directory."""
        host.run(["ip", "netns", "add", netns])
        for argv in pod_commands(self.node, netns, veth, ip):
            host.run(argv)
        self.etc(netns).mkdir(parents=True, exist_ok=True)

    @staticmethod
    def etc(netns: str) -> Path:
        """The directory ``ip netns exec`` bind-mounts over /etc for a namespace."""
        return NETNS_ETC / netns

    def write_names(self, netns: str, pod_name: str, pod_ip: str, namespace: str,
                    services: Iterable[tuple[str, str, str]]) -> None:
        """A pod's hosts file (itself, discovery, every Service) and resolv.conf, each replaced atomically."""
        etc = self.etc(netns)
        if not etc.is_dir():
            return
        # Temp files beside the pod's directory, not in it: `ip netns exec` bind-mounts every entry it finds there.
        hosts = hosts_file(pod_name, pod_ip, services, namespace).encode()
        write_atomically(etc / "hosts", hosts, mode=0o644, temp_dir=NETNS_ETC)
        write_atomically(etc / "resolv.conf", RESOLV_CONF.encode(), mode=0o644, temp_dir=NETNS_ETC)

    def apply_service_rules(self, ports: Iterable[ServicePort]) -> None:
        """Replace the node's Service NAT with one iptables-restore (atomic per table)."""
        host.run(["ip", "netns", "exec", self.node, "iptables-restore"], input_text=node_rules(ports))

    def remove_netns(self, netns: str) -> None:
        """Stop whatever still runs inside a namespace, delete it and its /etc/netns directory."""
        host.kill_netns_processes(netns)
        host.run_quietly(["ip", "netns", "delete", netns])
        shutil.rmtree(self.etc(netns), ignore_errors=True)

    @staticmethod
    def remove_path(path: str) -> None:
        """Remove a directory tree the cluster made."""
        shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def remove_empty_dir(path: str) -> None:
        """Remove a directory the cluster made if nothing else lives in it now."""
        with contextlib.suppress(OSError):
            Path(path).rmdir()
