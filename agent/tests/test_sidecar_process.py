"""``meshbox-agent sidecar`` as a real process, running the real proxy, fed by a canned
(but real, gRPC on loopback) discovery server, with real HTTP backends behind the proxy.

These tests are about the agent's own behaviour; the same flows against the real
``meshbox-discovery`` are in test_discovery_integration.py.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port  # type: ignore[import-not-found]
from meshbox.api.v1 import proxy_config_pb2 as pc

VENV_BIN = Path(sys.executable).parent
ACCESS_LINE = re.compile(r'^\[\d{4}-\d\d-\d\dT[\d:.]+Z\] "GET / HTTP/1.1" 200 ')


def test_agent_applies_the_world_acks_it_becomes_ready_and_passes_the_access_log(
    canned_discovery: Any, start_agent: Any, backends: Any, kit: Any
) -> None:
    v1 = backends("v1")
    port = kit.free_port()
    agent = start_agent(f"127.0.0.1:{canned_discovery.port}")
    kit.wait_until(lambda: len(canned_discovery.first_requests()) == 4, 10, "the agent's first requests")
    assert agent.ready_status() == 503  # nothing applied yet
    first = canned_discovery.first_requests()
    assert {r.node.id for r in first} == {"app-1.default"}
    assert {r.node.pod_ip for r in first} == {"127.0.0.1"}
    canned_discovery.set_world("v1", kit.http_world(port, {"backend": v1}))
    agent.wait_ready()
    assert kit.get(port) == (200, "v1")
    for type_url in (kit.CLUSTER, kit.ENDPOINTS, kit.LISTENER, kit.ROUTES):
        assert canned_discovery.acked(type_url) == ["v1"]
    # The proxy's access log reaches the agent's stdout as the proxy wrote it; the agent's own
    # logging goes to stderr, so stdout holds nothing but access log lines.
    kit.wait_until(lambda: f'"127.0.0.1:{v1}"' in agent.stdout(), 5, "an access log line on stdout")
    lines = agent.stdout().splitlines()
    assert len(lines) == 1
    assert ACCESS_LINE.match(lines[0]), lines[0]
    assert "connected to discovery" in agent.log()


def _ready_agent(canned_discovery: Any, start_agent: Any, kit: Any, world: dict[str, Any], **kwargs: Any) -> Any:
    canned_discovery.set_world("v1", world)
    agent = start_agent(f"127.0.0.1:{canned_discovery.port}", **kwargs)
    agent.wait_ready()
    return agent


def test_a_route_change_takes_effect_and_bad_configs_are_nacked_while_the_old_one_serves(
    canned_discovery: Any, start_agent: Any, backends: Any, kit: Any
) -> None:
    a, b = backends("a"), backends("b")
    port = kit.free_port()
    _ready_agent(canned_discovery, start_agent, kit, kit.http_world(port, {"a": a, "b": b}))
    assert kit.get(port) == (200, "a")

    canned_discovery.set_world("v2", kit.http_world(port, {"a": a, "b": b}, weights={"b": 1}))
    kit.wait_until(lambda: "v2" in canned_discovery.acked(kit.ROUTES), 10, "the ACK of routes v2")
    assert kit.get(port) == (200, "b")

    # Refused by the agent's own check: a route to a cluster that does not exist.
    canned_discovery.set_world("v3", kit.http_world(port, {"a": a, "b": b}, weights={"missing": 1}))
    kit.wait_until(lambda: canned_discovery.nacks(), 10, "a NACK")
    (nack,) = canned_discovery.nacks()
    assert nack.type_url == kit.ROUTES
    assert nack.version_info == "v2"
    assert "unknown cluster 'missing'" in nack.error_detail.message
    assert kit.get(port) == (200, "b")

    # Refused by the proxy itself: a listener on a port something else already holds.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        bad = kit.http_world(port, {"a": a, "b": b}, weights={"b": 1})
        bad[kit.LISTENER].append(pc.Listener(
            name="taken", address="127.0.0.1", port=taken, protocol=pc.TCP, cluster="a", bind=True))
        canned_discovery.set_world("v4", bad)
        kit.wait_until(lambda: any(n.type_url == kit.LISTENER for n in canned_discovery.nacks()), 10,
                       "a NACK of the listeners")
    nack = next(n for n in canned_discovery.nacks() if n.type_url == kit.LISTENER)
    assert nack.version_info == "v1"
    assert "cannot bind" in nack.error_detail.message
    assert kit.get(port) == (200, "b")


def test_a_push_split_in_two_waits_for_its_second_half_instead_of_being_nacked(
    canned_discovery: Any, start_agent: Any, backends: Any, kit: Any
) -> None:
    a, b = backends("a"), backends("b")
    port = kit.free_port()
    _ready_agent(canned_discovery, start_agent, kit, kit.http_world(port, {"a": a, "b": b}, weights={"b": 1}))
    # First half: cluster b is removed while the routes still send everything to it.
    canned_discovery.set_world("v2", kit.http_world(port, {"a": a}, weights={"b": 1}))
    kit.wait_until(lambda: canned_discovery.sent(kit.CLUSTER) >= 2, 5, "the clusters push")
    time.sleep(0.3)
    assert kit.get(port) == (200, "b")  # still the old config: the half-push was not applied
    # Second half: the routes move to a.
    canned_discovery.set_world("v2", kit.http_world(port, {"a": a}, weights={"a": 1}))
    kit.wait_until(lambda: "v2" in canned_discovery.acked(kit.ROUTES), 10, "the ACK of routes v2")
    assert canned_discovery.nacks() == []
    assert "v2" in canned_discovery.acked(kit.CLUSTER)
    assert kit.get(port) == (200, "a")


def test_traffic_flows_while_discovery_is_down_and_a_reconnect_resends_the_applied_versions(
    canned_discovery: Any, start_agent: Any, backends: Any, kit: Any
) -> None:
    port = kit.free_port()
    the_world = kit.http_world(port, {"backend": backends("v1")})
    agent = _ready_agent(canned_discovery, start_agent, kit, the_world)
    discovery_port = canned_discovery.port
    canned_discovery.stop()
    kit.wait_until(lambda: "discovery stream to" in agent.log(), 10, "the agent noticing discovery is gone")
    for _ in range(20):
        assert kit.get(port) == (200, "v1")
    assert kit.get(agent.status_port, "/healthz/ready") == (
        200, "ready (discovery unreachable: serving the last good config)\n")

    again = type(canned_discovery)()
    again.set_world("v1", the_world)
    again.start(discovery_port)
    try:
        kit.wait_until(lambda: len(again.acked(kit.ROUTES)) == 1, 15, "ACKs on the new stream")
        assert [(r.version_info, r.response_nonce) for r in again.first_requests()] == [("v1", "")] * 4
        # The same world again: ACKed without swapping the proxy's config a second time.
        assert agent.log().count("applied config") == 1
        assert kit.get(port) == (200, "v1")
    finally:
        again.stop()


def test_the_agent_restarts_a_killed_proxy_and_gives_it_the_last_good_config(
    canned_discovery: Any, start_agent: Any, backends: Any, kit: Any
) -> None:
    port = kit.free_port()
    agent = _ready_agent(canned_discovery, start_agent, kit, kit.http_world(port, {"backend": backends("v1")}))
    (first,) = agent.proxy_pids()
    os.kill(first, signal.SIGKILL)
    kit.wait_until(lambda: agent.proxy_pids() not in ([], [first]), 15, "a new proxy process")
    agent.wait_ready()
    assert kit.get(port) == (200, "v1")
    assert "exited unexpectedly with status -9" in agent.log()
    assert agent.proc.poll() is None


def test_sigterm_drains_then_stops_the_proxy_and_the_agent_exits_0(
    canned_discovery: Any, start_agent: Any, backends: Any, kit: Any
) -> None:
    port = kit.free_port()
    agent = _ready_agent(canned_discovery, start_agent, kit, kit.http_world(port, {"backend": backends("v1")}),
                         drain_seconds=1.5)
    (proxy,) = agent.proxy_pids()
    agent.proc.send_signal(signal.SIGTERM)
    kit.wait_until(lambda: agent.ready_status() == 503, 5, "readiness to fail while draining")
    assert agent.proc.wait(timeout=20) == 0
    log = agent.log()
    assert "draining the proxy's listeners for 1.5s" in log
    assert "agent stopped" in log
    assert not Path(f"/proc/{proxy}").exists() or "Z" in Path(f"/proc/{proxy}/stat").read_text().split()[2]


def test_quitquitquit_makes_agent_and_proxy_exit_0(
    canned_discovery: Any, start_agent: Any, backends: Any, kit: Any
) -> None:
    port = kit.free_port()
    agent = _ready_agent(canned_discovery, start_agent, kit, kit.http_world(port, {"backend": backends("v1")}),
                         drain_seconds=30)
    (proxy,) = agent.proxy_pids()
    conn = http.client.HTTPConnection("127.0.0.1", agent.status_port, timeout=5)
    conn.request("POST", "/quitquitquit")
    assert conn.getresponse().status == 200
    conn.close()
    assert agent.proc.wait(timeout=10) == 0  # no drain period on this path
    assert not Path(f"/proc/{proxy}").exists()
    assert "exited unexpectedly" not in agent.log()


def test_wait_returns_once_the_sidecar_is_ready_and_fails_after_its_timeout(
    canned_discovery: Any, start_agent: Any, backends: Any, kit: Any
) -> None:
    agent = start_agent(f"127.0.0.1:{canned_discovery.port}")
    wait = [str(VENV_BIN / "meshbox-agent"), "wait", "--status-port", str(agent.status_port)]
    not_yet = subprocess.run([*wait, "--timeout", "0.5"], capture_output=True, text=True, timeout=30)
    assert not_yet.returncode == 1
    assert "sidecar not ready after 0.5s" in not_yet.stderr
    waiter = subprocess.Popen([*wait, "--timeout", "30"], stdout=subprocess.PIPE, text=True)
    try:
        port = kit.free_port()
        canned_discovery.set_world("v1", kit.http_world(port, {"backend": backends("v1")}))
        out, _ = waiter.communicate(timeout=30)
    finally:
        waiter.kill()
    assert waiter.returncode == 0
    assert out.startswith("sidecar ready")


def test_a_killed_agent_takes_its_proxy_down(
    canned_discovery: Any, start_agent: Any, backends: Any, kit: Any
) -> None:
    port = kit.free_port()
    agent = _ready_agent(canned_discovery, start_agent, kit, kit.http_world(port, {"backend": backends("v1")}))
    (proxy,) = agent.proxy_pids()
    agent.proc.kill()  # the agent alone, not its process group
    agent.proc.wait(timeout=10)
    kit.wait_until(lambda: not _alive(proxy), 10, f"the orphaned proxy {proxy} to exit")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_50_config_swaps_under_load_fail_no_request(
    canned_discovery: Any, start_agent: Any, backends: Any, kit: Any, load: Any
) -> None:
    targets = {"a": backends("a"), "b": backends("b")}
    port = kit.free_port()
    _ready_agent(canned_discovery, start_agent, kit, kit.http_world(port, targets))
    traffic = load(port, workers=4, max_requests=50_000, max_seconds=90)
    # The real discovery server does 100 in test_discovery_integration.py (needs root); this one runs anywhere.
    for i in range(50):
        version = f"swap{i}"
        canned_discovery.set_world(version, kit.http_world(port, targets, weights={"ba"[i % 2]: 1}))
        kit.wait_until(lambda v=version: v in canned_discovery.acked(kit.ROUTES), 10, f"the ACK of {version}")
    traffic.stop()
    assert traffic.failures == []
    assert canned_discovery.nacks() == []
    assert traffic.succeeded > 100
    assert set(traffic.bodies) == {"a", "b"}


def _refused(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``meshbox-agent sidecar`` expecting it to refuse to start.

    Ephemeral ports are passed even so: should a bug let it start, it must not take the
    well-known ports other tests may use; its whole process group is killed on a timeout.
    """
    pod = {"POD_NAME": "app-1", "POD_NAMESPACE": "default", "POD_IP": "10.1.0.5"}
    plaintext = [] if "--ca-root-file" in args or "--tls" in args else ["--plaintext"]
    args = [a for a in args if a != "--tls"]
    argv = [str(VENV_BIN / "meshbox-agent"), "sidecar", "--status-port", "0", "--admin-port",
            str(free_port()), *plaintext, *args, "--", "--outbound-port", "0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **pod, **env}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--discovery-address", "127.0.0.1:1"], {"POD_NAME": ""}, "POD_NAME is not set"),
    (["--discovery-address", "127.0.0.1:1"], {"POD_IP": "pod-ip"}, "POD_IP is not an IP address"),
    (["--discovery-address", "discovery"], {}, "must be HOST:PORT"),
    (["--discovery-address", "127.0.0.1:1", "--proxy-command", ""], {}, "--proxy-command"),
    (["--discovery-address", "127.0.0.1:1", "--status-port", "70000"], {}, "--status-port"),
    # Without --plaintext: the CA's roots and the service account are needed, and named when missing.
    (["--tls", "--discovery-address", "127.0.0.1:1"], {"SERVICE_ACCOUNT": "app"},
     "cannot read the mesh CA's roots /var/run/meshbox/ca-root/root-cert.pem"),
    (["--discovery-address", "127.0.0.1:1", "--ca-root-file", "/nonexistent/root.pem"], {"SERVICE_ACCOUNT": "app"},
     "cannot read the mesh CA's roots /nonexistent/root.pem"),
    (["--discovery-address", "127.0.0.1:1", "--ca-root-file", "/etc/hostname"], {"SERVICE_ACCOUNT": "app"},
     "holds no PEM certificate"),
    (["--tls", "--discovery-address", "127.0.0.1:1"], {"SERVICE_ACCOUNT": ""}, "SERVICE_ACCOUNT is not set"),
    (["--discovery-address", "127.0.0.1:1", "--plaintext", "--ca-root-file", "/etc/hostname"], {},
     "--plaintext and --ca-root-file exclude each other"),
    (["--discovery-address", "127.0.0.1:1", "--trace-collector", "otel"], {},
     "--trace-collector / tracing.collector_address: discovery address 'otel' must be HOST:PORT"),
    (["--discovery-address", "127.0.0.1:1", "--trace-sampling", "150"], {}, "--trace-sampling"),
])
def test_bad_input_is_refused_with_a_message_naming_it(args: list[str], env: dict[str, str], message: str) -> None:
    done = _refused(args, env)
    assert done.returncode != 0
    assert message in done.stderr


def test_a_taken_status_port_is_reported_and_nothing_is_started() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        done = _refused(["--discovery-address", "127.0.0.1:1", "--status-port", str(taken)], {})
    assert done.returncode == 1
    assert f"cannot serve the status port on 0.0.0.0:{taken}" in done.stderr
    assert "proxy started" not in done.stderr


def test_a_bad_mesh_config_is_refused_naming_the_field(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("ports:\n  admn: 1\n")
    done = _refused(["--mesh-config", str(mesh)], {})
    assert done.returncode == 1
    assert "ports.admn: no such field" in done.stderr


def test_the_status_port_serves_the_agent_and_proxy_metrics_merged(
    canned_discovery: Any, start_agent: Any, backends: Any, kit: Any
) -> None:
    v1 = backends("v1")
    port = kit.free_port()
    agent = _ready_agent(canned_discovery, start_agent, kit, kit.http_world(port, {"backend": v1}))
    assert kit.get(port) == (200, "v1")
    conn = http.client.HTTPConnection("127.0.0.1", agent.status_port, timeout=5)
    conn.request("GET", "/stats/prometheus")
    reply = conn.getresponse()
    text = reply.read().decode()
    assert reply.status == 200 and reply.getheader("content-type", "").startswith("text/plain; version=0.0.4")
    samples = {s.name: s for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["meshbox_agent_configs_applied_total"].value >= 1
    assert samples["meshbox_agent_proxy_scrape_up"].value == 1
    assert samples["meshbox_agent_discovery_connected"].value == 1
    request = samples["istio_requests_total"]
    assert request.value == 1 and request.labels["source_workload"] == "app-1"
    assert request.labels["response_code"] == "200"
