"""`meshctl dashboard` against a real Prometheus scraping a real proxy: the JSON API, its errors, and the
page in headless chromium (selenium + chromium-driver).

One module-wide mesh: an HTTP backend standing for service-two, a meshbox-proxy standing for service-one's
sidecar (its endpoint carries service-two's workload, as discovery sends it), Prometheus scraping the proxy
every second, and a bounded background load (some requests answered 503) so rates have samples to work on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import PrometheusRun, free_port, need, start_prometheus

EDGE = ("default/service-one", "default/service-two")
VENV_BIN = Path(sys.executable).parent


class _Backend(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 503 if self.path.startswith("/fail") else 200
        body = b"service-two\n"
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _proxy_config(listen: int, backend: int) -> str:
    cluster = "outbound|80||service-two.default.svc.cluster.local"
    return f"""
listeners:
- {{name: out, direction: OUTBOUND, address: 127.0.0.1, port: {listen}, protocol: HTTP, route_config: "80", bind: true}}
route_configs:
- name: "80"
  virtual_hosts:
  - {{name: two, domains: ["*"], routes: [{{clusters: [{{cluster: "{cluster}", weight: 100}}]}}]}}
clusters:
- {{name: "{cluster}", service: service-two.default.svc.cluster.local}}
endpoints:
- cluster_name: "{cluster}"
  endpoints:
  - {{address: 127.0.0.1, port: {backend}, workload: {{name: service-two, namespace: default, app: service-two}}}}
"""


class Load(threading.Thread):
    """GETs through the proxy every 50 ms (every fifth one answered 503) until stopped or 120 s passed."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stopped = threading.Event()
        self.sent = 0
        self.failures: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stopped.is_set() and time.monotonic() < deadline and self.sent < 5000:
            path = "/fail" if self.sent % 5 == 4 else "/"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5).read()
            except urllib.error.HTTPError:
                pass
            except OSError as exc:
                self.failures.append(str(exc))
            self.sent += 1
            self.stopped.wait(0.05)


def _wait_ready(admin: int, proxy: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proxy.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"proxy not ready: {log.read_text()}")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("dashboard")
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    listen, admin = free_port(), free_port()
    config = tmp / "proxy.yaml"
    config.write_text(_proxy_config(listen, backend.server_address[1]))
    proxy = subprocess.Popen(
        [sys.executable, "-m", "meshbox.proxy", "--config", str(config), "--admin-port", str(admin),
         "--outbound-port", "0"], stdout=subprocess.DEVNULL, stderr=(tmp / "proxy.err").open("wb"),
        env={**os.environ, "POD_NAME": "service-one-5f7b9c8d4-x2x9z", "POD_NAMESPACE": "default"})
    prometheus: PrometheusRun | None = None
    load = Load(listen)
    try:
        _wait_ready(admin, proxy, tmp / "proxy.err")
        prometheus = start_prometheus(tmp / "prometheus", f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
- job_name: meshbox-proxy
  metrics_path: /stats/prometheus
  static_configs: [{{targets: ["127.0.0.1:{admin}"], labels: {{namespace: default, pod: service-one}}}}]
""")
        load.start()
        yield {"prometheus": prometheus.url, "load": load}
        assert load.failures == [], load.failures[:3]
    finally:
        load.stopped.set()
        load.join(timeout=10)
        if prometheus is not None:
            prometheus.stop()
        proxy.terminate()
        proxy.wait(timeout=15)
        backend.shutdown()
        backend.server_close()


@pytest.fixture(scope="module")
def dashboard(mesh: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``meshctl dashboard --prometheus URL`` as a real process; yields the URL it printed."""
    proc = subprocess.Popen([str(VENV_BIN / "meshctl"), "dashboard", "--prometheus", mesh["prometheus"]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("meshbox dashboard: http://127.0.0.1:"), (line, proc.stderr and proc.stderr.read())
        yield line.split()[2]
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=15) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _edge(dashboard: str, timeout: float = 30) -> dict[str, Any]:
    """The service-one → service-two edge once Prometheus has two scrapes with traffic between them."""
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        status, body = _get(f"{dashboard}api/graph?window=1m")
        assert status == 200, body
        for edge in body["edges"]:
            if (edge["source"], edge["destination"]) == EDGE and edge["rps"] > 0 and edge["error_rate"] > 0:
                return {"graph": body, "edge": edge}
        time.sleep(0.5)
    raise AssertionError(f"no {EDGE} edge with traffic within {timeout}s: {body}")


def test_graph_api_has_the_edge_with_its_numbers(dashboard: str) -> None:
    found = _edge(dashboard)
    assert found["graph"]["nodes"] == [{"id": EDGE[0]}, {"id": EDGE[1]}]
    edge = found["edge"]
    assert set(edge) == {"source", "destination", "rps", "error_rate", "p50_ms", "p99_ms"}
    # 20 requests/s are offered at most (one every 50 ms plus the request's own time).
    assert 0 < edge["rps"] <= 21
    assert 0.05 <= edge["error_rate"] <= 0.4  # one request in five answered 503
    assert 0 < edge["p50_ms"] <= edge["p99_ms"] < 5000


def test_workload_api_gives_golden_signal_series(dashboard: str) -> None:
    _edge(dashboard)
    status, body = _get(f"{dashboard}api/workload?id=default/service-one&window=1m&minutes=5")
    assert status == 200, body
    sent = body["series"]["outbound"]
    assert any(v and v > 0 for _, v in sent["rps"]) and any(v and v > 0 for _, v in sent["p99_ms"])
    assert body["series"]["inbound"]["rps"] == []  # nothing called service-one through a proxy


@pytest.mark.parametrize(("query", "needle"), [
    ("api/graph?window=forever", "window 'forever'"),
    ("api/graph?window=1m)%20or%20vector(1", "window"),
    ("api/workload?id=default", "<namespace>/<workload>"),
    ("api/workload?id=default/x%22y", "<namespace>/<workload>"),
    ("api/workload?id=default/x&minutes=lots", "minutes 'lots'"),
])
def test_bad_parameters_are_400_naming_them(dashboard: str, query: str, needle: str) -> None:
    status, body = _get(dashboard + query)
    assert status == 400 and needle in body["error"]


def test_prometheus_down_is_a_502_saying_so(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([str(VENV_BIN / "meshctl"), "dashboard", "--prometheus", f"http://127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[2]
        status, body = _get(f"{url}api/graph")
        assert status == 502 and f"cannot reach Prometheus at http://127.0.0.1:{port}" in body["error"]
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    assert "warning: cannot reach Prometheus" in (proc.stderr.read() if proc.stderr else "")


def chromium(width: int = 1100, height: int = 700) -> Any:
    """Headless Debian chromium driven through chromium-driver (nothing downloaded: both paths given)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    need(browser is not None and driver is not None, "needs Debian's chromium and chromium-driver (make bootstrap)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(browser)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=str(driver)), options=options)


def test_the_page_draws_the_edge_with_its_numbers_in_chromium(dashboard: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _edge(dashboard)
    browser = chromium()
    try:
        browser.get(dashboard)
        selector = f'g.edge[data-edge="{EDGE[0]}->{EDGE[1]}"]'
        edge = WebDriverWait(browser, 20).until(lambda b: b.find_element(By.CSS_SELECTOR, selector))
        rate = edge.find_element(By.CSS_SELECTOR, "text.edge-rate").text
        latency = edge.find_element(By.CSS_SELECTOR, "text.edge-latency").text
        assert " rps · " in rate and "% 5xx" in rate and float(rate.split()[0]) > 0
        assert latency.startswith("p50 ") and " ms · p99 " in latency
        nodes = {n.get_attribute("data-node") for n in browser.find_elements(By.CSS_SELECTOR, "g.node")}
        assert nodes == set(EDGE)
        browser.find_element(By.CSS_SELECTOR, f'g.node[data-node="{EDGE[0]}"] rect').click()
        WebDriverWait(browser, 20).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".chart polyline")) >= 3)
        assert "default/service-one: golden signals" in browser.find_element(By.ID, "workload-title").text
        assert not browser.find_element(By.ID, "error").is_displayed()
    finally:
        browser.quit()


def test_a_taken_port_and_a_bad_prometheus_address_are_clear_errors() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        taken = subprocess.run([str(VENV_BIN / "meshctl"), "dashboard", "--port", str(port), "--prometheus",
                                "http://127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert taken.returncode == 1 and f"cannot serve the dashboard on 127.0.0.1:{port}" in taken.stderr
    bad = subprocess.run([str(VENV_BIN / "meshctl"), "dashboard", "--prometheus", "prometheus:9090"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "give http(s)://HOST:PORT or unix:PATH" in bad.stderr


def test_without_prometheus_and_without_a_local_cluster_it_says_what_to_do(tmp_path: Path) -> None:
    env = {**os.environ, "MESHBOX_LOCAL_STATE": str(tmp_path / "none")}
    result = subprocess.run([str(VENV_BIN / "meshctl"), "dashboard"], capture_output=True, text=True, timeout=60,
                            env=env)
    assert result.returncode == 1 and f"no local cluster in {tmp_path / 'none'}" in result.stderr
    assert not (tmp_path / "none").exists()
