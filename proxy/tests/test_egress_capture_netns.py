"""The egress listener of ServiceEntries without addresses, behind real iptables REDIRECT in network
namespaces: the Host header picks the entry whatever address the app connected to, unknown hosts pass
through to the original destination (ALLOW_ANY) or get 502 NR (REGISTRY_ONLY), HTTP/2 prior knowledge
is tunnelled to where it was going, and inbound connections to the port are not taken by it.

pod  10.99.0.1  the proxy as UID 1337 on :15001; "entry" HTTP :8080 (the entry's endpoint, ``localhost``
                resolved by the proxy through /etc/hosts) and a TCP echo on :80
peer 10.99.0.2  "external" HTTP :80 (where unknown hosts are passed through to)
"""

from __future__ import annotations

import select
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SERVERS = str(Path(__file__).resolve().parent / "netns_servers.py")
POD_IP, PEER_IP = "10.99.0.1", "10.99.0.2"
ENTRY = "outbound|80||httpbin.example.com"
# What discovery builds for an address-less ServiceEntry on port 80 (discovery/tests/test_service_entry_egress.py).
CONFIG = f"""
listeners:
- {{name: 0.0.0.0_80, direction: OUTBOUND, address: 0.0.0.0, port: 80, protocol: HTTP, route_config: "80",
   pass_unknown_hosts: true}}
route_configs:
- name: "80"
  virtual_hosts:
  - {{name: "httpbin.example.com:80", domains: [httpbin.example.com, "httpbin.example.com:80"],
     routes: [{{clusters: [{{cluster: "{ENTRY}", weight: 100}}]}}]}}
clusters:
- {{name: "{ENTRY}", service: httpbin.example.com}}
endpoints:
- {{cluster_name: "{ENTRY}", endpoints: [{{address: localhost, port: 8080}}]}}
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


class World:
    def __init__(self, pod: Any, peer: Any, workdir: Path, python: str) -> None:
        self.pod, self.peer, self.dir, self.python = pod, peer, workdir, python

    def start_proxy(self, *extra: str) -> Path:
        log = self.dir / "access.log"
        with log.open("wb") as out:
            proxy = self.pod.popen(self.python, "-m", "meshbox.proxy", "--config", str(self.dir / "config.yaml"),
                                   "--pod-ip", POD_IP, *extra, uid=1337, stdout=out, stderr=subprocess.PIPE,
                                   bufsize=0)
        wait_line(proxy, b"outbound capture listening")
        return log

    def curl(self, ns: Any, *args: str) -> subprocess.CompletedProcess[str]:
        return ns.run("curl", "-sS", "-m", "5", *args, check=False)

    def raw(self, ns: Any, host: str, port: int, payload: bytes) -> bytes:
        """Send ``payload``, half-close, and return everything received until the server closes."""
        script = ("import socket,sys\n"
                  f"s=socket.create_connection(({host!r},{port}),timeout=5)\n"
                  f"s.sendall({payload!r}); s.shutdown(socket.SHUT_WR)\n"
                  "out=b''\n"
                  "while (d:=s.recv(65536)): out+=d\n"
                  "sys.stdout.write(out.decode('latin-1'))\n")
        return ns.run(self.python, "-c", script, check=False).stdout.encode("latin-1")


@pytest.fixture
def world(netns: Any, uid1337_python: str) -> Iterator[World]:
    pod, peer = netns("pod"), netns("peer")
    netns.link(pod, f"{POD_IP}/24", peer, f"{PEER_IP}/24")
    for args in (["-A", "OUTPUT", "-p", "tcp", "-m", "owner", "--uid-owner", "1337", "-j", "RETURN"],
                 ["-A", "OUTPUT", "-p", "tcp", "-d", "127.0.0.1/32", "-j", "RETURN"],
                 ["-A", "OUTPUT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"],
                 ["-A", "PREROUTING", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"]):
        pod.run("iptables", "-t", "nat", *args)
    for ns, name, ports in ((peer, "external", ("80",)), (pod, "entry", ("8080", "80"))):
        wait_line(ns.popen(uid1337_python, SERVERS, name, *ports, stdout=subprocess.PIPE, bufsize=0), b"ready")
    workdir = Path(tempfile.mkdtemp(prefix="meshbox-egress-"))
    workdir.chmod(0o755)
    (workdir / "config.yaml").write_text(CONFIG)
    (workdir / "mesh-registry-only.yaml").write_text("outbound_traffic_policy: REGISTRY_ONLY\n")
    for path in workdir.iterdir():
        path.chmod(0o644)
    yield World(pod, peer, workdir, uid1337_python)
    netns.cleanup()  # the proxy first: it writes in workdir
    for path in workdir.iterdir():
        path.unlink()
    workdir.rmdir()


def log_lines(log: Path, count: int, timeout: float = 5) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = log.read_text().splitlines()
        if len(lines) >= count:
            return lines
        assert time.monotonic() < deadline, lines
        time.sleep(0.02)


def test_entry_by_host_and_passthrough_of_unknown_hosts(world: World) -> None:
    log = world.start_proxy()
    # The app connects to the peer's address, but the Host names the entry: the entry's endpoint answers.
    entry = world.curl(world.pod, f"http://{PEER_IP}/get", "-H", "host: httpbin.example.com")
    assert entry.stdout.startswith("entry /get from 127.0.0.1 rid="), entry.stderr
    # Unknown hosts on that port go where the app was going, at L7 (request id added), twice on one connection.
    passed = world.curl(world.pod, f"http://{PEER_IP}/a", f"http://{PEER_IP}/b")
    assert passed.stdout.count(f"from {POD_IP} rid=") == 2, passed.stderr
    assert passed.stdout.startswith("external /a") and "external /b" in passed.stdout
    # HTTP/2 with prior knowledge has no Host to route by: tunnelled to the original destination, whose
    # HTTP/1.1 server refuses version 2.0 itself (the proxy never answers 505).
    h2 = world.raw(world.pod, PEER_IP, 80, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert b" 505 " in h2.split(b"\r\n", 1)[0], h2
    # Inbound connections to the pod's port 80 are not the egress listener's: passed on at L4 (no HTTP parsing).
    assert world.raw(world.peer, POD_IP, 80, b"not http").strip() == b"NOT HTTP"
    lines = log_lines(log, 5)
    assert '"GET /get HTTP/1.1" 200 - ' in lines[0] and lines[0].endswith('"httpbin.example.com" "localhost:8080"')
    assert all(f'"{PEER_IP}" "{PEER_IP}:80"' in line and " 200 - " in line for line in lines[1:3])


def test_registry_only_answers_unknown_hosts_502_nr(world: World) -> None:
    log = world.start_proxy("--mesh-config", str(world.dir / "mesh-registry-only.yaml"))
    refused = world.curl(world.pod, "-o", "/dev/null", "-w", "%{http_code}", f"http://{PEER_IP}/x")
    assert refused.stdout == "502", refused.stderr
    entry = world.curl(world.pod, f"http://{PEER_IP}/get", "-H", "host: httpbin.example.com:80")
    assert entry.stdout.startswith("entry /get from 127.0.0.1"), entry.stderr
    assert world.raw(world.pod, PEER_IP, 80, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == b""
    lines = log_lines(log, 3)
    assert '"GET /x HTTP/1.1" 502 NR ' in lines[0]
    assert any('"- - -" 0 NR ' in line for line in lines)
