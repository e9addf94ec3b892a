"""The local cluster's Prometheus config and scrape targets: which pods are scraped, where, with which
labels, and a config Debian's promtool accepts. (Starting it in the node namespace is covered by
e2e/test_observability.py and the cluster tests, whose `up` starts it.)"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from conftest import need
from meshbox.cluster.metrics_scraper import MetricsScraper, config_text, scrape_targets
from meshbox.cluster.model import PodRecord


def _rec(name: str, ip: str, annotations: dict[str, str], phase: str = "Running") -> PodRecord:
    body = {"metadata": {"name": name, "namespace": "default", "labels": {"app": name.split("-")[0]},
                         "annotations": annotations}}
    return PodRecord(body, ip, f"mbx-default-{name}", 1, phase=phase)


INJECTED = {"prometheus.io/scrape": "true", "prometheus.io/port": "15020", "prometheus.io/path": "/stats/prometheus"}


def test_only_running_pods_that_ask_are_scraped_at_their_annotated_port_and_path() -> None:
    pods = [
        _rec("web-a", "10.244.0.3", INJECTED),
        _rec("app-b", "10.244.0.2", {"prometheus.io/scrape": "true", "prometheus.io/port": "9100"}),
        _rec("plain-c", "10.244.0.4", {}),
        _rec("off-d", "10.244.0.5", {**INJECTED, "prometheus.io/scrape": "false"}),
        _rec("dead-e", "10.244.0.6", INJECTED, phase="Init:Error"),
    ]
    assert scrape_targets(pods) == [
        {"targets": ["10.244.0.2:9100"], "labels": {"namespace": "default", "pod": "app-b",
                                                    "__metrics_path__": "/metrics", "app": "app"}},
        {"targets": ["10.244.0.3:15020"], "labels": {"namespace": "default", "pod": "web-a",
                                                     "__metrics_path__": "/stats/prometheus", "app": "web"}},
    ]


def test_targets_are_written_only_once_the_scraper_has_its_directory(tmp_path: Path) -> None:
    scraper = MetricsScraper(tmp_path, "x-node")
    scraper.write_targets([_rec("web-a", "10.244.0.3", INJECTED)])
    assert not scraper.targets.exists()  # no Prometheus (up --without-prometheus): nothing to point
    scraper.dir.mkdir()
    scraper.write_targets([_rec("web-a", "10.244.0.3", INJECTED)])
    assert json.loads(scraper.targets.read_text())[0]["targets"] == ["10.244.0.3:15020"]
    assert scraper.address == f"unix:{tmp_path}/prometheus/prometheus.sock"


def test_promtool_accepts_the_config(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    need(promtool is not None, "needs promtool (Debian's prometheus package; make bootstrap installs it)")
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps(scrape_targets([_rec("web-a", "10.244.0.3", INJECTED)])))
    config = tmp_path / "prometheus.yml"
    config.write_text(config_text(targets, 15014))
    result = subprocess.run([str(promtool), "check", "config", str(config)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
