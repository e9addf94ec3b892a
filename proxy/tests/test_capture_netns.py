"""The proxy behind real iptables REDIRECT in a network namespace (the tutorial's `-p 15001 -u 1337`):
SO_ORIGINAL_DST, listener matching both directions, passthrough, REGISTRY_ONLY, and the loop guard.

pod  10.99.0.1  app on :8080, the proxy as UID 1337 on :15001 (both directions, single-port mode)
peer 10.99.0.2  "server pod": HTTP :8080, TCP echo :9000, an unknown service :7000 (TCP echo)
Service VIPs 10.96.0.10:80 (http) and 10.96.0.11:5432 (tcp) exist only in the proxy config.
"""

from __future__ import annotations

import select
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

SERVERS = str(Path(__file__).resolve().parent / "netns_servers.py")
POD_IP, PEER_IP = "10.99.0.1", "10.99.0.2"
POD_IP6, PEER_IP6 = "fd99::1", "fd99::2"
CONFIG = f"""
listeners:
- {{name: http-out, direction: OUTBOUND, address: 10.96.0.10, port: 80, protocol: HTTP, route_config: two}}
- {{name: tcp-out, direction: OUTBOUND, address: 10.96.0.11, port: 5432, protocol: TCP, cluster: db}}
- {{name: http-in, direction: INBOUND, address: {POD_IP}, port: 8080, protocol: HTTP, route_config: in}}
route_configs:
- name: two
  virtual_hosts:
  - {{name: two, domains: [service-two, 10.96.0.10], routes: [{{clusters: [{{cluster: out2, weight: 100}}]}}]}}
- name: in
  virtual_hosts:
  - {{name: in, domains: ["*"], routes: [{{clusters: [{{cluster: in8080, weight: 100}}]}}]}}
clusters:
- {{name: out2, service: service-two.default.svc.cluster.local}}
- {{name: db, service: db.default.svc.cluster.local}}
- {{name: in8080, service: service-one.default.svc.cluster.local}}
endpoints:
- {{cluster_name: out2, endpoints: [{{address: {PEER_IP}, port: 8080}}]}}
- {{cluster_name: db, endpoints: [{{address: {PEER_IP}, port: 9000}}]}}
- {{cluster_name: in8080, endpoints: [{{address: 127.0.0.1, port: 8080}}]}}
"""


def wait_line(proc: subprocess.Popen[bytes], text: bytes, timeout: float = 15) -> None:
    stream = proc.stderr if text != b"ready" else proc.stdout
    assert stream is not None
    while True:
        readable, _, _ = select.select([stream], [], [], timeout)
        if not readable:
            proc.kill()
            raise AssertionError(f"timed out waiting for {text!r}: {proc.communicate()}")
        line = stream.readline()
        assert line, f"process exited before printing {text!r}"
        if text in line:
            return


@pytest.fixture
def world(netns: Any, uid1337_python: str) -> Any:
    pod, peer = netns("pod"), netns("peer")
    netns.link(pod, f"{POD_IP}/24", peer, f"{PEER_IP}/24")
    pod.run("ip", "route", "add", "default", "via", PEER_IP)
    for ns, ip6 in ((pod, POD_IP6), (peer, PEER_IP6)):
        dev = ns.run("ip", "-o", "link", "show", "type", "veth").stdout.split(":")[1].strip().split("@")[0]
        ns.run("ip", "-6", "addr", "add", f"{ip6}/64", "dev", dev, "nodad")
    for tool, loopback in (("iptables", "127.0.0.1/32"), ("ip6tables", "::1/128")):
        for args in (["-A", "OUTPUT", "-p", "tcp", "-m", "owner", "--uid-owner", "1337", "-j", "RETURN"],
                     ["-A", "OUTPUT", "-p", "tcp", "-d", loopback, "-j", "RETURN"],
                     ["-A", "OUTPUT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"],
                     ["-A", "PREROUTING", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"]):
            pod.run(tool, "-t", "nat", *args)
    for ns, name, ports in ((peer, "server", ("8080", "9000", "7000")), (pod, "app", ("8080",))):
        proc = ns.popen(uid1337_python, SERVERS, name, *ports, stdout=subprocess.PIPE, bufsize=0)
        wait_line(proc, b"ready")
    workdir = Path(tempfile.mkdtemp(prefix="meshbox-proxy-"))
    workdir.chmod(0o755)
    (workdir / "config.yaml").write_text(CONFIG)
    (workdir / "mesh-registry-only.yaml").write_text("outbound_traffic_policy: REGISTRY_ONLY\n")
    for path in workdir.iterdir():
        path.chmod(0o644)

    class World:
        def __init__(self) -> None:
            self.pod, self.peer, self.dir = pod, peer, workdir
            self.proxy: subprocess.Popen[bytes] | None = None

        def start_proxy(self, *extra: str) -> Path:
            if self.proxy is not None:
                self.proxy.terminate()
                self.proxy.wait(timeout=10)
            log = workdir / f"access-{len(pod.procs)}.log"
            with log.open("wb") as out:
                self.proxy = pod.popen(uid1337_python, "-m", "meshbox.proxy", "--config",
                                       str(workdir / "config.yaml"), "--pod-ip", POD_IP, *extra, uid=1337,
                                       stdout=out, stderr=subprocess.PIPE, bufsize=0)
            wait_line(self.proxy, b"outbound capture listening")
            return log

        def curl(self, ns: Any, url: str, *args: str) -> subprocess.CompletedProcess[str]:
            return ns.run("curl", "-sS", "-m", "5", *args, url, check=False)

        def tcp(self, ns: Any, host: str, port: int, payload: str) -> subprocess.CompletedProcess[str]:
            script = ("import socket,sys\n"
                      f"s=socket.create_connection(({host!r},{port}),timeout=5)\n"
                      f"s.sendall({payload!r}.encode()); s.shutdown(socket.SHUT_WR)\n"
                      "out=b''\n"
                      "while (d:=s.recv(65536)): out+=d\n"
                      "print(out.decode())\n")
            return ns.run(uid1337_python, "-c", script, check=False)

    yield World()
    for path in workdir.iterdir():
        path.unlink()
    workdir.rmdir()


def last_line(log: Path, needle: str, timeout: float = 5) -> str:
    """The last access log line containing needle (the proxy writes a TCP line after both sides close,
    which can be just after the client has finished)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in log.read_text().splitlines() if needle in line]
        if lines:
            return lines[-1]
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)


def test_outbound_inbound_tcp_passthrough_and_loop_guard(world: Any) -> None:
    log = world.start_proxy()
    # Outbound HTTP to a Service VIP: routed to the server pod, the request id added on the way.
    out = world.curl(world.pod, "http://10.96.0.10/hello", "-H", "host: service-two", "-A", "curl/7.47.0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"server /hello from {POD_IP} rid=")
    rid = out.stdout.strip().rsplit("rid=", 1)[1]
    line = last_line(log, rid)
    assert f'"GET /hello HTTP/1.1" 200 - 0 {len(out.stdout)} ' in line
    assert line.endswith(f'"curl/7.47.0" "{rid}" "service-two" "{PEER_IP}:8080"')
    # Inbound HTTP from the peer to the pod's IP: forwarded to the app on 127.0.0.1:8080.
    inbound = world.curl(world.peer, f"http://{POD_IP}:8080/in", "-H", "x-request-id: fixed-id-1")
    assert inbound.stdout.startswith("app /in from 127.0.0.1 rid=fixed-id-1"), inbound.stderr
    assert last_line(log, "fixed-id-1").endswith(f'"fixed-id-1" "{POD_IP}:8080" "127.0.0.1:8080"')
    # L4 to a TCP Service VIP.
    tcp = world.tcp(world.pod, "10.96.0.11", 5432, "select 1")
    assert tcp.stdout.strip() == "SELECT 1", tcp.stderr
    assert last_line(log, f'"{PEER_IP}:9000"').startswith("[")
    # Unknown destination: passed through to where the app was going (ALLOW_ANY).
    assert world.tcp(world.pod, PEER_IP, 7000, "raw").stdout.strip() == "RAW"
    assert '"- - -" 0 - 3 3 ' in last_line(log, f'"{PEER_IP}:7000"')
    # The same over IPv6 (ip6tables REDIRECT, IP6T_SO_ORIGINAL_DST).
    assert world.tcp(world.pod, PEER_IP6, 7000, "six").stdout.strip() == "SIX"
    assert '"- - -" 0 - 3 3 ' in last_line(log, f'"[{PEER_IP6}]:7000"')
    # A connection aimed at the capture port itself is refused, not looped.
    looped = world.tcp(world.pod, POD_IP, 15001, "loop")
    assert looped.stdout.strip() == ""
    assert '"- - -" 0 NR ' in last_line(log, " NR ")


def test_registry_only_refuses_unknown_destinations(world: Any) -> None:
    log = world.start_proxy("--mesh-config", str(world.dir / "mesh-registry-only.yaml"))
    assert world.tcp(world.pod, PEER_IP, 7000, "raw").stdout.strip() == ""
    assert '"- - -" 0 NR ' in last_line(log, " NR ")
    assert world.curl(world.pod, "http://10.96.0.10/", "-H", "host: service-two").stdout.startswith("server /")


def test_split_inbound_port(world: Any) -> None:
    """`--inbound-port 15006` (init's `-z 15006`): inbound traffic arrives on its own capture port, outbound
    still on 15001, and both are served."""
    world.pod.run("iptables", "-t", "nat", "-R", "PREROUTING", "1", "-p", "tcp", "-j", "REDIRECT",
                  "--to-ports", "15006")
    log = world.start_proxy("--inbound-port", "15006")
    inbound = world.curl(world.peer, f"http://{POD_IP}:8080/split", "-H", "x-request-id: split-id")
    assert inbound.stdout.startswith("app /split from 127.0.0.1 rid=split-id"), inbound.stderr
    assert last_line(log, "split-id").endswith('"127.0.0.1:8080"')
    out = world.curl(world.pod, "http://10.96.0.10/", "-H", "host: service-two")
    assert out.stdout.startswith("server / from"), out.stderr
