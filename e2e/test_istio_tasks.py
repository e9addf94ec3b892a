"""Istio's traffic-management tasks replayed on the local mesh, with the YAML as Istio's docs write it
(e2e/istio/) and echoservers standing in for BookInfo's services (e2e/bookinfo.yaml). Needs root.

Request routing (all to v1, then by header), traffic shifting (50/50, then all to v3), fault
injection (delay and abort), request timeouts, retries, circuit breaking and outlier detection run
as in Istio. Stand-ins where echoservers cannot play their part: the slow upstream of the timeout
task is a listener in the client pod that accepts and never answers (BookInfo's reviews would call
a delayed ratings); the retries task routes a ServiceEntry to one endpoint that refuses connections
and one that serves; circuit breaking needs an upstream slow enough for requests to pile up (an
HTTP server in the client pod answering after 1 s, where Istio's task loads httpbin with fortio),
and outlier detection an endpoint that answers 500 (a server in the client pod, beside a reviews
pod). Mirroring sends v1's traffic to v2 as well (e2e/istio/mirror.yaml, the mirroring task's
rule written for reviews): v2's proxy logs every request as `reviews-shadow`, the client gets v1's
answers only. A VirtualService's redirect, rewrite and header operations and a RouteRule's local
rate limit (429 RL) apply to ServiceEntries in front of an echoserver; a ServiceEntry without addresses
is picked by Host on the client's port-80 egress listener. A field the proxy does not
implement yet (corsPolicy) is refused with the field named, and nothing changes. Last, the route
rule of the seed's time (config.istio.io/v1alpha2) routes reviews.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
CLIENT = "CLIENT=$(meshctl local get pod -l app=productpage -o jsonpath='{.items[0].metadata.name}')"
VERSIONS = ("v1", "v2", "v3")
HANG_PORT = 9999  # the stand-in slow upstream, on 127.0.0.1 in the client pod
HANG = ("import socket, time\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('127.0.0.1', {HANG_PORT})); s.listen(64); held = []\n"
        "end = time.monotonic() + 90\n"
        "s.settimeout(1)\n"
        "while time.monotonic() < end:\n"
        "    try:\n"
        "        held.append(s.accept()[0])\n"
        "    except OSError:\n"
        "        pass\n")
# A stand-in upstream in the client pod: answers every GET with STATUS after DELAY seconds (90 s at most).
STAND_IN = ("import http.server, threading, time\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    protocol_version = 'HTTP/1.1'\n"
            "    def do_GET(self):\n"
            "        time.sleep({delay})\n"
            "        self.send_response({status})\n"
            "        self.send_header('content-length', '8')\n"
            "        self.end_headers()\n"
            "        self.wfile.write(b'stand-in')\n"
            "    def log_message(self, *args):\n"
            "        pass\n"
            "server = http.server.ThreadingHTTPServer(('127.0.0.1', {port}), H)\n"
            "server.daemon_threads = True\n"
            "threading.Timer(90, server.shutdown).start()\n"
            "server.serve_forever()\n")
SERVICE_ENTRY = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
spec:
  hosts:
  - {name}.example.com
  addresses:
  - {address}
  ports:
  - number: 80
    name: http
    protocol: HTTP
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints:
{endpoints}
"""


@pytest.fixture(scope="module")
def bookinfo(mesh: Any) -> Any:
    """The mesh with bookinfo.yaml injected and applied, every pod ready."""
    mesh.sh("meshctl local apply -f <(meshctl kube-inject -f bookinfo.yaml)")
    mesh.sh("meshctl local wait --timeout 90", timeout=150)
    return mesh


def _curl(mesh: Any, target: str, count: int, *flags: str, check: bool = True) -> str:
    """``count`` requests from productpage's app container, in one exec; curl's output."""
    args = " ".join(flags)
    return mesh.sh(CLIENT, f"meshctl local exec ${{CLIENT}} -c productpage -- sh -c "
                           f"'for i in $(seq {count}); do curl -s -m 5 {args} {target}; done'", check=check)


def _ids(mesh: Any, count: int, *flags: str) -> list[str]:
    out = _curl(mesh, "reviews:9080", count, *flags)
    return re.findall(rf"x-request-id=({UUID})", out)


def _landed(mesh: Any, ids: list[str]) -> dict[str, int]:
    """How many of ``ids`` each reviews version's proxy logged on its inbound side."""
    counts = {}
    for version in VERSIONS:
        log = mesh.sh(f"meshctl local logs $(meshctl local get pod -l app=reviews,version={version} "
                      "-o jsonpath='{.items[0].metadata.name}') proxy")
        counts[version] = sum(1 for i in ids if f'"{i}"' in log)
    return counts


def _until(mesh: Any, want: dict[str, int], *flags: str, tries: int = 20) -> dict[str, int]:
    """Batches of 10 requests until one lands exactly as ``want`` (config takes a moment to reach proxies)."""
    seen: dict[str, int] = {}
    for _ in range(tries):
        ids = _ids(mesh, 10, *flags)
        assert len(ids) == 10
        seen = _landed(mesh, ids)
        if seen == want:
            return seen
    return seen


def _apply(mesh: Any, path: str | Path) -> str:
    return mesh.sh(f"meshctl local apply -f {path}")


def _codes(mesh: Any, target: str, count: int, *flags: str) -> list[str]:
    return _curl(mesh, target, count, "-o /dev/null", "-w \"%{http_code}\\n\"", *flags).split()


def _codes_until(mesh: Any, target: str, want: set[str], *flags: str, tries: int = 20) -> list[str]:
    codes: list[str] = []
    for _ in range(tries):
        codes = _codes(mesh, target, 10, *flags)
        if set(codes) == want:
            return codes
        time.sleep(0.2)
    return codes


ALL_V1 = {"v1": 10, "v2": 0, "v3": 0}
JASON = "-H \"end-user: jason\""


def test_request_routing(bookinfo: Any) -> None:
    out = _apply(bookinfo, "istio/destination-rule-all.yaml")
    assert "destinationrule.networking.istio.io/reviews created" in out
    _apply(bookinfo, "istio/virtual-service-all-v1.yaml")
    assert _until(bookinfo, ALL_V1) == ALL_V1

    assert "virtualservice.networking.istio.io/reviews configured" in _apply(
        bookinfo, "istio/virtual-service-reviews-test-v2.yaml")
    assert _until(bookinfo, {"v1": 0, "v2": 10, "v3": 0}, JASON) == {"v1": 0, "v2": 10, "v3": 0}
    assert _landed(bookinfo, _ids(bookinfo, 10)) == ALL_V1  # everyone else still on v1
    listed = bookinfo.sh("meshctl local get virtualservices").splitlines()
    assert listed[0].split() == ["NAME", "GATEWAYS", "HOSTS", "AGE"]
    assert [line.split()[:3] for line in listed[1:]] == [["ratings", "<none>", '["ratings"]'],
                                                         ["reviews", "<none>", '["reviews"]']]
    assert bookinfo.sh("meshctl local get dr reviews -o jsonpath='{.spec.subsets[1].name}'") == "v2"


def test_traffic_shifting(bookinfo: Any) -> None:
    _apply(bookinfo, "istio/destination-rule-all.yaml")
    _apply(bookinfo, "istio/virtual-service-all-v1.yaml")
    assert _until(bookinfo, ALL_V1) == ALL_V1

    _apply(bookinfo, "istio/virtual-service-reviews-50-v3.yaml")
    split: dict[str, int] = {}
    for _ in range(20):  # until the new routes are in: v3 appears
        split = _landed(bookinfo, _ids(bookinfo, 10))
        if split["v3"]:
            break
    split = _landed(bookinfo, _ids(bookinfo, 100))
    assert split["v2"] == 0 and split["v1"] + split["v3"] == 100
    assert 25 <= split["v1"] <= 75, split  # 50/50: more than 5 standard deviations of margin

    _apply(bookinfo, "istio/virtual-service-reviews-v3.yaml")
    assert _until(bookinfo, {"v1": 0, "v2": 0, "v3": 10}) == {"v1": 0, "v2": 0, "v3": 10}


def _times(mesh: Any, *flags: str) -> list[float]:
    out = _curl(mesh, "ratings:9080", 3, "-o /dev/null", "-w \"%{http_code} %{time_total}\\n\"", *flags)
    pairs = [line.split() for line in out.splitlines()]
    assert all(code == "200" for code, _ in pairs), out
    return [float(t) for _, t in pairs]


def test_fault_injection_delay_and_abort(bookinfo: Any) -> None:
    _apply(bookinfo, "istio/destination-rule-all.yaml")
    _apply(bookinfo, "istio/virtual-service-ratings-test-delay.yaml")
    for _ in range(20):
        if min(_times(bookinfo, JASON)) >= 2.0:
            break
    assert min(_times(bookinfo, JASON)) >= 2.0  # jason's calls wait the injected 2s
    assert max(_times(bookinfo)) < 1.5  # nobody else's do

    _apply(bookinfo, "istio/virtual-service-ratings-test-abort.yaml")
    assert set(_codes_until(bookinfo, "ratings:9080", {"500"}, JASON)) == {"500"}
    assert "fault filter abort" in _curl(bookinfo, "ratings:9080", 1, JASON)
    assert set(_codes(bookinfo, "ratings:9080", 10)) == {"200"}


EGRESS = """apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin-ext
spec:
  hosts:
  - httpbin.example.com
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  location: MESH_EXTERNAL
  endpoints:
  - address: {address}
    ports:
      http: 8080
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: httpbin-ext
spec:
  hosts:
  - httpbin.example.com
  http:
  - headers:
      request:
        set:
          x-egress: meshbox
    route:
    - destination:
        host: httpbin.example.com
"""


def test_service_entry_without_addresses(bookinfo: Any, tmp_path: Path) -> None:
    """Istio's egress form (no addresses): the client pod's port-80 egress listener picks the entry by Host
    whatever address the app connected to (10.100.200.9 is nobody's: the capture keeps it in the pod), and
    its VirtualService applies; the entry's endpoint is reviews v1's echoserver (it prints what it got)."""
    pod_ip = bookinfo.sh("meshctl local get pod -l app=reviews,version=v1 -o jsonpath='{.items[0].status.podIP}'")
    (tmp_path / "egress.yaml").write_text(EGRESS.format(address=pod_ip))
    assert "serviceentry.networking.istio.io/httpbin-ext created" in _apply(bookinfo, tmp_path / "egress.yaml")
    out = ""
    for _ in range(20):  # until the listener is in
        out = _curl(bookinfo, "10.100.200.9:80/status", 1, '-H "host: httpbin.example.com"', check=False)
        if "x-egress=meshbox" in out:
            break
        time.sleep(0.2)
    assert "real path=/status" in out and "host=httpbin.example.com" in out and "x-egress=meshbox" in out, out
    client = bookinfo.sh(CLIENT, "meshctl local logs ${CLIENT} proxy")
    assert f'"httpbin.example.com" "{pod_ip}:8080"' in client, client[-2000:]


def test_request_timeouts(bookinfo: Any, tmp_path: Path) -> None:
    """A route timeout of 0.5s answers 504 in time where the upstream never answers."""
    hang = subprocess.Popen(["bash", "-c", CLIENT + "\nexec meshctl local exec ${CLIENT} -c productpage -- "
                             f"timeout 100 python3 -c \"{HANG}\""], env=bookinfo.env)
    try:
        entry = tmp_path / "slow.yaml"
        entry.write_text(SERVICE_ENTRY.format(name="slow", address="10.100.200.1", endpoints=(
            f"  - address: 127.0.0.1\n    ports:\n      http: {HANG_PORT}")))
        _apply(bookinfo, entry)
        time.sleep(1.0)
        # No VirtualService: the proxy's default 15s timeout, so curl gives up first (-m 2).
        assert _curl(bookinfo, "10.100.200.1:80", 1, "-o /dev/null", "-m 2", "-w \"%{http_code}\"",
                     check=False) == "000"
        timeout = tmp_path / "timeout.yaml"
        timeout.write_text("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: slow\n"
                           "spec:\n  hosts:\n  - slow.example.com\n  http:\n  - route:\n    - destination:\n"
                           "        host: slow.example.com\n    timeout: 0.5s\n")
        _apply(bookinfo, timeout)
        assert set(_codes_until(bookinfo, "10.100.200.1:80", {"504"})) == {"504"}
        out = _curl(bookinfo, "10.100.200.1:80", 3, "-o /dev/null", "-w \"%{http_code} %{time_total}\\n\"")
        for line in out.splitlines():
            code, took = line.split()
            assert code == "504" and 0.4 <= float(took) < 2.0, out
    finally:
        hang.terminate()
        hang.wait(timeout=10)


def test_retries(bookinfo: Any, tmp_path: Path) -> None:
    """Of two endpoints, one refuses connections: without retries about half the requests fail (503),
    with `retries: {attempts: 2}` none do."""
    pod_ip = bookinfo.sh("meshctl local get pod -l app=reviews,version=v1 -o jsonpath='{.items[0].status.podIP}'")
    entry = tmp_path / "flaky.yaml"
    entry.write_text(SERVICE_ENTRY.format(name="flaky", address="10.100.200.2", endpoints=(
        "  - address: 127.0.0.1\n    ports:\n      http: 9\n"
        f"  - address: {pod_ip}\n    ports:\n      http: 8080")))
    _apply(bookinfo, entry)
    codes: list[str] = []
    for _ in range(20):
        codes = _codes(bookinfo, "10.100.200.2:80", 10)
        if "200" in codes and "503" in codes:
            break
        time.sleep(0.2)
    assert set(codes) == {"200", "503"}, codes  # round robin over a refusing and a serving endpoint

    retries = tmp_path / "retries.yaml"
    retries.write_text("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: flaky\n"
                       "spec:\n  hosts:\n  - flaky.example.com\n  http:\n  - route:\n    - destination:\n"
                       "        host: flaky.example.com\n    retries:\n      attempts: 2\n"
                       "      perTryTimeout: 2s\n      retryOn: connect-failure\n")
    _apply(bookinfo, retries)
    assert set(_codes_until(bookinfo, "10.100.200.2:80", {"200"})) == {"200"}
    assert set(_codes(bookinfo, "10.100.200.2:80", 20)) == {"200"}


def test_mirroring(bookinfo: Any) -> None:
    """Istio's mirroring task: all traffic to v1, mirrored to v2; the mirror's answers are dropped."""
    _apply(bookinfo, "istio/destination-rule-all.yaml")
    _apply(bookinfo, "istio/virtual-service-all-v1.yaml")
    assert _until(bookinfo, ALL_V1) == ALL_V1
    assert "virtualservice.networking.istio.io/reviews configured" in _apply(bookinfo, "istio/mirror.yaml")
    want = {"v1": 10, "v2": 10, "v3": 0}
    seen: dict[str, int] = {}
    out = ""
    for _ in range(20):  # until the new routes are in and the copies have landed
        out = _curl(bookinfo, "reviews:9080", 10)
        ids = re.findall(rf"x-request-id=({UUID})", out)
        assert len(ids) == 10  # one answer per request: v1's (a mirror's answer never reaches the client)
        time.sleep(0.3)  # the copies are fire and forget: give them a moment to land
        seen = _landed(bookinfo, ids)
        if seen == want:
            break
    assert seen == want
    assert "reviews-shadow" not in out  # every answer came from v1, which saw the client's own Host
    v2 = bookinfo.sh("meshctl local logs $(meshctl local get pod -l app=reviews,version=v2 "
                     "-o jsonpath='{.items[0].metadata.name}') proxy")
    assert sum(f'"{i}"' in line and '"reviews-shadow:9080"' in line for i in ids for line in v2.splitlines()) == 10


ACTIONS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: actions
spec:
  hosts:
  - actions.example.com
  http:
  - match:
    - uri:
        prefix: /old
    redirect:
      uri: /new
      redirectCode: 302
  - match:
    - uri:
        prefix: /api/
    rewrite:
      uri: /v2/
    headers:
      request:
        set:
          x-mesh: meshbox
      response:
        add:
          x-served-by: rewritten
    route:
    - destination:
        host: actions.example.com
"""
LIMIT = """apiVersion: routing.meshbox.io/v1alpha1
kind: RouteRule
metadata:
  name: limited
spec:
  destination: limited.example.com
  rateLimit:
    maxTokens: 3
    tokensPerFill: 1
    fillInterval: 60s
"""


def test_route_actions_and_rate_limit(bookinfo: Any, tmp_path: Path) -> None:
    """A VirtualService's redirect, rewrite and header operations, and a RouteRule's local rate limit,
    on ServiceEntries whose endpoint is reviews v1's echoserver (it prints what it received)."""
    pod_ip = bookinfo.sh("meshctl local get pod -l app=reviews,version=v1 -o jsonpath='{.items[0].status.podIP}'")
    for name, address in (("actions", "10.100.200.3"), ("limited", "10.100.200.4")):
        entry = tmp_path / f"{name}.yaml"
        entry.write_text(SERVICE_ENTRY.format(name=name, address=address, endpoints=(
            f"  - address: {pod_ip}\n    ports:\n      http: 8080")))
        _apply(bookinfo, entry)
    (tmp_path / "actions-vs.yaml").write_text(ACTIONS)
    _apply(bookinfo, tmp_path / "actions-vs.yaml")
    redirect = ""
    for _ in range(20):  # until the routes are in
        redirect = _curl(bookinfo, "10.100.200.3:80/old/page", 1, "-o /dev/null",
                         "-w \"%{http_code} %{redirect_url}\"", check=False)
        if redirect.startswith("302"):
            break
        time.sleep(0.2)
    assert redirect == "302 http://10.100.200.3/new"
    out = _curl(bookinfo, "10.100.200.3:80/api/items", 1, "-i")
    assert "real path=/v2/items" in out and "x-mesh=meshbox" in out, out
    assert "x-envoy-original-path=/api/items" in out, out
    assert re.search(r"^x-served-by: rewritten\r?$", out, re.M), out

    (tmp_path / "limit.yaml").write_text(LIMIT)
    assert "routerule.routing.meshbox.io/limited created" in _apply(bookinfo, tmp_path / "limit.yaml")
    codes: list[str] = []
    for _ in range(20):  # until the limit is in: the first 429
        codes = _codes(bookinfo, "10.100.200.4:80", 1)
        if codes == ["429"]:
            break
        time.sleep(0.2)
    assert codes == ["429"]
    assert _codes(bookinfo, "10.100.200.4:80", 5) == ["429"] * 5  # 1 token a minute: none left
    client = bookinfo.sh(CLIENT, "meshctl local logs ${CLIENT} proxy")
    assert re.search(r'"GET / HTTP/1\.1" 429 RL ', client), client[-2000:]


def test_seed_era_route_rule(bookinfo: Any) -> None:
    """The VirtualService deleted, Istio 0.2's RouteRule for reviews takes over."""
    out = bookinfo.sh("meshctl local delete -f istio/virtual-service-reviews-v3.yaml")
    assert 'virtualservice "reviews" deleted' in out
    assert "routerule.config.istio.io/reviews-default created" in _apply(
        bookinfo, "istio/route-rule-reviews-v2-v1alpha2.yaml")
    assert _until(bookinfo, {"v1": 0, "v2": 10, "v3": 0}) == {"v1": 0, "v2": 10, "v3": 0}


@pytest.mark.parametrize(("manifest", "fields"), [
    ("istio/virtual-service-ratings-cors.yaml", ["spec.http[0].corsPolicy"]),
])
def test_an_unimplemented_field_is_refused(bookinfo: Any, manifest: str, fields: list[str]) -> None:
    before = json.loads(bookinfo.sh("cat $MESHBOX_LOCAL_STATE/state.json"))["istio"]
    result = subprocess.run(["bash", "-c", f"meshctl local apply -f {manifest}"], cwd=Path(__file__).parent,
                            env=bookinfo.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    for field in fields:
        assert f": {field}: not implemented by meshbox's proxy yet [MB0105]" in result.stderr, result.stderr
    assert json.loads(bookinfo.sh("cat $MESHBOX_LOCAL_STATE/state.json"))["istio"] == before  # nothing applied


def _stand_in(mesh: Any, port: int, status: int, delay: float) -> subprocess.Popen[bytes]:
    code = STAND_IN.format(port=port, status=status, delay=delay)
    return subprocess.Popen(["bash", "-c", CLIENT + "\nexec meshctl local exec ${CLIENT} -c productpage -- "
                             f"timeout 100 python3 -c \"{code}\""], env=mesh.env)


def _concurrent_codes(mesh: Any, target: str, count: int) -> list[str]:
    """``count`` requests at once from the client pod (curl in the background, then wait)."""
    return _curl_parallel(mesh, target, count).split()


def _curl_parallel(mesh: Any, target: str, count: int) -> str:
    return mesh.sh(CLIENT, f"meshctl local exec ${{CLIENT}} -c productpage -- sh -c "
                           f"'for i in $(seq {count}); do curl -s -m 5 -o /dev/null -w \"%{{http_code}}\\n\" "
                           f"{target} & done; wait'")


def _client_proxy(mesh: Any, what: str) -> str:
    """The client pod's proxy: its access log ("logs") or an admin API page ("/clusters")."""
    if what == "logs":
        return mesh.sh(CLIENT, "meshctl local logs ${CLIENT} proxy")
    return mesh.sh(CLIENT, f"meshctl local exec ${{CLIENT}} -c productpage -- curl -s 127.0.0.1:15000{what}")


CIRCUIT_BREAKER = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: slowbin
spec:
  host: slowbin.example.com
  trafficPolicy:
    connectionPool:
      tcp:
        maxConnections: 1
      http:
        http1MaxPendingRequests: 1
        maxRequestsPerConnection: 1
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"""


def test_circuit_breaking(bookinfo: Any, tmp_path: Path) -> None:
    """Istio's circuit-breaking task: one connection and one pending request at most. The task's
    rule applies as written (for ratings here); against a slow upstream, 10 requests at once get
    their answers: the one in flight and the one waiting 200, the others 503 at once, flagged UO in
    the client's proxy log; none is left without a status."""
    assert re.search(r"destinationrule.networking.istio.io/ratings (created|configured)",
                     _apply(bookinfo, "istio/circuit-breaker.yaml"))
    assert set(_codes(bookinfo, "ratings:9080", 5)) == {"200"}
    server = _stand_in(bookinfo, 9998, 200, 1.0)
    try:
        entry = tmp_path / "slowbin.yaml"
        entry.write_text(SERVICE_ENTRY.format(name="slowbin", address="10.100.200.5", endpoints=(
            "  - address: 127.0.0.1\n    ports:\n      http: 9998")))
        _apply(bookinfo, entry)
        time.sleep(1.0)
        assert set(_concurrent_codes(bookinfo, "10.100.200.5:80", 5)) == {"200"}  # no limits yet
        rule = tmp_path / "slowbin-dr.yaml"
        rule.write_text(CIRCUIT_BREAKER)
        assert "destinationrule.networking.istio.io/slowbin created" in _apply(bookinfo, rule)
        codes: list[str] = []
        for _ in range(20):  # until the rule reaches the client's proxy
            if "503" in _concurrent_codes(bookinfo, "10.100.200.5:80", 10):
                break
        codes = _concurrent_codes(bookinfo, "10.100.200.5:80", 10)
        assert len(codes) == 10 and set(codes) == {"200", "503"}, codes
        # The one in flight and the one pending (one more if a curl starts after an answer).
        assert 2 <= codes.count("200") <= 4, codes
        log = _client_proxy(bookinfo, "logs")
        assert re.search(r'"GET / HTTP/1.1" 503 UO .*"10.100.200.5" "-"', log), log[-2000:]
        clusters = _client_proxy(bookinfo, "/clusters")
        assert "outbound|80||slowbin.example.com::circuit_breakers::max_connections::1" in clusters, clusters
        overflow = re.search(r"outbound\|80\|\|slowbin.example.com::upstream_rq_pending_overflow::(\d+)", clusters)
        assert overflow is not None and int(overflow.group(1)) >= 7, clusters
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_outlier_detection_ejects_a_failing_endpoint(bookinfo: Any, tmp_path: Path) -> None:
    """Of two endpoints, one answers 500 (a stand-in in the client pod) and one is a reviews pod:
    round robin alternates until the task's outlierDetection applies; then the failing one is ejected
    after its first 500 and every request is answered by the pod. /clusters flags the ejected one."""
    server = _stand_in(bookinfo, 9997, 500, 0)
    try:
        pod_ip = bookinfo.sh("meshctl local get pod -l app=reviews,version=v1 "
                             "-o jsonpath='{.items[0].status.podIP}'")
        entry = tmp_path / "failing.yaml"
        entry.write_text(SERVICE_ENTRY.format(name="failing", address="10.100.200.4", endpoints=(
            "  - address: 127.0.0.1\n    ports:\n      http: 9997\n"
            f"  - address: {pod_ip}\n    ports:\n      http: 8080")))
        _apply(bookinfo, entry)
        assert set(_codes_until(bookinfo, "10.100.200.4:80", {"200", "500"})) == {"200", "500"}
        rule = tmp_path / "failing-dr.yaml"
        rule.write_text(CIRCUIT_BREAKER.replace("slowbin", "failing"))
        _apply(bookinfo, rule)
        assert set(_codes_until(bookinfo, "10.100.200.4:80", {"200"})) == {"200"}
        assert set(_codes(bookinfo, "10.100.200.4:80", 20)) == {"200"}
        clusters = _client_proxy(bookinfo, "/clusters")
        assert "outbound|80||failing.example.com::127.0.0.1:9997::health_flags::/failed_outlier_check" in clusters, \
            clusters
        assert "outbound|80||failing.example.com::outlier::ejections_active::1" in clusters
    finally:
        server.terminate()
        server.wait(timeout=10)
