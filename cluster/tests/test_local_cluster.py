"""The local cluster on real network namespaces, driven through `meshctl local` (root).

These use pods without sidecars and no discovery server (``up --without-discovery``): the
plumbing only. The mesh itself is exercised by e2e/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import need  # type: ignore[import-not-found]

MESHCTL = str(Path(sys.executable).parent / "meshctl")
APPS = """apiVersion: v1
kind: Service
metadata: {name: service-one, labels: {app: service-one}}
spec:
  ports: [{port: 80, targetPort: 8080, name: http}]
  selector: {app: service-one}
---
apiVersion: extensions/v1beta1
kind: Deployment
metadata: {name: service-one}
spec:
  replicas: 1
  template:
    metadata: {labels: {app: service-one}}
    spec:
      containers:
      - name: app
        image: gcr.io/google_containers/echoserver:1.4
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: service-two, labels: {app: service-two}}
spec:
  ports: [{port: 80, targetPort: 8080, name: http-status}]
  selector: {app: service-two}
---
apiVersion: extensions/v1beta1
kind: Deployment
metadata: {name: service-two}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: service-two}}
    spec:
      containers:
      - name: app
        image: gcr.io/google_containers/echoserver:1.4
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /, port: http}}  # a named port, as Kubernetes allows
"""


def test_pods_services_dns_nat_exec_logs_and_cleanup(local: Any) -> None:
    local.run("up", "--prefix", local.prefix, "--without-discovery")
    out = local.run("apply", "-f", "-", input_text=APPS).stdout
    assert out.splitlines() == ["service/service-one created", "service/service-two created",
                                "deployment.apps/service-one created", "deployment.apps/service-two created"]
    assert local.run("apply", "-f", "-", input_text=APPS).stdout.count("unchanged") == 4
    local.run("wait", "--timeout", "30")

    pods = local.run("get", "pods", "-o", "wide").stdout.splitlines()
    assert pods[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert len(pods) == 4 and all(" 1/1 " in line and " Running " in line for line in pods[1:])
    services = local.run("get", "svc").stdout
    assert "service-two   ClusterIP   10.96." in services and "80/TCP" in services

    client = local.pod("service-one")
    # The tutorial's call, without sidecars: name from the hosts file, ClusterIP DNAT'ed in the node.
    body = local.run("exec", client, "-c", "app", "--", "curl", "-sS", "-m", "5", "service-two:80").stdout
    assert body.startswith("CLIENT VALUES:\nclient_address=10.244.0.1\ncommand=GET\n")
    assert "request_uri=http://service-two:8080/" in body and "user-agent=curl/" in body
    full = local.run("exec", client, "--", "curl", "-sS", "-m", "5",
                     "service-two.default.svc.cluster.local:80/x?y=1").stdout
    assert "query=y=1" in full
    assert local.run("exec", client, "--", "hostname").stdout.strip() == client
    # A pod reaching its own Service through the node (hairpin).
    assert "CLIENT VALUES:" in local.run("exec", client, "--", "curl", "-sS", "-m", "5", "service-one").stdout
    # Two replicas behind one ClusterIP: both get traffic.
    local.run("exec", client, "--", "sh", "-c",
              "for i in $(seq 30); do curl -s -o /dev/null -m 5 service-two || exit 1; done")
    servers = local.run("get", "pods", "-l", "app=service-two", "-o", "jsonpath={.items[*].metadata.name}").stdout
    # Readiness probes come from 127.0.0.1 inside the pod; the Service's traffic from other pods.
    counts = [sum('"GET / HTTP/1.1" 200' in line and not line.startswith("127.0.0.1 ")
                  for line in local.run("logs", name, "app").stdout.splitlines())
              for name in servers.split()]
    assert len(counts) == 2 and sum(counts) == 31 and min(counts) > 0
    # exec passes the exit code through.
    assert local.run("exec", client, "--", "sh", "-c", "exit 7", check=False).returncode == 7

    # The node is isolated: only its bridge and the pods' veths, no link to the host.
    links = subprocess.run(["ip", "-n", f"{local.prefix}-node", "-o", "link"], capture_output=True, text=True,
                           check=True).stdout
    names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
    assert names == {"lo", "mbr0", "mbv1", "mbv2", "mbv3"}

    assert local.run("delete", "-f", "-", input_text=APPS).stdout.splitlines()[-1] == 'deployment "service-two" deleted'
    assert local.netns() == [f"{local.prefix}-node"]
    missing = local.run("delete", "-f", "-", input_text=APPS, check=False)
    assert missing.returncode == 1 and 'services "service-one" not found' in missing.stderr
    assert local.run("down").stdout.strip().endswith("removed")
    assert "nothing to remove" in local.run("down").stdout


def test_bad_input_changes_nothing(local: Any) -> None:
    local.run("up", "--prefix", local.prefix, "--without-discovery")
    local.run("apply", "-f", "-", input_text=APPS.split("---")[0])
    before = (local.netns(), local.run("get", "svc", "-o", "json").stdout)
    redis = APPS.replace("gcr.io/google_containers/echoserver:1.4", "redis:7")
    result = local.run("apply", "-f", "-", input_text=redis, check=False)
    assert result.returncode == 1
    assert "image 'redis:7' is not supported" in result.stderr and "echoserver:1.4" in result.stderr
    broken = local.run("apply", "-f", "-", input_text=APPS + "---\nkind: [\n", check=False)
    assert broken.returncode == 1 and "invalid YAML" in broken.stderr
    clash = APPS.replace("name: service-two, labels", "name: service-two, labels").replace(
        "spec:\n  ports: [{port: 80, targetPort: 8080, name: http-status}]",
        "spec:\n  clusterIP: 10.0.0.1\n  ports: [{port: 80, targetPort: 8080, name: http-status}]")
    outside = local.run("apply", "-f", "-", input_text=clash, check=False)
    assert outside.returncode == 1 and "outside the service range" in outside.stderr
    assert (local.netns(), local.run("get", "svc", "-o", "json").stdout) == before
    assert local.run("logs", "nope", "app", check=False).stderr.strip().endswith('pods "nope" not found in '
                                                                                 "namespace default")


def test_failing_init_container_is_reported(local: Any) -> None:
    local.run("up", "--prefix", local.prefix, "--without-discovery")
    pod = ("apiVersion: v1\nkind: Pod\nmetadata: {name: broken}\nspec:\n"
           "  initContainers: [{name: init, image: docker.io/meshbox/init:0.1.0, args: ['-p', 'notaport']}]\n"
           "  containers: [{name: app, image: 'gcr.io/google_containers/echoserver:1.4'}]\n")
    result = local.run("apply", "-f", "-", input_text=pod, check=False)
    assert result.returncode == 1
    assert "pod broken: init container 'init' failed" in result.stderr
    assert "Init:Error" in local.run("get", "pods").stdout
    assert local.run("wait", "--timeout", "5", check=False).stderr.strip().endswith("broken (Init:Error)")


def test_down_after_a_crash_mid_apply_removes_everything(local: Any) -> None:
    local.run("up", "--prefix", local.prefix, "--without-discovery")
    many = APPS.replace("replicas: 2", "replicas: 8")
    proc = subprocess.Popen([MESHCTL, "local", "--state-dir", str(local.state), "apply", "-f", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdin is not None
    proc.stdin.write(many)
    proc.stdin.close()
    deadline = time.monotonic() + 30
    while len(local.netns()) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    need(len(local.netns()) >= 2, "apply finished before it could be interrupted")
    processes = local.processes()
    assert processes  # at least the pause process of the first pod was recorded
    local.run("down")
    local.assert_gone(processes)


def test_logs_follow_until_the_pod_goes(local: Any) -> None:
    local.run("up", "--prefix", local.prefix, "--without-discovery")
    one = APPS.split("---")[1]
    local.run("apply", "-f", "-", input_text=one)
    local.run("wait", "--timeout", "30")
    pod = local.pod("service-one")
    follow = subprocess.Popen([MESHCTL, "local", "--state-dir", str(local.state), "logs", "-f", pod],
                              stdout=subprocess.PIPE, text=True)
    try:
        local.run("exec", pod, "--", "curl", "-s", "-o", "/dev/null", "-m", "5", "localhost:8080/followed")
        local.run("delete", "-f", "-", input_text=one)
        out, _ = follow.communicate(timeout=30)  # -f ends by itself once the pod is deleted
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert '"GET /followed HTTP/1.1" 200' in out
    assert follow.returncode == 0
