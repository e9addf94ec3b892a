"""The local cluster's Prometheus: Debian's ``prometheus`` in the node namespace, scraping every pod that
carries the ``prometheus.io/*`` annotations (injection adds them: the agent's merged metrics on 15020) and
the discovery server, through file service discovery this module writes whenever pods change.

The node namespace has no link to the host, so Prometheus' port is bridged to a Unix socket in the state
directory (``socat``, in the node namespace); ``meshctl dashboard`` reads Prometheus through it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from meshbox.api.files import write_atomically
from meshbox.cluster import host
from meshbox.cluster.host import ProcessRef
from meshbox.cluster.model import PodRecord

PORT = 9090
SCRAPE_INTERVAL = "2s"  # a demo mesh of a few pods: fresh graphs matter more than the scrape cost
SCRAPE = "prometheus.io/scrape"
SCRAPE_PORT = "prometheus.io/port"
SCRAPE_PATH = "prometheus.io/path"
READY_TIMEOUT_S = 30.0


class ScraperError(RuntimeError):
    """Prometheus could not be started; the message says why (and where its log is)."""


def scrape_targets(pods: Iterable[PodRecord]) -> list[dict[str, Any]]:
    """File-discovery target groups for the running pods whose annotations ask to be scraped (pure)."""
    groups = []
    for rec in pods:
        annotations = rec.body["metadata"].get("annotations") or {}
        if rec.phase != "Running" or annotations.get(SCRAPE) != "true" or not annotations.get(SCRAPE_PORT):
            continue
        labels = {"namespace": rec.namespace, "pod": rec.name,
                  "__metrics_path__": annotations.get(SCRAPE_PATH) or "/metrics"}
        app = rec.labels.get("app")
        if app:
            labels["app"] = app
        groups.append({"targets": [f"{rec.ip}:{annotations[SCRAPE_PORT]}"], "labels": labels})
    return sorted(groups, key=lambda g: (g["labels"]["namespace"], g["labels"]["pod"]))


def config_text(targets_file: Path, discovery_http_port: int) -> str:
    """prometheus.yml: the annotated pods (file discovery) and the discovery server's /metrics."""
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            {"job_name": "pods", "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "5s"}]},
            {"job_name": "meshbox-discovery",
             "static_configs": [{"targets": [f"127.0.0.1:{discovery_http_port}"]}]},
        ],
    }
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML, and needs no YAML library here


class MetricsScraper:
    """The Prometheus of one cluster, under ``<state>/prometheus/``."""

    def __init__(self, state_root: Path, node_netns: str) -> None:
        self.dir = state_root / "prometheus"
        self.node = node_netns
        self.targets = self.dir / "targets.json"
        self.socket = self.dir / "prometheus.sock"
        self.log = self.dir / "prometheus.log"

    @property
    def address(self) -> str:
        """Where ``meshctl dashboard --prometheus`` reaches it."""
        return f"unix:{self.socket}"

    def write_targets(self, pods: Iterable[PodRecord]) -> None:
        """Point Prometheus at the pods as they are now (it rereads the file on change)."""
        if self.dir.is_dir():
            write_atomically(self.targets, (json.dumps(scrape_targets(pods), indent=2) + "\n").encode())

    def start(self, pods: Iterable[PodRecord], discovery_http_port: int) -> list[ProcessRef]:
        """Start Prometheus and its socket bridge; returns both processes (to record before waiting)."""
        binary, socat = shutil.which("prometheus"), shutil.which("socat")
        if binary is None or socat is None:
            raise ScraperError("prometheus and socat are needed (make bootstrap installs them; "
                               "`meshctl local up --without-prometheus` goes without)")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.write_targets(pods)
        write_atomically(self.dir / "prometheus.yml", config_text(self.targets, discovery_http_port).encode())
        self.socket.unlink(missing_ok=True)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        prometheus = host.spawn(["ip", "netns", "exec", self.node, binary,
                                 f"--config.file={self.dir / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={self.dir / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{PORT}", "--log.level=warn"],
                                log=self.log, env=env)
        bridge = host.spawn(["ip", "netns", "exec", self.node, socat,
                             f"UNIX-LISTEN:{self.socket},fork,mode=600", f"TCP:127.0.0.1:{PORT}"],
                            log=self.dir / "socat.log", env=env)
        return [prometheus, bridge]

    def wait_ready(self, refs: list[ProcessRef]) -> None:
        """Until Prometheus answers /-/ready in the node namespace and the socket exists."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not all(host.alive(ref) for ref in refs):
                raise ScraperError(f"Prometheus exited at start; its log ({self.log}):\n{_tail(self.log)}")
            if self.socket.exists() and host.http_status(self.node, f"http://127.0.0.1:{PORT}/-/ready") == 200:
                return
            time.sleep(0.2)
        raise ScraperError(f"Prometheus not ready after {READY_TIMEOUT_S:.0f}s; its log ({self.log}):\n"
                           f"{_tail(self.log)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
