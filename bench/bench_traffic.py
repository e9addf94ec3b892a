"""Istio's traffic API against meshbox's own: the cost of translating VirtualServices and DestinationRules.

A real ``meshbox-discovery`` process serves a registry directory of N Services (two pods each,
version v1 and v2) on loopback, with 100 simulated agents connected (grpc.aio streams that ACK
everything). A round rewrites one file holding the routing of all N services with new weights and
measures the time from the write until every agent has ACKed the new routes: the server notices
the file, reads and translates every object, rebuilds the config and pushes it.

Value: N VirtualServices + N DestinationRules (networking.istio.io/v1: a header match to subset
v2, then a weighted v1/v2 split with a timeout). Baseline, measured in the same run on a fresh
server: N meshbox RouteRules expressing the same routes. Target: <= 1.5x.
Environment: MESHBOX_BENCH_TRAFFIC_RULES (default 1000), MESHBOX_BENCH_TRAFFIC_AGENTS (default 100),
MESHBOX_BENCH_TRAFFIC_ROUNDS (default 3).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from discovery_agents import ROUTE, Agent, connect
from server_processes import stop_process

RULES = int(os.environ.get("MESHBOX_BENCH_TRAFFIC_RULES", "1000"))
AGENTS = int(os.environ.get("MESHBOX_BENCH_TRAFFIC_AGENTS", "100"))
ROUNDS = int(os.environ.get("MESHBOX_BENCH_TRAFFIC_ROUNDS", "3"))
TARGET_RATIO = 1.5
ROUND_TIMEOUT_S = 60.0
STARTED = re.compile(r"serving discovery gRPC on 127\.0\.0\.1:(\d+)")


def _name(i: int) -> str:
    return f"svc-{i:04d}"


def registry_docs(count: int) -> list[dict[str, Any]]:
    """``count`` Services, each with a v1 and a v2 pod."""
    docs: list[dict[str, Any]] = []
    for i in range(count):
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": _name(i), "namespace": "default"},
                     "spec": {"clusterIP": f"10.96.{i // 250}.{i % 250 + 1}", "selector": {"app": _name(i)},
                              "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        for v in (1, 2):
            docs.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": f"{_name(i)}-v{v}", "namespace": "default",
                                      "labels": {"app": _name(i), "version": f"v{v}"}},
                         "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]},
                         "status": {"podIP": f"10.{10 + v}.{i // 250}.{i % 250 + 1}", "phase": "Running"}})
    return docs


def istio_docs(count: int, v1_weight: int) -> list[dict[str, Any]]:
    """A DestinationRule and a VirtualService per Service, as Istio users write them."""
    docs: list[dict[str, Any]] = []
    for i in range(count):
        name = _name(i)
        docs.append({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                     "metadata": {"name": name, "namespace": "default"},
                     "spec": {"host": name, "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                        {"name": "v2", "labels": {"version": "v2"}}]}})
        docs.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                     "metadata": {"name": name, "namespace": "default"},
                     "spec": {"hosts": [name], "http": [
                         {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
                          "route": [{"destination": {"host": name, "subset": "v2"}}]},
                         {"timeout": "2s",
                          "route": [{"destination": {"host": name, "subset": "v1"}, "weight": v1_weight},
                                    {"destination": {"host": name, "subset": "v2"}, "weight": 100 - v1_weight}]}]}})
    return docs


def route_rule_docs(count: int, v1_weight: int) -> list[dict[str, Any]]:
    """The same routes as meshbox RouteRules: two per Service."""
    docs: list[dict[str, Any]] = []
    for i in range(count):
        name = _name(i)
        docs.append({"apiVersion": "routing.meshbox.io/v1alpha1", "kind": "RouteRule",
                     "metadata": {"name": f"{name}-jason", "namespace": "default"},
                     "spec": {"destination": name, "precedence": 1,
                              "match": {"headers": [{"name": "end-user", "exact": "jason"}]},
                              "route": [{"labels": {"version": "v2"}, "weight": 100}]}})
        docs.append({"apiVersion": "routing.meshbox.io/v1alpha1", "kind": "RouteRule",
                     "metadata": {"name": f"{name}-split", "namespace": "default"},
                     "spec": {"destination": name, "timeout": "2s",
                              "route": [{"labels": {"version": "v1"}, "weight": v1_weight},
                                        {"labels": {"version": "v2"}, "weight": 100 - v1_weight}]}})
    return docs


def _write(path: Path, docs: list[dict[str, Any]]) -> None:
    # JSON (which the registry reads as YAML): much faster to write than YAML for thousands of objects.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    tmp.replace(path)


async def _round(agents: list[Agent], rules_file: Path, docs: list[dict[str, Any]]) -> float:
    before = {id(a): a.versions[ROUTE] for a in agents}
    start = time.monotonic()
    _write(rules_file, docs)
    deadline = start + ROUND_TIMEOUT_S
    while any(a.versions[ROUTE] == before[id(a)] for a in agents):
        if time.monotonic() > deadline:
            raise TimeoutError(f"agents got no new routes within {ROUND_TIMEOUT_S}s")
        await asyncio.sleep(0.01)
    return max(a.route_acked_at for a in agents) - start


def _start_server(registry_dir: Path) -> subprocess.Popen[str]:
    binary = Path(sys.executable).with_name("meshbox-discovery")
    return subprocess.Popen(
        [str(binary), "--plaintext", "--registry-dir", str(registry_dir), "--listen-address", "127.0.0.1",
         "--grpc-port", "0", "--http-port", "0", "--poll-interval", "0.05", "--debounce", "0.05"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


def _measure(make_docs: Callable[[int, int], list[dict[str, Any]]]) -> float:
    """Median seconds from rewriting all rules until 100 agents have the new routes."""
    with tempfile.TemporaryDirectory(prefix="meshbox-bench-traffic-") as tmp:
        registry_dir = Path(tmp)
        _write(registry_dir / "mesh.json", registry_docs(RULES))
        rules_file = registry_dir / "rules.json"
        _write(rules_file, make_docs(RULES, 10))
        proc = _start_server(registry_dir)
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            match = STARTED.search(line)
            if not match:
                raise RuntimeError(f"meshbox-discovery did not start: {line}{proc.stderr.read()}")

            async def rounds() -> list[float]:
                agents = await connect(f"127.0.0.1:{match.group(1)}", AGENTS, 0)
                try:
                    return [await _round(agents, rules_file, make_docs(RULES, 20 + 10 * r)) for r in range(ROUNDS)]
                finally:
                    for agent in agents:
                        await agent.close()

            return statistics.median(asyncio.run(rounds()))
        finally:
            stop_process(proc)


def rows() -> list[dict[str, Any]]:
    baseline = _measure(route_rule_docs)
    value = _measure(istio_docs)
    ratio = value / baseline
    return [{"bench": "traffic", "metric": f"{RULES} VirtualServices + DestinationRules → {AGENTS} agents",
             "value": value, "unit": "s", "baseline": f"{RULES} services' routes as RouteRules",
             "baseline_value": baseline, "ratio": ratio, "target": f"<= {TARGET_RATIO:g}x",
             "ok": ratio <= TARGET_RATIO}]


if __name__ == "__main__":
    for row in rows():
        print(row)
