"""The discovery benchmark of issue 6: one route change fanned out to 1,000 connected agents.

A real ``meshbox-discovery`` process serves a registry directory (the tutorial's two services,
plus a few more) on loopback. This process runs N lightweight agents: grpc.aio streams, one
channel (TCP connection) each, that subscribe to the four types and ACK every response at once.
Each agent's Node carries labels app=service-two, so every agent also gets its own inbound half.

A round writes a RouteRule with new weights into the directory (atomic rename) and measures, per
agent, the time from the write until the agent has ACKed the new routes. That includes the
server noticing the file (poll interval 50 ms), the debounce (50 ms), rebuilding, and the fan-out.

Baseline, measured in the same run: the same change with a single agent connected, i.e. the
fixed cost of one change (poll + debounce + rebuild + one push). The ratio p99(N)/baseline shows
what fanning out to N streams adds. The target is the issue's absolute one: p99 <= 1 s.
Also reported: the server's RSS with N streams vs with 1 (target <= 3x), and its CPU seconds per
change with N streams vs 1 (target <= 1 s: more could not meet the latency target anyway).
Environment: MESHBOX_BENCH_DISCOVERY_AGENTS (default 1000), MESHBOX_BENCH_DISCOVERY_ROUNDS (default 3).
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from discovery_agents import ROUTE, Agent, connect
from proc_sampler import tree_cpu_seconds, tree_rss_bytes
from ruamel.yaml import YAML
from server_processes import stop_process

AGENTS = int(os.environ.get("MESHBOX_BENCH_DISCOVERY_AGENTS", "1000"))
ROUNDS = int(os.environ.get("MESHBOX_BENCH_DISCOVERY_ROUNDS", "3"))
TARGET_P99_S = 1.0
# What 1,000 streams may add to the server's memory: its RSS at most this many times that with 1 stream.
RSS_RATIO_TARGET = 3.0
ROUND_TIMEOUT_S = 20.0
STARTED = re.compile(r"serving discovery gRPC on 127\.0\.0\.1:(\d+)")


def _registry_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for i, name in enumerate(["service-one", "service-two", "ratings", "reviews", "details", "productpage"]):
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
                     "spec": {"clusterIP": f"10.96.0.{10 + i}", "selector": {"app": name},
                              "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
        for version in ("v1", "v2"):
            docs.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": f"{name}-{version}", "namespace": "default",
                                      "labels": {"app": name, "version": version}},
                         "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]},
                         "status": {"podIP": f"10.1.{i}.{1 if version == 'v1' else 2}", "phase": "Running"}})
    return docs


def _write(path: Path, docs: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as fh:
        YAML(typ="safe").dump_all(docs, fh)
    tmp.replace(path)


def _rule(v1_weight: int) -> dict[str, Any]:
    return {"apiVersion": "routing.meshbox.io/v1alpha1", "kind": "RouteRule",
            "metadata": {"name": "bench-split", "namespace": "default"},
            "spec": {"destination": "service-two", "route": [{"labels": {"version": "v1"}, "weight": v1_weight},
                                                             {"labels": {"version": "v2"}, "weight": 100 - v1_weight}]}}


async def _change_round(agents: list[Agent], rule_file: Path, weight: int) -> list[float]:
    """Write a new rule; return each agent's seconds from the write to its ACK of the new routes."""
    before = {id(a): a.versions[ROUTE] for a in agents}
    start = time.monotonic()
    _write(rule_file, [_rule(weight)])
    deadline = start + ROUND_TIMEOUT_S
    while any(a.versions[ROUTE] == before[id(a)] for a in agents):
        if time.monotonic() > deadline:
            late = sum(1 for a in agents if a.versions[ROUTE] == before[id(a)])
            raise TimeoutError(f"{late} of {len(agents)} agents got no new routes within {ROUND_TIMEOUT_S}s")
        await asyncio.sleep(0.005)
    return [a.route_acked_at - start for a in agents]


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


async def _measure(target: str, server_pid: int, rule_file: Path) -> dict[str, float]:
    results: dict[str, float] = {}
    solo = await connect(target, 1, 0)
    await asyncio.sleep(0.5)
    rss_one = tree_rss_bytes(server_pid)
    cpu = tree_cpu_seconds(server_pid)
    baseline = [(await _change_round(solo, rule_file, 10 + r))[0] for r in range(ROUNDS)]
    results["cpu_one"] = (tree_cpu_seconds(server_pid) - cpu) / ROUNDS
    results["baseline"] = statistics.median(baseline)
    results["rss_one"] = rss_one
    connect_start = time.monotonic()
    crowd = solo + await connect(target, AGENTS - 1, 1)
    results["connect_all"] = time.monotonic() - connect_start
    await asyncio.sleep(1.0)
    results["rss_all"] = tree_rss_bytes(server_pid)
    cpu = tree_cpu_seconds(server_pid)
    latencies: list[float] = []
    for r in range(ROUNDS):
        latencies.extend(await _change_round(crowd, rule_file, 50 + r))
        await asyncio.sleep(0.3)
    results["cpu_all"] = (tree_cpu_seconds(server_pid) - cpu) / ROUNDS
    results["p50"] = _percentile(latencies, 50)
    results["p99"] = _percentile(latencies, 99)
    results["max"] = max(latencies)
    for agent in crowd:
        await agent.close()
    return results


def _start_server(registry_dir: Path) -> tuple[subprocess.Popen[str], str]:
    binary = Path(sys.executable).with_name("meshbox-discovery")
    proc = subprocess.Popen(
        [str(binary), "--plaintext", "--registry-dir", str(registry_dir), "--listen-address", "127.0.0.1",
         "--grpc-port", "0", "--http-port", "0", "--poll-interval", "0.05", "--debounce", "0.05"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    # The start line is the only thing logged at info when the registry is valid.
    line = proc.stderr.readline()
    match = STARTED.search(line)
    if not match:
        proc.kill()
        raise RuntimeError(f"meshbox-discovery did not start: {line}{proc.stderr.read()}")
    return proc, f"127.0.0.1:{match.group(1)}"


def rows() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="meshbox-bench-discovery-") as tmp:
        registry_dir = Path(tmp)
        _write(registry_dir / "mesh.yaml", _registry_docs())
        rule_file = registry_dir / "rule.yaml"
        _write(rule_file, [_rule(1)])
        proc, target = _start_server(registry_dir)
        try:
            r = asyncio.run(_measure(target, proc.pid, rule_file))
        finally:
            stop_process(proc)
    n = AGENTS
    base = r["baseline"]
    rss_all_mb, rss_one_mb = r["rss_all"] / 2**20, r["rss_one"] / 2**20
    cpu_one = max(r["cpu_one"], 0.01)  # /proc counts in 10 ms ticks
    return [
        {"bench": "discovery", "metric": f"route change → {n} agents ACKed, p99", "value": r["p99"], "unit": "s",
         "baseline": "same change, 1 agent", "baseline_value": base, "ratio": r["p99"] / base,
         "target": f"p99 <= {TARGET_P99_S:g} s", "ok": r["p99"] <= TARGET_P99_S},
        {"bench": "discovery", "metric": f"route change → {n} agents ACKed, p50", "value": r["p50"], "unit": "s",
         "baseline": "same change, 1 agent", "baseline_value": base, "ratio": r["p50"] / base,
         "target": f"<= {TARGET_P99_S:g} s", "ok": r["p50"] <= TARGET_P99_S},
        {"bench": "discovery", "metric": f"server RSS with {n} streams", "value": rss_all_mb, "unit": "MiB",
         "baseline": "server RSS with 1 stream", "baseline_value": rss_one_mb, "ratio": rss_all_mb / rss_one_mb,
         "target": f"<= {RSS_RATIO_TARGET:g}x", "ok": rss_all_mb / rss_one_mb <= RSS_RATIO_TARGET},
        {"bench": "discovery", "metric": f"server CPU per change, {n} streams", "value": r["cpu_all"], "unit": "s",
         "baseline": "server CPU per change, 1 stream", "baseline_value": cpu_one,
         "ratio": r["cpu_all"] / cpu_one, "target": f"<= {TARGET_P99_S:g} s", "ok": r["cpu_all"] <= TARGET_P99_S},
    ]


if __name__ == "__main__":
    for row in rows():
        print(row)
