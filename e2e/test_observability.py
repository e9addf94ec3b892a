"""Observability on the local mesh after the tutorial's traffic: the cluster's own Prometheus scrapes
every injected pod, `meshctl proxy-status` / `proxy-config` read discovery and the proxies, and
`meshctl dashboard` draws the service-one → service-two edge with its numbers in headless chromium.

Set MESHBOX_SCREENSHOT=docs/dashboard.png to save the page as the docs show it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import need  # type: ignore[import-not-found]

PODS = ("CLIENT=$(meshctl local get pod -l app=service-one -o jsonpath='{.items[0].metadata.name}')",
        "SERVER=$(meshctl local get pod -l app=service-two -o jsonpath='{.items[0].metadata.name}')")
EDGE = ("default/service-one", "default/service-two")
# The tutorial's call, repeated in the client's app container: bounded in count (and so in time).
TRAFFIC = ("meshctl local exec ${CLIENT} -c app -- sh -c "
           "'for i in $(seq 1 150); do curl -s service-two:80 >/dev/null; sleep 0.1; done'")


@pytest.fixture(scope="module")
def traffic(mesh: Any) -> Iterator[Any]:
    """The tutorial's apps, injected and ready, with service-one calling service-two in the background."""
    mesh.sh("meshctl local apply -f <(meshctl kube-inject -f apps.yaml)")
    mesh.sh("meshctl local wait --timeout 60")
    load = subprocess.Popen(["bash", "-c", "\n".join([*PODS, TRAFFIC])], env=mesh.env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield mesh
    finally:
        if load.poll() is None:
            os.killpg(load.pid, 15)
        load.wait(timeout=30)
        mesh.sh("meshctl local delete -f apps.yaml")


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=15) as reply:
        return json.loads(reply.read())


@pytest.fixture(scope="module")
def dashboard(traffic: Any) -> Iterator[str]:
    """`meshctl dashboard` with no options: the local cluster's Prometheus."""
    proc = subprocess.Popen(["meshctl", "dashboard"], env=traffic.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("meshbox dashboard: http://127.0.0.1:"), (line, proc.stderr and proc.stderr.read())
        assert "prometheus/prometheus.sock" in line
        yield line.split()[2]
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _edge(url: str, timeout: float = 40) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    graph: Any = None
    while time.monotonic() < deadline:
        graph = _get_json(f"{url}api/graph?window=1m")
        for edge in graph["edges"]:
            if (edge["source"], edge["destination"]) == EDGE and edge["rps"] > 0:
                return {"graph": graph, "edge": edge}
        time.sleep(0.5)
    raise AssertionError(f"no {EDGE} edge with traffic within {timeout}s: {graph}")


def test_prometheus_scrapes_every_injected_pod_and_discovery(traffic: Any) -> None:
    sock = traffic.state / "prometheus" / "prometheus.sock"
    deadline = time.monotonic() + 20
    targets: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        out = subprocess.run(["curl", "-s", "--unix-socket", str(sock), "http://prometheus/api/v1/targets"],
                             capture_output=True, text=True, timeout=15, check=True).stdout
        targets = json.loads(out)["data"]["activeTargets"]
        if len(targets) == 3 and all(t["health"] == "up" for t in targets):
            break
        time.sleep(0.5)
    urls = sorted(t["scrapeUrl"] for t in targets)
    assert [t["health"] for t in targets] == ["up"] * 3, targets
    assert "http://127.0.0.1:15014/metrics" in urls
    assert sum(u.startswith("http://10.244.") and u.endswith(":15020/stats/prometheus") for u in urls) == 2, urls
    assert sorted(t["labels"].get("app", "") for t in targets) == ["", "service-one", "service-two"]


def test_dashboard_api_and_page_show_the_edge_with_its_numbers(dashboard: str, traffic: Any) -> None:
    found = _edge(dashboard)
    assert found["graph"]["nodes"] == [{"id": EDGE[0]}, {"id": EDGE[1]}]
    edge = found["edge"]
    assert 0 < edge["rps"] <= 12 and edge["error_rate"] == 0.0 and 0 < edge["p50_ms"] <= edge["p99_ms"]

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser_path, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    need(browser_path is not None and driver_path is not None,
         "needs Debian's chromium and chromium-driver (make bootstrap)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(browser_path)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1000,760", "--hide-scrollbars"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(executable_path=str(driver_path)), options=options)
    try:
        browser.get(dashboard)
        selector = f'g.edge[data-edge="{EDGE[0]}->{EDGE[1]}"]'
        drawn = WebDriverWait(browser, 20).until(lambda b: b.find_element(By.CSS_SELECTOR, selector))
        rate = drawn.find_element(By.CSS_SELECTOR, "text.edge-rate").text
        assert float(rate.split()[0]) > 0 and rate.endswith("0.0% 5xx"), rate
        assert drawn.find_element(By.CSS_SELECTOR, "text.edge-latency").text.startswith("p50 ")
        browser.find_element(By.CSS_SELECTOR, f'g.node[data-node="{EDGE[1]}"] rect').click()
        WebDriverWait(browser, 20).until(
            lambda b: len([p for p in b.find_elements(By.CSS_SELECTOR, ".chart polyline")
                           if p.get_attribute("points")]) >= 3)
        shot = os.environ.get("MESHBOX_SCREENSHOT")
        if shot:
            browser.save_screenshot(shot)
    finally:
        browser.quit()


def test_proxy_status_and_proxy_config_on_the_local_cluster(traffic: Any) -> None:
    status = traffic.sh("meshctl proxy-status")
    rows = [line.split() for line in status.splitlines()[1:]]
    assert len(rows) == 2 and all(row[2:6] == ["SYNCED"] * 4 and len(row) == 7 for row in rows), status
    endpoints = traffic.sh(*PODS, "meshctl proxy-config endpoints ${CLIENT}")
    rows = [line.split() for line in endpoints.splitlines()]
    assert ["outbound|80||service-two.default.svc.cluster.local", "default/service-two"] in [r[1:3] for r in rows]
    listeners = json.loads(traffic.sh(*PODS, "meshctl proxy-config listeners ${SERVER} -o json"))
    assert any(lis["direction"] == "INBOUND" and lis["port"] == 8080 for lis in listeners)
    missing = subprocess.run(["meshctl", "proxy-config", "clusters", "nobody"], env=traffic.env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and 'pods "nobody" not found' in missing.stderr


def test_the_servers_proxy_names_the_client_through_metadata_exchange(traffic: Any) -> None:
    """service-two's sidecar learns who called from service-one's sidecar (x-envoy-peer-metadata), so its
    reporter="destination" series name the source; PromQL against the cluster's own Prometheus."""
    sock = traffic.state / "prometheus" / "prometheus.sock"
    query = ('sum by (source_workload, source_workload_namespace, source_app, destination_workload) '
             '(istio_requests_total{reporter="destination",destination_workload="service-two"})')
    deadline = time.monotonic() + 40
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        out = subprocess.run(["curl", "-s", "--unix-socket", str(sock), "-G", "http://prometheus/api/v1/query",
                              "--data-urlencode", f"query={query}"],
                             capture_output=True, text=True, timeout=15, check=True).stdout
        result = json.loads(out)["data"]["result"]
        if result:
            break
        time.sleep(0.5)
    assert [r["metric"] for r in result] == [{"source_workload": "service-one", "source_workload_namespace": "default",
                                              "source_app": "service-one", "destination_workload": "service-two"}]
    assert float(result[0]["value"][1]) > 0
