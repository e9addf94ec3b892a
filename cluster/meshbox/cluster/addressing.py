"""Address plan of the local cluster: pod IPs, Service ClusterIPs and names (pure functions).

Pods live in 10.244.0.0/16 behind a bridge whose address (10.244.0.1) is the node's; Services
get ClusterIPs from 10.96.0.0/12 as on a kubeadm cluster. Every name that lands in the kernel
(namespaces, links, chains) is derived here so that two clusters with different prefixes never
collide.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable

from meshbox.api.kube.names import DISCOVERY_SERVICE, MESH_NAMESPACE, is_dns_label, service_dns_names

POD_CIDR = ipaddress.IPv4Network("10.244.0.0/16")
SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/12")
NODE_IP = ipaddress.IPv4Address("10.244.0.1")
BRIDGE = "mbr0"
# The first few ClusterIPs are kept back, as kubeadm keeps 10.96.0.1 (API) and .10 (DNS).
FIRST_SERVICE_OFFSET = 16
# The discovery server runs in the node namespace; pods reach it by its Service names (the bare name
# only resolves inside meshbox-system). The first is the one MeshConfig's discovery address uses.
_short, _ns, _svc, _fqdn = service_dns_names(DISCOVERY_SERVICE, MESH_NAMESPACE)
DISCOVERY_NAMES = (_svc, _fqdn, _ns)
_PREFIX = re.compile(r"^[a-z][a-z0-9]{1,7}$")


class AddressError(ValueError):
    """No address left, or a name that cannot be used."""


def check_prefix(prefix: str) -> str:
    """A cluster prefix: 2-8 lower-case letters/digits starting with a letter."""
    if not _PREFIX.match(prefix):
        raise AddressError(f"prefix {prefix!r}: use 2-8 lower-case letters or digits, starting with a letter")
    return prefix


def check_dns_label(value: str, what: str) -> str:
    """A Kubernetes name usable as a hostname label (RFC 1123, at most 63 characters)."""
    if not is_dns_label(value):
        raise AddressError(f"{what} {value!r}: must be lower-case letters, digits and '-', at most 63 characters")
    return value


def node_netns(prefix: str) -> str:
    """Name of the node's network namespace."""
    return f"{prefix}-node"


def pod_netns(prefix: str, namespace: str, name: str) -> str:
    """Name of a pod's network namespace."""
    return f"{prefix}-{namespace}-{name}"


def host_veth(index: int) -> str:
    """Node-side name of pod ``index``'s veth (it lives in the node namespace only)."""
    return f"mbv{index}"


def service_chain(namespace: str, name: str, port_name: str) -> str:
    """iptables chain of one Service port (28-character limit, so a digest)."""
    digest = hashlib.sha256(f"{namespace}/{name}/{port_name}".encode()).hexdigest()[:12].upper()
    return f"MBX-SVC-{digest}"


def _first_free(network: ipaddress.IPv4Network, offset: int, used: Iterable[str]) -> str:
    taken = set(used)
    for i, host in enumerate(network.hosts()):
        if i >= offset and str(host) not in taken:
            return str(host)
    raise AddressError(f"no free address left in {network}")


def next_pod_ip(used: Iterable[str], after: str = "") -> str:
    """The first free pod address after ``after`` (wrapping; 10.244.0.1 is the node's).

    Addresses go round rather than lowest-first, so a deleted pod's address is not handed to the
    next pod at once, while the node's ARP cache and connection tracking still point at the old one.
    """
    taken = set(used)
    start = int(ipaddress.IPv4Address(after)) - int(POD_CIDR.network_address) if after else 1
    size = POD_CIDR.num_addresses - 2  # no network, no broadcast address
    for step in range(1, size + 1):
        offset = (start + step - 1) % size + 1
        if offset == 1:
            continue  # the node
        candidate = str(POD_CIDR.network_address + offset)
        if candidate not in taken:
            return candidate
    raise AddressError(f"no free address left in {POD_CIDR}")


def next_cluster_ip(used: Iterable[str]) -> str:
    """Lowest free ClusterIP."""
    return _first_free(SERVICE_CIDR, FIRST_SERVICE_OFFSET, used)


def check_cluster_ip(value: str, used: Iterable[str]) -> str:
    """A ClusterIP the user asked for: inside 10.96.0.0/12 and not taken."""
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        raise AddressError(f"spec.clusterIP {value!r} is not an IPv4 address") from None
    if address not in SERVICE_CIDR:
        raise AddressError(f"spec.clusterIP {value} is outside the service range {SERVICE_CIDR}")
    if value in set(used):
        raise AddressError(f"spec.clusterIP {value} is already used by another Service")
    return value


def hosts_file(pod_name: str, pod_ip: str, services: Iterable[tuple[str, str, str]], pod_namespace: str) -> str:
    """/etc/hosts of a pod: itself, the discovery server, and every Service (name, namespace, ClusterIP).

    Short names resolve only for Services in the pod's own namespace, as with cluster DNS search paths.
    """
    lines = [
        "# written by meshctl local: the cluster's DNS, as a hosts file",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{pod_ip}\t{pod_name}",
        f"{NODE_IP}\t{' '.join(DISCOVERY_NAMES)}",
    ]
    for name, namespace, cluster_ip in sorted(services):
        names = service_dns_names(name, namespace)
        if namespace != pod_namespace:
            names = names[1:]
        lines.append(f"{cluster_ip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


# No DNS server runs in the cluster: names come from the hosts file. Pointing resolvers at the pod's
# own loopback makes a DNS query fail at once instead of waiting for the host's nameserver, which a
# pod cannot reach.
RESOLV_CONF = ("# written by meshctl local: names come from /etc/hosts\n"
               "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
