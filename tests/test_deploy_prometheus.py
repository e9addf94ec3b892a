"""deploy/addons/prometheus.yaml: valid Kubernetes objects, a config promtool accepts, and pod relabelling
that a real Prometheus turns into the scrape of the injected prometheus.io/* annotations.

No Kubernetes API server runs here, and Debian builds Prometheus without Kubernetes service discovery: the
jobs' ``kubernetes_sd_configs`` are swapped for file service discovery carrying the same
``__meta_kubernetes_*`` labels the API server would give a pod; the relabelling rules themselves are the
file's, unchanged. The ``kubernetes_sd_configs`` blocks are therefore checked by nothing here.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
from ruamel.yaml import YAML

from conftest import need, start_prometheus
from meshbox.injector.inject import InjectSettings, inject

ADDON = Path(__file__).resolve().parent.parent / "deploy" / "addons" / "prometheus.yaml"


def _objects() -> list[dict[str, Any]]:
    return [d for d in YAML(typ="safe").load_all(ADDON.read_text()) if d is not None]


def _config() -> dict[str, Any]:
    (cm,) = [o for o in _objects() if o["kind"] == "ConfigMap"]
    config: dict[str, Any] = YAML(typ="safe").load(cm["data"]["prometheus.yml"])
    return config


def test_objects_are_valid_kubernetes() -> None:
    objects = _objects()
    assert {o["kind"] for o in objects} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap",
                                            "Deployment", "Service"}
    for obj in objects:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def _without_kubernetes_sd(config: dict[str, Any], files: Path) -> dict[str, Any]:
    """The config with each job's Kubernetes service discovery swapped for file discovery (Debian builds
    Prometheus without Kubernetes discovery; everything else of the job is kept)."""
    for job in config["scrape_configs"]:
        roles = [sd["role"] for sd in job.pop("kubernetes_sd_configs")]
        assert roles in (["pod"], ["endpoints"]), roles
        job["file_sd_configs"] = [{"files": [str(files)]}]
    return config


def _dump(config: dict[str, Any]) -> str:
    text = io.StringIO()
    YAML(typ="safe").dump(config, text)
    return text.getvalue()


def test_promtool_accepts_the_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    need(promtool is not None, "needs promtool (Debian's prometheus package; make bootstrap installs it)")
    path = tmp_path / "prometheus.yml"
    path.write_text(_dump(_without_kubernetes_sd(_config(), tmp_path / "targets.json")))
    (tmp_path / "targets.json").write_text("[]")
    result = subprocess.run([str(promtool), "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"meshbox_agent_config_applied 1\n" if self.path == "/stats/prometheus" else b""
        self.send_response(200 if body else 404)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _pod_annotations() -> dict[str, str]:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "service-two-v1", "namespace": "default"},
           "spec": {"containers": [{"name": "app", "image": "app:1"}]}}
    annotations: dict[str, str] = inject(pod, InjectSettings()).obj["metadata"]["annotations"]
    return annotations


def test_the_pod_relabelling_scrapes_what_injection_annotates(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    annotations = _pod_annotations()
    assert annotations["prometheus.io/scrape"] == "true"
    meta = {f"__meta_kubernetes_pod_annotation_{k.replace('.', '_').replace('/', '_')}": v
            for k, v in annotations.items() if k.startswith("prometheus.io/")}
    # The injected port is the agent's 15020; this test's stand-in agent listens on a free port instead.
    meta["__meta_kubernetes_pod_annotation_prometheus_io_port"] = str(server.server_address[1])
    labels = {**meta, "__meta_kubernetes_namespace": "default", "__meta_kubernetes_pod_name": "service-two-v1",
              "__meta_kubernetes_pod_phase": "Running", "__meta_kubernetes_pod_label_app": "service-two"}
    unannotated = {"__meta_kubernetes_namespace": "default", "__meta_kubernetes_pod_name": "plain",
                   "__meta_kubernetes_pod_phase": "Running"}
    (tmp_path / "pods.json").write_text(json.dumps([{"targets": ["127.0.0.1:8080"], "labels": labels},
                                                    {"targets": ["127.0.0.2:8080"], "labels": unannotated}]))
    config = _without_kubernetes_sd(_config(), tmp_path / "pods.json")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "kubernetes-pods"]
    job["scrape_interval"] = "1s"
    config["scrape_configs"] = [job]
    prometheus = start_prometheus(tmp_path / "prometheus", _dump(config))
    try:
        deadline = time.monotonic() + 20
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"{prometheus.url}/api/v1/targets", timeout=5) as reply:
                targets = json.loads(reply.read())["data"]["activeTargets"]
            if targets and targets[0]["health"] == "up":
                break
            time.sleep(0.2)
        assert len(targets) == 1, targets  # the pod without annotations is not scraped
        target = targets[0]
        assert target["scrapeUrl"] == f"http://127.0.0.1:{server.server_address[1]}/stats/prometheus"
        assert target["health"] == "up", target
        assert {k: target["labels"][k] for k in ("namespace", "pod", "app")} == {
            "namespace": "default", "pod": "service-two-v1", "app": "service-two"}
    finally:
        prometheus.stop()
        server.shutdown()
        server.server_close()
