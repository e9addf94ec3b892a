"""meshbox-init proven with real sockets: a pod namespace, a peer namespace, real iptables.

Every check dials a real TCP connection from a process with a chosen UID/GID and looks at
where it landed and what SO_ORIGINAL_DST says, never at the rule text alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

BACKENDS = ["legacy", "nft"]
# The addresses of the conftest's two-namespace world (test modules cannot import conftest).
POD_IP, PEER_IP, FAR_IP, PEER_IP6, APP_UID = "10.99.0.1", "10.99.0.2", "10.98.0.5", "fd99::2", 1000


@pytest.mark.parametrize("backend", BACKENDS)
def test_tutorial_flags_capture_outbound_inbound_and_spare_proxy_and_localhost(pod: Any, backend: str) -> None:
    """The tutorial's `-p 15001 -u 1337`: one port for both directions."""
    assert pod.lands(f"{PEER_IP}:80") == ("peer", 80, None)  # before: nothing captured
    out = pod.init_ok("-p", "15001", "-u", "1337", "--backend", backend)
    assert f"{backend} backend" in out
    # (1) app → outside the pod: on the outbound port, original destination intact
    assert pod.lands(f"{PEER_IP}:80") == ("pod", 15001, f"{PEER_IP}:80")
    assert pod.lands(f"{FAR_IP}:81") == ("pod", 15001, f"{FAR_IP}:81")
    # (2) the proxy's own UID goes straight out
    assert pod.lands(f"{PEER_IP}:80", uid=1337)[:2] == ("peer", 80)
    # (3) localhost stays local, for the app and for the proxy
    assert pod.lands("127.0.0.1:8080")[:2] == ("pod", 8080)
    assert pod.lands("127.0.0.1:8080", uid=1337)[:2] == ("pod", 8080)
    # (4) from another namespace to pod-IP:8080 → inbound side, which here is the same port
    assert pod.lands(f"{POD_IP}:8080", ns=pod.peer, uid=0) == ("pod", 15001, f"{POD_IP}:8080")


@pytest.mark.parametrize("backend", BACKENDS)
def test_split_inbound_port_and_service_vip_to_own_pod(pod: Any, backend: str) -> None:
    """-z 15006: inbound on its own port; the proxy reaching its own pod IP lands inbound too."""
    pod.init_ok("-p", "15001", "-z", "15006", "-u", "1337", "--backend", backend)
    assert pod.lands(f"{POD_IP}:8080", ns=pod.peer, uid=0) == ("pod", 15006, f"{POD_IP}:8080")
    assert pod.lands(f"{PEER_IP}:80") == ("pod", 15001, f"{PEER_IP}:80")
    # proxy → own pod IP over lo (a Service VIP resolved to this pod): inbound side
    assert pod.lands(f"{POD_IP}:8080", uid=1337) == ("pod", 15006, f"{POD_IP}:8080")
    # the proxy's inbound hop to the app on 127.0.0.1 is not captured again
    assert pod.lands("127.0.0.1:8080", uid=1337)[:2] == ("pod", 8080)
    # the app calling its own pod IP directly is local traffic
    assert pod.lands(f"{POD_IP}:8080")[:2] == ("pod", 8080)


def test_mesh_config_ports_and_sidecar_ports_never_captured_inbound(pod: Any, tmp_path: Path) -> None:
    """Ports come from the mesh config; the sidecar's own ports (here agent status 9090) stay direct."""
    assert pod.init_ok() and pod.lands(f"{POD_IP}:9090", ns=pod.peer, uid=0)[:2] == ("pod", 15001)
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("ports:\n  inbound_capture: 15006\n  agent_status: 9090\n")
    mesh.chmod(0o644)
    pod.init_ok("--mesh-config", str(mesh))
    assert pod.lands(f"{POD_IP}:9090", ns=pod.peer, uid=0)[:2] == ("pod", 9090)
    assert pod.lands(f"{POD_IP}:8080", ns=pod.peer, uid=0) == ("pod", 15006, f"{POD_IP}:8080")
    assert pod.lands(f"{PEER_IP}:80") == ("pod", 15001, f"{PEER_IP}:80")


INBOUND, OUTBOUND = 15006, 15001
FLAG_CASES = {
    # flag: (extra args, [(dial kwargs, target, where it must land: capture port or None = not captured)])
    "-b list": (["-b", "9090"], [({"ns": "peer"}, f"{POD_IP}:9090", INBOUND),
                                 ({"ns": "peer"}, f"{POD_IP}:8080", None)]),
    "-b empty": (["-b", ""], [({"ns": "peer"}, f"{POD_IP}:8080", None), ({}, f"{PEER_IP}:80", OUTBOUND),
                              ({"uid": 1337}, f"{POD_IP}:8080", None)]),
    "-d": (["-d", "8080"], [({"ns": "peer"}, f"{POD_IP}:8080", None),
                            ({"ns": "peer"}, f"{POD_IP}:9090", INBOUND)]),
    "-i list": (["-i", "10.98.0.0/16"], [({}, f"{FAR_IP}:80", OUTBOUND), ({}, f"{PEER_IP}:80", None)]),
    "-i empty": (["-i", ""], [({}, f"{FAR_IP}:80", None), ({}, f"{PEER_IP}:80", None),
                              ({"ns": "peer"}, f"{POD_IP}:8080", INBOUND)]),
    "-x": (["-x", f"{FAR_IP}/32"], [({}, f"{FAR_IP}:80", None), ({}, f"{PEER_IP}:80", OUTBOUND)]),
    "-o": (["-o", "80"], [({}, f"{PEER_IP}:80", None), ({}, f"{PEER_IP}:81", OUTBOUND)]),
    "-q with -i empty": (["-i", "", "-q", "81"], [({}, f"{PEER_IP}:81", OUTBOUND), ({}, f"{PEER_IP}:80", None)]),
    "-q beats -x": (["-x", "10.99.0.0/16", "-q", "81"], [({}, f"{PEER_IP}:81", OUTBOUND),
                                                         ({}, f"{PEER_IP}:80", None)]),
    "-u": (["-u", "1500"], [({"uid": 1500, "gid": 1500}, f"{PEER_IP}:80", None),
                            ({"uid": 1337, "gid": 1501}, f"{PEER_IP}:80", OUTBOUND)]),
    "-u list": (["-u", "1500,1501"], [({"uid": 1501, "gid": 1501}, f"{PEER_IP}:80", None),
                                      ({"uid": 1500, "gid": 1502}, f"{PEER_IP}:80", None)]),
    "-g": (["-g", "1600"], [({"uid": APP_UID, "gid": 1600}, f"{PEER_IP}:80", None),
                            ({"uid": APP_UID, "gid": 1337}, f"{PEER_IP}:80", OUTBOUND)]),
}


@pytest.mark.parametrize("case", FLAG_CASES)
def test_each_flag_changes_exactly_what_it_should(pod: Any, case: str) -> None:
    """(5) Each include/exclude flag, checked against a connection it should affect and one it should not."""
    args, checks = FLAG_CASES[case]
    pod.init_ok("-p", str(OUTBOUND), "-z", str(INBOUND), *args)
    for kwargs, target, capture_port in checks:
        kwargs = dict(kwargs)
        if kwargs.get("ns") == "peer":
            kwargs.update(ns=pod.peer, uid=0)
        server, port, orig = pod.lands(target, **kwargs)
        if capture_port is None:
            assert port == int(target.rsplit(":", 1)[1]), f"{case}: {target} {kwargs} was captured"
        else:
            assert (server, port, orig) == ("pod", capture_port, target), f"{case}: {target} {kwargs}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_ipv6_same_plan_through_ip6tables(pod: Any, backend: str) -> None:
    """The pod has a global IPv6 address, so --ipv6 auto programs ip6tables with the same plan."""
    out = pod.init_ok("--backend", backend)
    assert "IPv6:" in out
    assert pod.lands(f"[{PEER_IP6}]:80") == ("pod", 15001, f"[{PEER_IP6}]:80")
    assert pod.lands(f"[{PEER_IP6}]:80", uid=1337)[:2] == ("peer", 80)
    assert pod.lands("[::1]:8080")[:2] == ("pod", 8080)
    assert pod.lands("[fd99::1]:8080", ns=pod.peer, uid=0) == ("pod", 15001, "[fd99::1]:8080")


def test_ipv6_off_leaves_ip6tables_alone(pod: Any) -> None:
    before = pod.save("legacy", 6)
    out = pod.init_ok("--ipv6", "off")
    assert "IPv6" not in out
    assert pod.lands(f"[{PEER_IP6}]:80")[:2] == ("peer", 80)
    assert pod.save("legacy", 6) == before
