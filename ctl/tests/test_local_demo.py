"""`meshctl demo` (what `make demo` runs) on the local cluster: every step with its real output (root)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

MESHCTL = str(Path(sys.executable).parent / "meshctl")
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines()}


def test_demo_replays_the_tutorial_and_cleans_up(root: None) -> None:
    before = _namespaces()
    result = subprocess.run([MESHCTL, "demo", "--local"], capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for command in ("$ meshctl local up", "$ meshctl local apply -f <(meshctl kube-inject -f apps.yaml)",
                    "$ meshctl local exec -it ${CLIENT} -c app -- curl service-two:80 | grep x-request-id",
                    "$ meshctl local delete -f apps.yaml", "$ meshctl local down"):
        assert command in out
    rid = re.search(rf"x-request-id=({UUID})", out)
    assert rid, out
    assert re.search(rf'"{rid.group(1)}" "service-two" "10\.244\.\d+\.\d+:8080"', out)  # client proxy line
    assert f'"{rid.group(1)}" "service-two" "127.0.0.1:8080"' in out  # server proxy line
    assert re.search(r"mutual TLS: TLSv1\.3 to spiffe://cluster\.local/ns/default/sa/default \(10\.244\.", out)
    assert re.search(r"mutual TLS: TLSv1\.3 from spiffe://cluster\.local/ns/default/sa/default \(10\.244\.", out)
    assert 'init args: ["-p", "15001", "-u", "1337"]' in out and "proxy runAsUser: 1337" in out
    tail = out[out.index("The request, traced through both proxies:"):].splitlines()
    assert tail[1].startswith(f"request {rid.group(1)}: 2 hop(s)")
    assert " outbound " in tail[2] and " inbound " in tail[3]
    assert out.rstrip().splitlines()[-1].startswith("See the mesh live: meshctl demo --keep, then meshctl dashboard")
    assert {n for n in _namespaces() - before if n.startswith("demo")} == set()  # others' tests run alongside


def test_demo_says_plainly_it_needs_root(uid1337_python: str) -> None:
    result = subprocess.run(["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups", "--", MESHCTL, "demo",
                             "--local"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "the demo needs root" in result.stderr


def test_demo_hands_over_to_kind_when_docker_and_kind_work(tmp_path: Path) -> None:
    """No Docker engine or kind here: stand-ins that succeed for `docker info` and record the kind call
    show that the demo dispatches to deploy/kind/demo.sh (which then stops at the stand-in kind)."""
    calls = tmp_path / "calls"
    for tool, body in (("docker", "exit 0"), ("kubectl", "exit 0"),
                       ("kind", f'echo "kind $*" >> {calls}; echo "stand-in kind stops here" >&2; exit 3')):
        script = tmp_path / tool
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run([MESHCTL, "demo"], capture_output=True, text=True, timeout=60, env=env, check=False)
    assert "docker and kind are usable: running" in result.stdout and "deploy/kind/demo.sh" in result.stdout
    assert result.returncode == 3
    assert calls.read_text().startswith("kind create cluster --name meshbox --config ")
