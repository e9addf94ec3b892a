"""The 2017 tutorial "Installing Istio Sidecar", replayed on meshbox's local mesh, step by step.

Steps depend on each other and run in file order on one cluster (the module's ``mesh``).
Needs root; the kind variant of the same steps cannot run here (no Docker engine, no Kubernetes
API server) and is covered by deploy/kind/demo.sh.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import need  # type: ignore[import-not-found]
from meshbox.ctl.trace import parse_line

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
PODS = ("CLIENT=$(meshctl local get pod -l app=service-one -o jsonpath='{.items[0].metadata.name}')",
        "SERVER=$(meshctl local get pod -l app=service-two -o jsonpath='{.items[0].metadata.name}')")
found: dict[str, str] = {}
recorded: dict[str, list[tuple[int, int]]] = {}


def _pod_ip(mesh: Any, app: str) -> str:
    return mesh.sh(f"meshctl local get pod -l app={app} -o jsonpath='{{.items[0].status.podIP}}'")


def test_inject_and_apply(mesh: Any) -> None:
    injected = mesh.sh("meshctl kube-inject -f apps.yaml")
    assert injected.count("name: proxy") == 2 and injected.count("name: init") == 2
    out = mesh.sh("meshctl local apply -f <(meshctl kube-inject -f apps.yaml)")
    assert out.splitlines() == ["service/service-one created", "service/service-two created",
                                "deployment.apps/service-one created", "deployment.apps/service-two created"]
    mesh.sh("meshctl local wait --timeout 60")
    pods = mesh.sh("meshctl local get pods -o wide").splitlines()
    assert len(pods) == 3 and all(" 2/2 " in p and " Running " in p for p in pods[1:])


def test_request_from_client_carries_a_request_id(mesh: Any) -> None:
    out = mesh.sh(*PODS, "meshctl local exec -it ${CLIENT} -c app -- curl service-two:80 | grep x-request-id")
    match = re.fullmatch(rf"x-request-id=({UUID})\n", out)
    assert match, out
    found["id"] = match.group(1)


def test_client_proxy_logged_the_outbound_request(mesh: Any) -> None:
    rid = found["id"]
    line = mesh.sh(*PODS, f"meshctl local logs ${{CLIENT}} proxy | grep {rid}")
    parsed = parse_line(line, "client")
    assert parsed is not None, line
    hop = parsed[1]
    assert (parsed[0], hop.method, hop.path, hop.code, hop.authority) == (rid, "GET", "/", "200", "service-two")
    assert hop.upstream_host == f"{_pod_ip(mesh, 'service-two')}:8080"
    assert '"curl/' in line


def test_server_proxy_logged_the_inbound_request(mesh: Any) -> None:
    rid = found["id"]
    line = mesh.sh(*PODS, f"meshctl local logs ${{SERVER}} proxy | grep {rid}")
    parsed = parse_line(line, "server")
    assert parsed is not None, line
    assert (parsed[0], parsed[1].code, parsed[1].authority, parsed[1].upstream_host) == (
        rid, "200", "service-two", "127.0.0.1:8080")


def test_each_proxy_names_the_other_s_identity(mesh: Any) -> None:
    client_line = mesh.sh(*PODS, "meshctl local logs ${CLIENT} proxy | grep -m1 'mutual TLS'")
    server_line = mesh.sh(*PODS, "meshctl local logs ${SERVER} proxy | grep -m1 'mutual TLS'")
    two = _pod_ip(mesh, "service-two")
    assert client_line == (f"meshbox-proxy: mutual TLS: TLSv1.3 to spiffe://cluster.local/ns/default/sa/default "
                           f"({two}:8080)\n"), client_line
    assert re.fullmatch(rf"meshbox-proxy: mutual TLS: TLSv1\.3 from spiffe://cluster\.local/ns/default/sa/default "
                        rf"\({_pod_ip(mesh, 'service-one')}:\d+ to port 8080\)\n", server_line), server_line


def test_pod_to_pod_traffic_is_mutual_tls_on_the_wire(mesh: Any, tmp_path: Path) -> None:
    """Packets captured in the node namespace (the bridge and its pod ports: bridged frames between two
    pods do not show on the bridge device itself) while the tutorial's curl runs: TLS records, and neither the
    request line, nor the request id, nor the echoed body in clear; the curl still gets its answer."""
    need(shutil.which("tcpdump") is not None, "needs tcpdump (make bootstrap installs it)")
    capture = tmp_path / "bridge.pcap"
    tcpdump = subprocess.Popen(["ip", "netns", "exec", f"{mesh.prefix}-node", "tcpdump", "-i", "any", "-U", "-s0",
                                "-w", str(capture), "tcp port 8080"], stderr=subprocess.PIPE, text=True)
    try:
        assert tcpdump.stderr is not None
        while "listening on" not in (line := tcpdump.stderr.readline()):
            assert line, "tcpdump exited before it listened"
        time.sleep(0.5)  # "listening" comes a moment before the capture sees packets
        out = mesh.sh(*PODS, "meshctl local exec -it ${CLIENT} -c app -- curl -s service-two:80")
        time.sleep(1)  # the last packets reach the file (-U: written per packet)
    finally:
        tcpdump.terminate()
        tcpdump.wait(timeout=10)
    rid = re.search(rf"x-request-id=({UUID})", out)
    assert rid and "CLIENT VALUES:" in out, out
    wire = capture.read_bytes()
    assert b"\x17\x03\x03" in wire  # TLS application data records crossed the bridge
    for clear in (b"GET / HTTP/1.1", rid.group(1).encode(), b"CLIENT VALUES", b"x-request-id"):
        assert clear not in wire, clear


def _access_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if parse_line(line, "-")]


def test_localhost_traffic_is_not_intercepted(mesh: Any) -> None:
    before = _access_lines(mesh.sh(*PODS, "meshctl local logs ${SERVER} proxy"))
    assert before  # the tutorial's request is there
    out = mesh.sh(*PODS, "meshctl local exec -it ${SERVER} -c app -- curl localhost:8080 | grep x-request-id",
                  check=False)
    assert out == ""  # answered without a proxy: no request id was added
    body = mesh.sh(*PODS, "meshctl local exec ${SERVER} -c app -- curl -s localhost:8080")
    assert body.startswith("CLIENT VALUES:\nclient_address=127.0.0.1\n")
    assert _access_lines(mesh.sh(*PODS, "meshctl local logs ${SERVER} proxy")) == before


def test_trace_follows_the_request_through_both_proxies(mesh: Any) -> None:
    rid = found["id"]
    out = mesh.sh(f"meshctl trace {rid}")
    lines = out.splitlines()
    assert lines[0].startswith(f"request {rid}: 2 hop(s)")
    assert "/service-one-" in lines[1] and " outbound " in lines[1] and "-> 10.244." in lines[1]
    assert "/service-two-" in lines[2] and " inbound " in lines[2] and "-> 127.0.0.1:8080" in lines[2]


def test_injected_deployment_has_init_and_proxy(mesh: Any) -> None:
    from ruamel.yaml import YAML

    text = mesh.sh("meshctl local get deployment service-one -o yaml")
    spec = YAML(typ="safe").load(text)["spec"]["template"]["spec"]
    [init] = spec["initContainers"]
    assert init["name"] == "init" and init["args"] == ["-p", "15001", "-u", "1337"]
    assert "NET_ADMIN" in init["securityContext"]["capabilities"]["add"]
    proxy = next(c for c in spec["containers"] if c["name"] == "proxy")
    assert proxy["securityContext"]["runAsUser"] == 1337
    assert {"POD_NAME", "POD_NAMESPACE", "POD_IP"} <= {e["name"] for e in proxy["env"]}
    assert proxy["args"][:2] == ["sidecar", "--discovery-address"]


def test_proxy_runs_as_1337_and_app_as_root(mesh: Any) -> None:
    users = mesh.sh(*PODS, "meshctl local exec ${CLIENT} -c proxy -- id -u",
                    "meshctl local exec ${CLIENT} -c app -- id -u")
    assert users.split() == ["1337", "0"]


def test_delete_removes_pods_and_their_namespaces(mesh: Any) -> None:
    recorded["processes"] = mesh.processes()
    # discovery, the kubelet, Prometheus and its socket bridge, and per pod: pause, app, proxy (the agent;
    # the proxy is its child)
    assert len(recorded["processes"]) == 4 + 2 * 3
    out = mesh.sh("meshctl local delete -f apps.yaml")
    assert 'deployment "service-two" deleted' in out
    assert mesh.netns() == [f"{mesh.prefix}-node"]
    assert mesh.sh("meshctl local get pods") == ""


def test_down_leaves_nothing(mesh: Any) -> None:
    assert mesh.sh("meshctl local down").strip().endswith("removed")
    assert mesh.leftovers(recorded["processes"]) == []


def test_every_tutorial_command_was_run(ran_commands: set[str]) -> None:
    """docs/tutorial.md: every line of its ```bash blocks is a command this suite ran."""
    if not DOCS.exists():
        pytest.fail(f"{DOCS} is missing")
    blocks = re.findall(r"```bash\n(.*?)```", DOCS.read_text(), flags=re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines()
                if line.strip() and not line.strip().startswith("#")]
    assert commands, "no ```bash blocks in docs/tutorial.md"
    normalized = [re.sub(UUID, "<id>", c) for c in commands]
    missing = [c for c in normalized if c not in ran_commands]
    assert not missing, f"tutorial commands the e2e suite does not run: {missing}"
