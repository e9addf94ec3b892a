"""What people do after the tutorial, on real namespaces (root): scale, restart, roll out, endpoints, readiness.

Pods without sidecars; the discovery server runs only where readiness must reach it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from meshbox.discovery.directory_source import DirectorySource

MESHCTL = str(Path(sys.executable).parent / "meshctl")
ECHO = "gcr.io/google_containers/echoserver:1.4"


def web(replicas: int = 1, *, version: str = "v1", probe_port: int | None = None, policy: str = "Always",
        strategy: str = "RollingUpdate") -> str:
    """A Service and a Deployment of echoservers; ``probe_port`` points readiness somewhere else."""
    probe = f"\n        readinessProbe: {{httpGet: {{path: /, port: {probe_port}}}}}" if probe_port else ""
    return f"""apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  ports: [{{port: 80, targetPort: http, name: http}}]
  selector: {{app: web}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  strategy: {{type: {strategy}}}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web, version: {version}}}}}
    spec:
      restartPolicy: {policy}
      containers:
      - name: app
        image: {ECHO}
        ports: [{{containerPort: 8080, name: http}}]{probe}
"""


CLIENT = f"""apiVersion: v1
kind: Pod
metadata: {{name: client, labels: {{app: client}}}}
spec:
  containers: [{{name: app, image: "{ECHO}", ports: [{{containerPort: 8080}}]}}]
"""


def pods(local: Any) -> list[dict[str, Any]]:
    return json.loads(local.run("get", "pods", "-o", "json").stdout)["items"]  # type: ignore[no-any-return]


def endpoint_ips(local: Any, *, ready: bool = True) -> list[str]:
    [ep] = json.loads(local.run("get", "endpoints", "-o", "json").stdout)["items"]
    key = "addresses" if ready else "notReadyAddresses"
    return sorted(a["ip"] for s in ep["subsets"] for a in s.get(key, []))


def test_scale_up_and_down_and_bad_scale_requests(local: Any) -> None:
    local.run("up", "--prefix", local.prefix, "--without-discovery")
    local.run("apply", "-f", "-", input_text=web(1))
    local.run("wait", "--timeout", "30")
    assert local.run("scale", "deployment", "web", "--replicas", "3").stdout.strip() == "deployment.apps/web scaled"
    local.run("wait", "--timeout", "30")
    listed = pods(local)
    assert len(listed) == 3 and len(local.netns()) == 4
    table = local.run("get", "endpoints").stdout.splitlines()
    assert table[0].split() == ["NAME", "ENDPOINTS", "AGE"]
    assert table[1].startswith("web ") and table[1].count(":8080") == 3
    assert endpoint_ips(local) == sorted(p["status"]["podIP"] for p in listed)
    [slice_] = json.loads(local.run("get", "endpointslices", "-o", "json").stdout)["items"]
    assert sorted(e["addresses"][0] for e in slice_["endpoints"] if e["conditions"]["ready"]) == endpoint_ips(local)
    assert slice_["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    deployments = local.run("get", "deployments").stdout
    assert "web    3/3 " in deployments

    first = min(listed, key=lambda p: p["metadata"]["creationTimestamp"])["metadata"]["name"]
    local.run("scale", "deploy", "web", "--replicas", "1")
    assert [p["metadata"]["name"] for p in pods(local)] == [first]  # the newest go first
    assert len(local.netns()) == 2

    missing = local.run("scale", "deployment", "nope", "--replicas", "2", check=False)
    assert missing.returncode == 1
    assert 'Error from server (NotFound): deployments.apps "nope" not found' in missing.stderr
    negative = local.run("scale", "deployment", "web", "--replicas", "-1", check=False)
    assert negative.returncode == 1
    assert 'The Deployment "web" is invalid: spec.replicas: Invalid value: -1' in negative.stderr
    assert len(pods(local)) == 1


def test_exited_container_is_restarted_with_back_off_and_counted(local: Any) -> None:
    local.run("up", "--prefix", local.prefix, "--without-discovery")
    local.run("apply", "-f", "-", input_text=web(1))
    local.run("wait", "--timeout", "30")
    name = pods(local)[0]["metadata"]["name"]

    def app_pid() -> int:
        return int(local.state_json()["pods"][f"default/{name}"]["containers"]["app"]["pid"])

    def restarts() -> int:
        return int(pods(local)[0]["status"]["containerStatuses"][0]["restartCount"])

    for expected in (1, 2):
        before = app_pid()
        os.kill(before, signal.SIGKILL)
        local.until(f"restart {expected}", lambda e=expected, b=before: restarts() == e and app_pid() != b)  # type: ignore[misc]
        local.run("wait", "--timeout", "30")
    row = local.run("get", "pods").stdout.splitlines()[1].split()
    assert row[:4] == [name, "1/1", "Running", "2"]
    # The restarted echoserver answers, and its log kept the lines of the earlier runs.
    assert "CLIENT VALUES:" in local.run("exec", name, "--", "curl", "-sS", "-m", "5", "localhost:8080/x").stdout
    assert local.run("logs", name).stdout.count('"GET /x HTTP/1.1" 200') == 1
    kubelet_log = (local.state / "logs" / "node" / "kubelet.log").read_text()
    assert f"default/{name}: container app restarted (restart 2, next back-off 2s)" in kubelet_log


def test_never_restart_policy_leaves_the_pod_in_error(local: Any) -> None:
    local.run("up", "--prefix", local.prefix, "--without-discovery")
    local.run("apply", "-f", "-", input_text=web(1, policy="Never"))
    local.run("wait", "--timeout", "30")
    name = pods(local)[0]["metadata"]["name"]
    os.kill(int(local.state_json()["pods"][f"default/{name}"]["containers"]["app"]["pid"]), signal.SIGKILL)
    local.until("pod in Error", lambda: local.run("get", "pods").stdout.splitlines()[1].split()[1:4] == [
        "0/1", "Error", "0"])
    local.until("out of the Service once the kubelet sees it", lambda: endpoint_ips(local) == [])
    waited = local.run("wait", "--timeout", "5", check=False)
    assert waited.returncode == 1 and waited.stderr.strip().endswith(f"{name} (Error)")


def test_changed_template_rolls_the_pods_without_losing_the_service(local: Any, tmp_path: Path) -> None:
    local.run("up", "--prefix", local.prefix, "--without-discovery")
    local.run("apply", "-f", "-", input_text=web(2) + "---\n" + CLIENT)
    local.run("wait", "--timeout", "30")
    old = {p["metadata"]["name"] for p in pods(local) if p["metadata"]["labels"]["app"] == "web"}
    assert "deployment.apps/web unchanged" in local.run("apply", "-f", "-", input_text=web(2)).stdout
    # A client calls the Service all through the rollout (bounded: at most 3000 calls, until told to stop).
    stop = tmp_path / "stop"
    calls = subprocess.Popen(
        [MESHCTL, "local", "--state-dir", str(local.state), "exec", "client", "--", "sh", "-c",
         f"i=0; while [ ! -e {stop} ] && [ $i -lt 3000 ]; do "
         "curl -s -o /dev/null -m 2 -w '%{http_code}\\n' web:80/; i=$((i+1)); sleep 0.02; done"],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out = local.run("apply", "-f", "-", input_text=web(2, version="v2")).stdout
    finally:
        stop.touch()
        codes, _ = calls.communicate(timeout=30)
    assert "deployment.apps/web configured" in out
    assert codes.split() and set(codes.split()) == {"200"}, codes
    new = [p for p in pods(local) if p["metadata"]["labels"]["app"] == "web"]
    assert len(new) == 2 and not old & {p["metadata"]["name"] for p in new}
    assert {p["metadata"]["labels"]["version"] for p in new} == {"v2"}
    assert len({p["metadata"]["labels"]["pod-template-hash"] for p in new}) == 1
    assert len(local.netns()) == 4  # the old pods' namespaces are gone
    assert endpoint_ips(local) == sorted(p["status"]["podIP"] for p in new)
    # A replicas-only change scales without replacing the pods; Recreate replaces them all.
    local.run("apply", "-f", "-", input_text=web(3, version="v2"))
    kept = {p["metadata"]["name"] for p in pods(local)}
    assert {p["metadata"]["name"] for p in new} < kept
    local.run("apply", "-f", "-", input_text=web(3, version="v3", strategy="Recreate"))
    recreated = [p for p in pods(local) if p["metadata"]["labels"]["app"] == "web"]
    assert len(recreated) == 3 and not kept & {p["metadata"]["name"] for p in recreated}


def test_readiness_moves_a_pod_in_and_out_of_the_endpoints_and_discovery_sees_it(local: Any) -> None:
    local.run("up", "--prefix", local.prefix)
    local.run("apply", "-f", "-", input_text=web(2, probe_port=9000))  # nothing listens on 9000 yet
    listed = pods(local)
    names = {p["metadata"]["name"]: p["status"]["podIP"] for p in listed}
    local.until("both pods listed as not ready", lambda: endpoint_ips(local, ready=False) == sorted(names.values()))
    assert endpoint_ips(local) == [] and "web    <none>" in local.run("get", "ep").stdout
    registry = DirectorySource(local.state / "registry")

    def discovery_serving() -> list[str]:
        return sorted(p.name for p in registry.load().pods if p.serving)

    assert discovery_serving() == []
    # A readiness endpoint appears in one pod: that pod becomes ready; when it goes, not ready again.
    chosen = sorted(names)[0]
    # `timeout --foreground` stays in the group of meshctl exec, so one killpg stops all of it.
    serve = ["timeout", "--foreground", "60", "python3", "-m", "http.server", "9000"]
    helper = subprocess.Popen([MESHCTL, "local", "--state-dir", str(local.state), "exec", chosen, "--", *serve],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        local.until("the pod with a readiness endpoint is ready", lambda: endpoint_ips(local) == [names[chosen]])
        assert discovery_serving() == [chosen]
        other = next(n for n in names if n != chosen)
        # Service traffic (kube-proxy NAT) goes only to the ready pod.
        for _ in range(3):
            body = local.run("exec", other, "--", "curl", "-sS", "-m", "5", "web:80/").stdout
            assert "CLIENT VALUES:" in body
        assert " 1/1 " in next(line for line in local.run("get", "pods").stdout.splitlines() if chosen in line)
        os.killpg(helper.pid, signal.SIGTERM)  # meshctl exec and the server it runs, by their own group
        helper.wait(timeout=20)
        local.until("the pod is out again", lambda: endpoint_ips(local) == [])
        assert discovery_serving() == []
        pod_file = YAML(typ="safe").load((local.state / "registry" / f"pod.default.{chosen}.yaml").read_text())
        assert pod_file["status"]["conditions"] == [{"type": "Ready", "status": "False"}]
    finally:
        if helper.poll() is None:
            os.killpg(helper.pid, signal.SIGKILL)
            helper.wait()
