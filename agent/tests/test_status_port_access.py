"""The status port answers readiness and metrics to anyone but everything else only from the pod's loopback.

What proves it: the real ``meshbox-agent`` runs in a network namespace standing in for a pod
(pod IP 10.77.0.2, linked by a veth to a second namespace, another pod at 10.77.0.1). The same
listening socket gets requests whose peer is a real non-loopback address (the other pod, and the
pod's own IP) and requests from 127.0.0.1: only the address differs. 127.0.0.2 would prove
nothing, being loopback too. Needs root (network namespaces).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent
POD_IP, OTHER_IP = "10.77.0.2", "10.77.0.1"


def curl(ns: Any, method: str, url: str) -> tuple[int, str]:
    done = ns.run("curl", "-s", "--max-time", "5", "-X", method, "-w", "\n%{http_code}", url, check=False)
    body, _, code = done.stdout.rpartition("\n")
    return int(code or 0), body


def test_only_readiness_is_served_off_loopback(netns: Any, tmp_path: Path) -> None:
    pod, other = netns("pod"), netns("other")
    netns.link(pod, f"{POD_IP}/24", other, f"{OTHER_IP}/24")
    log = tmp_path / "agent.log"
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "POD_NAME": "app-1", "POD_NAMESPACE": "default",
           "POD_IP": POD_IP}
    with log.open("wb") as err:
        agent = pod.popen(str(VENV_BIN / "meshbox-agent"), "sidecar", "--plaintext",
                          "--discovery-address", "127.0.0.1:1", "--", "--outbound-port", "0",
                          env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 20
    while curl(pod, "GET", "http://127.0.0.1:15020/healthz/ready")[0] == 0:
        assert time.monotonic() < deadline and agent.poll() is None, log.read_text()
        time.sleep(0.1)

    # Readiness from another pod (the kubelet's view): served, with the reason; metrics (Prometheus's) too.
    status, body = curl(other, "GET", f"http://{POD_IP}:15020/healthz/ready")
    assert (status, body) == (503, "no config applied yet (discovery at 127.0.0.1:1)\n")
    assert curl(other, "GET", f"http://{POD_IP}:15020/stats/prometheus")[0] not in (0, 403)
    # Mutations and anything else, from another pod or from the pod's own IP: refused.
    for ns, origin in ((other, "other pod"), (pod, "pod IP")):
        for method, path in (("POST", "/quitquitquit"), ("GET", "/quitquitquit"), ("GET", "/nope"),
                             ("POST", "/healthz/ready")):
            status, body = curl(ns, method, f"http://{POD_IP}:15020{path}")
            assert status == 403, (origin, method, path, status, body)
            assert "only from the pod's loopback" in body
    assert agent.poll() is None, "a refused /quitquitquit must not stop the agent"
    assert f"refused POST /quitquitquit from {OTHER_IP}" in log.read_text()
    assert f"refused POST /quitquitquit from {POD_IP}" in log.read_text()
    # The same request over loopback works: the agent exits 0.
    assert curl(pod, "POST", "http://127.0.0.1:15020/quitquitquit")[0] == 200
    assert agent.wait(timeout=20) == 0
