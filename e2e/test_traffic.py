"""Beyond the tutorial, on the local mesh: an L4 (non-http) Service port, and route rules that
shift live traffic between two versions without a failed request. Needs root.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from meshbox.ctl.trace import parse_line

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
CLIENT = "CLIENT=$(meshctl local get pod -l app=service-one -o jsonpath='{.items[0].metadata.name}')"
RULE = """apiVersion: routing.meshbox.io/v1alpha1
kind: RouteRule
metadata:
  name: service-two-split
spec:
  destination: service-two
  route:
  - labels: {{version: v1}}
    weight: {v1}
  - labels: {{version: v2}}
    weight: {v2}
"""


@pytest.fixture(scope="module")
def traffic(mesh: Any) -> Any:
    """The mesh with traffic.yaml injected and applied, every pod ready."""
    mesh.sh("meshctl local apply -f <(meshctl kube-inject -f traffic.yaml)")
    mesh.sh("meshctl local wait --timeout 60")
    return mesh


def _ids(mesh: Any, count: int) -> list[str]:
    """Send ``count`` requests from the client's app to service-two; their request ids."""
    out = mesh.sh(CLIENT, f"meshctl local exec ${{CLIENT}} -c app -- sh -c "
                          f"'for i in $(seq {count}); do curl -s -m 5 service-two:80 | grep x-request-id; done'")
    return re.findall(rf"x-request-id=({UUID})", out)


def _landed(mesh: Any, ids: list[str]) -> dict[str, int]:
    """How many of ``ids`` each version's proxy logged on its inbound side."""
    counts = {}
    for version in ("v1", "v2"):
        log = mesh.sh(f"meshctl local logs $(meshctl local get pod -l app=service-two,version={version} "
                      "-o jsonpath='{.items[0].metadata.name}') proxy")
        counts[version] = sum(1 for i in ids if f'"{i}"' in log)
    return counts


def _apply_rule(mesh: Any, tmp: Path, v1: int, v2: int) -> str:
    path = tmp / f"rule-{v1}-{v2}.yaml"
    path.write_text(RULE.format(v1=v1, v2=v2))
    return mesh.sh(f"meshctl local apply -f {path}")


def _until(mesh: Any, want: dict[str, int], tries: int = 20) -> dict[str, int]:
    """Batches of 10 requests until one lands exactly as ``want`` (config takes a moment to reach proxies)."""
    seen: dict[str, int] = {}
    for _ in range(tries):
        ids = _ids(mesh, 10)
        assert len(ids) == 10
        seen = _landed(mesh, ids)
        if seen == want:
            return seen
    return seen


def test_non_http_port_is_proxied_at_l4(traffic: Any) -> None:
    body = traffic.sh(CLIENT, "meshctl local exec ${CLIENT} -c app -- curl -s -m 5 service-three:9000/l4")
    assert body.startswith("CLIENT VALUES:\nclient_address=127.0.0.1\n")  # delivered by service-three's proxy
    assert "real path=/l4" in body
    assert "x-request-id" not in body  # bytes passed through untouched: no L7 header added
    ip = traffic.sh("meshctl local get pod -l app=service-three -o jsonpath='{.items[0].status.podIP}'")
    log = traffic.sh(CLIENT, "meshctl local logs ${CLIENT} proxy")
    tcp = [p[1] for p in (parse_line(line, "client") for line in log.splitlines()) if p]
    assert any(h.method == "-" and h.upstream_host == f"{ip}:8080" for h in tcp), log


def test_route_rules_shift_live_traffic_without_errors(traffic: Any, tmp_path: Path) -> None:
    before = _landed(traffic, _ids(traffic, 40))
    assert before["v1"] > 0 and before["v2"] > 0  # no rule: both versions serve

    assert "created" in _apply_rule(traffic, tmp_path, 100, 0)
    assert _until(traffic, {"v1": 10, "v2": 0}) == {"v1": 10, "v2": 0}

    # Live traffic (bounded: 300 requests, each at most 5 s) while the rule changes to 50/50.
    loop = subprocess.Popen(
        ["bash", "-c", CLIENT + "\nmeshctl local exec ${CLIENT} -c app -- sh -c "
         "'for i in $(seq 300); do curl -s -o /dev/null -m 5 -w \"%{http_code}\\n\" service-two:80; done'"],
        env=traffic.env, stdout=subprocess.PIPE, text=True)
    try:
        assert "configured" in _apply_rule(traffic, tmp_path, 50, 50)
        assert loop.poll() is None, "the live requests ended before the rule changed"
        out, _ = loop.communicate(timeout=240)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    codes = out.split()
    assert len(codes) == 300 and set(codes) == {"200"}, f"failed requests: {[c for c in codes if c != '200']}"

    split = _landed(traffic, _ids(traffic, 100))
    assert sum(split.values()) == 100
    assert 25 <= split["v1"] <= 75, split  # 50/50: more than 5 standard deviations of margin

    assert "configured" in _apply_rule(traffic, tmp_path, 0, 100)
    assert _until(traffic, {"v1": 0, "v2": 10}) == {"v1": 0, "v2": 10}
    assert "service-two-split" in traffic.sh("meshctl local get routerules")
