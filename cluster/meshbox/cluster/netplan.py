"""The commands and rule sets that build the local cluster's network (pure: argv lists and text).

Everything is made inside namespaces the cluster owns: the bridge and every pod's host-side veth
live in the node namespace, so nothing is added to the host's own network stack.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshbox.cluster.addressing import BRIDGE, NODE_IP, POD_CIDR, SERVICE_CIDR, host_veth

Argv = list[str]


def node_commands(node: str) -> list[Argv]:
    """After ``ip netns add <node>``: loopback, the bridge with the node address, routing between pods."""
    return [
        ["ip", "-n", node, "link", "set", "lo", "up"],
        ["ip", "-n", node, "link", "add", BRIDGE, "type", "bridge"],
        ["ip", "-n", node, "addr", "add", f"{NODE_IP}/{POD_CIDR.prefixlen}", "dev", BRIDGE],
        ["ip", "-n", node, "link", "set", BRIDGE, "up"],
        ["ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        # DNAT'ed Service traffic goes back out of the bridge it came in on: no redirects to pods.
        ["ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.conf.all.send_redirects=0"],
        ["ip", "netns", "exec", node, "sysctl", "-qw", f"net.ipv4.conf.{BRIDGE}.send_redirects=0"],
    ]


def pod_commands(node: str, pod_ns: str, index: int, pod_ip: str) -> list[Argv]:
    """After ``ip netns add <pod_ns>``: a veth to the bridge, eth0 with the pod IP, default route via the node."""
    veth = host_veth(index)
    return [
        ["ip", "-n", pod_ns, "link", "set", "lo", "up"],
        ["ip", "-n", node, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", pod_ns],
        ["ip", "-n", node, "link", "set", veth, "master", BRIDGE],
        # A pod reaching its own Service comes back out of the bridge port it went in by (kubelet does the same).
        ["ip", "-n", node, "link", "set", veth, "type", "bridge_slave", "hairpin", "on"],
        ["ip", "-n", node, "link", "set", veth, "up"],
        ["ip", "-n", pod_ns, "addr", "add", f"{pod_ip}/{POD_CIDR.prefixlen}", "dev", "eth0"],
        ["ip", "-n", pod_ns, "link", "set", "eth0", "up"],
        ["ip", "-n", pod_ns, "route", "add", "default", "via", str(NODE_IP)],
    ]


@dataclass(frozen=True)
class ServicePort:
    """One Service port as kube-proxy sees it."""

    label: str  # namespace/name:port-name, for rule comments
    chain: str
    cluster_ip: str
    port: int
    backends: tuple[tuple[str, int], ...]


def _comment(text: str) -> str:
    return f'-m comment --comment "meshbox local: {text}"'


def node_rules(ports: Iterable[ServicePort]) -> str:
    """iptables-restore input for the node namespace: kube-proxy-like DNAT of ClusterIPs.

    Traffic DNAT'ed to a pod is masqueraded, since the pod's reply would otherwise go straight back
    over the bridge and miss the connection tracking that undoes the DNAT. ClusterIP ports without
    endpoints are refused with a TCP reset, as kube-proxy does.
    """
    ports = list(ports)
    nat = [
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":INPUT ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]",
        ":MBX-SERVICES - [0:0]",
        *(f":{p.chain} - [0:0]" for p in ports),
        f"-A PREROUTING {_comment('Service ClusterIPs')} -j MBX-SERVICES",
        f"-A OUTPUT {_comment('Service ClusterIPs')} -j MBX-SERVICES",
        f"-A POSTROUTING -m conntrack --ctstate DNAT {_comment('masquerade Service traffic')} -j MASQUERADE",
    ]
    for p in ports:
        nat.append(f"-A MBX-SERVICES -d {p.cluster_ip}/32 -p tcp --dport {p.port} {_comment(p.label)} -j {p.chain}")
        for i, (ip, target) in enumerate(p.backends):
            left = len(p.backends) - i
            pick = f"-m statistic --mode random --probability {1 / left:.5f} " if left > 1 else ""
            nat.append(f"-A {p.chain} -p tcp {pick}{_comment(p.label)} -j DNAT --to-destination {ip}:{target}")
    nat.append("COMMIT")
    filt = [
        "*filter",
        ":INPUT ACCEPT [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        f"-A FORWARD -d {SERVICE_CIDR} -p tcp {_comment('ClusterIP without endpoints')} "
        "-j REJECT --reject-with tcp-reset",
        f"-A OUTPUT -d {SERVICE_CIDR} -p tcp {_comment('ClusterIP without endpoints')} "
        "-j REJECT --reject-with tcp-reset",
        "COMMIT",
    ]
    return "\n".join(nat + filt) + "\n"
