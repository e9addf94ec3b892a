"""kube-inject throughput: injecting a 5,000-document manifest vs a plain ruamel.yaml round trip.

The manifest is generated: per application a Deployment (comments, quoted values, env, probes,
resources), a Service and a ConfigMap with a block scalar, so a third of the documents are
injected and two thirds pass through. The baseline is what any comment-keeping tool must at
least do: ruamel.yaml round-trip load_all + dump_all of the same text, measured in the same run.
Set MESHBOX_BENCH_INJECT_DOCS for a quicker run.
"""

from __future__ import annotations

import io
import os
import time

from ruamel.yaml import YAML

from meshbox.injector.inject import InjectSettings
from meshbox.injector.manifest import inject_manifest

DOCS = int(os.environ.get("MESHBOX_BENCH_INJECT_DOCS", "5000"))
TARGET = 1.5


def _app(i: int) -> list[str]:
    team = f"team-{i % 7}"
    deployment = f"""# app {i}: deployment, service and config
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app-{i}
  namespace: {team}
  labels:
    app: app-{i}
    tier: "backend"
  annotations:
    owner: "{team}@example.com"
spec:
  replicas: 2
  selector:
    matchLabels:
      app: app-{i}
  template:
    metadata:
      labels:
        app: app-{i}
        version: v1
    spec:
      serviceAccountName: app-{i}
      containers:
      - name: app  # the workload
        image: registry.example.com/app-{i}:1.{i % 10}
        args: ["--port", "8080", "--verbose"]
        ports:
        - containerPort: 8080
          name: http
        env:
        - name: FEATURE_FLAG
          value: "on"
        - name: LOG_LEVEL
          value: info
        resources:
          requests:
            cpu: 100m
            memory: 128Mi
        readinessProbe:
          httpGet:
            path: /healthz
            port: 8080
"""
    service = f"""apiVersion: v1
kind: Service
metadata:
  name: app-{i}
  namespace: {team}
spec:
  selector:
    app: app-{i}
  ports:
  - name: http
    port: 80
    targetPort: 8080
"""
    config = f"""apiVersion: v1
kind: ConfigMap
metadata:
  name: app-{i}-config
  namespace: {team}
data:
  enabled: "yes"
  config.yaml: |
    server:
      port: 8080
    # a comment inside a block scalar
"""
    return [deployment, service, config]


def generate_manifest(documents: int) -> str:
    """A multi-document manifest of ``documents`` documents (Deployment, Service, ConfigMap, ...)."""
    docs: list[str] = []
    i = 0
    while len(docs) < documents:
        docs.extend(_app(i))
        i += 1
    return "---\n".join(docs[:documents])


def _round_trip(text: str) -> float:
    start = time.perf_counter()
    yaml = YAML()
    out = io.StringIO()
    yaml.dump_all(yaml.load_all(text), out)
    return time.perf_counter() - start


def _inject(text: str, settings: InjectSettings) -> float:
    start = time.perf_counter()
    result = inject_manifest(text, settings, source="bench.yaml")
    elapsed = time.perf_counter() - start
    injected = sum(1 for line in result.reports if line.endswith(" injected"))
    if injected != (DOCS + 2) // 3:
        raise RuntimeError(f"expected {(DOCS + 2) // 3} injected deployments, got {injected}")
    return elapsed


def rows() -> list[dict[str, object]]:
    text = generate_manifest(DOCS)
    settings = InjectSettings()
    baseline = _round_trip(text)
    value = _inject(text, settings)
    ratio = value / baseline
    return [{
        "bench": "injector",
        "metric": f"kube-inject of a {DOCS}-document manifest",
        "value": value,
        "unit": "s",
        "baseline": "ruamel.yaml round trip (load_all + dump_all)",
        "baseline_value": baseline,
        "ratio": ratio,
        "target": f"<= {TARGET}x",
        "ok": ratio <= TARGET,
    }]


if __name__ == "__main__":
    for row in rows():
        print(row)
