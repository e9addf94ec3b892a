"""meshctl analyze (the installed console script) on ServiceEntries without addresses: the HTTP form Istio
users write for an external host is clean, a TCP one is refused by field, and an excluded port is reported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MESHCTL = str(Path(sys.executable).parent / "meshctl")
HTTPBIN = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin}
spec:
  hosts: [httpbin.example.com]
  http:
  - timeout: 3s
    route: [{destination: {host: httpbin.example.com}}]
"""
DATABASE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db-ext}
spec:
  hosts: [db.example.com]
  ports: [{number: 5432, name: db, protocol: TCP}]
  resolution: DNS
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESHCTL, "analyze", *args], capture_output=True, text=True, timeout=60)


def test_http_entry_without_addresses_is_clean(tmp_path: Path) -> None:
    (tmp_path / "httpbin.yaml").write_text(HTTPBIN)
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("outbound_traffic_policy: REGISTRY_ONLY\ninclude_outbound_cidrs: [10.96.0.0/12]\n")
    result = run("-f", str(tmp_path / "httpbin.yaml"), "--mesh-config", str(mesh))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "no problems found\n")


def test_tcp_entry_without_addresses_is_refused(tmp_path: Path) -> None:
    (tmp_path / "db.yaml").write_text(DATABASE)
    result = run("-f", str(tmp_path / "db.yaml"))
    assert result.returncode == 1
    assert result.stdout.startswith("Error [MB0105] ServiceEntry default/db-ext spec.ports[0].protocol: TCP without "
                                    "spec.addresses: not implemented by meshbox yet")


def test_excluded_port_of_an_entry_without_addresses_is_reported(tmp_path: Path) -> None:
    (tmp_path / "httpbin.yaml").write_text(HTTPBIN)
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("exclude_outbound_ports: [80]\n")
    result = run("-f", str(tmp_path / "httpbin.yaml"), "--mesh-config", str(mesh))
    assert result.returncode == 0
    assert result.stdout == ("Warning [MB0113] VirtualService default/httpbin spec.hosts: the mesh config does not "
                             "capture *:80 (outbound include/exclude CIDRs and ports): these routes never apply "
                             f"there ({mesh})\n")
