"""`meshctl trace`: parsing Envoy-format lines, ordering hops, and reading a local cluster's proxy logs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import free_port  # type: ignore[import-not-found]
from meshbox.ctl.trace import ask_proxies, hops, parse_line, report

MESHCTL = str(Path(sys.executable).parent / "meshctl")
RID = "a641eff7-eb82-4a4f-b67b-53cd3a03c399"
OUT = (f'[2017-05-01T22:08:39.310Z] "GET / HTTP/1.1" 200 - 0 398 3 3 "-" "curl/7.47.0" "{RID}" '
       '"service-two" "10.4.180.7:8080"')
IN = (f'[2017-05-01T22:08:39.311Z] "GET / HTTP/1.1" 200 - 0 398 2 0 "-" "curl/7.47.0" "{RID}" '
      '"service-two" "127.0.0.1:8080"')
TCP = '[2017-05-01T22:08:40.000Z] "- - -" 0 - 77 398 5 - "-" "-" "-" "-" "10.4.180.9:8080"'


def test_tutorial_lines_parse() -> None:
    parsed = parse_line(OUT, "default/client")
    assert parsed is not None
    rid, hop = parsed
    assert rid == RID
    assert (hop.method, hop.code, hop.duration_ms, hop.upstream_ms, hop.authority) == ("GET", "200", 3, 3,
                                                                                       "service-two")
    assert hop.direction == "outbound"
    assert parse_line(IN, "s")[1].direction == "inbound"  # type: ignore[index]
    tcp = parse_line(TCP, "c")
    assert tcp is not None and tcp[1].method == "-" and tcp[1].upstream_ms is None
    assert parse_line("2026-11-25 14:06:29,127 meshbox-agent INFO proxy started", "c") is None
    assert parse_line(OUT.replace("22:08:39.310Z", "yesterday"), "c") is None


def test_hops_are_ordered_and_reported() -> None:
    path = hops(RID, [("default/server", IN + "\nnoise\n"), ("default/client", "other\n" + OUT + "\n" + TCP)])
    assert [h.source for h in path] == ["default/client", "default/server"]
    text = report(RID, path)
    assert text.splitlines()[0] == f"request {RID}: 2 hop(s), 3 ms end to end"
    # Neither proxy was asked and the lines name no upstream cluster: the directions are guesses, marked.
    assert "1. +0 ms  default/client  outbound?  GET /  service-two -> 10.4.180.7:8080  200 -  took 3 ms" in text
    assert "2. +1 ms  default/server  inbound?  " in text
    assert "direction guessed from the upstream address" in text
    assert report("nope", []) == "request nope: no proxy logged it\n"


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_a_trace_id_appended_to_the_default_format_is_shown_and_searchable() -> None:
    # %TRACE_ID% on the client's proxy, %REQ(TRACEPARENT)% on the server's: both name the trace.
    out = OUT + f' "{TRACE}"'
    inbound = IN + f' "00-{TRACE}-00f067aa0ba902b7-01"'
    assert parse_line(out, "c")[1].trace_id == TRACE  # type: ignore[index]
    assert parse_line(inbound, "s")[1].trace_id == TRACE  # type: ignore[index]
    assert parse_line(OUT + ' "-"', "c")[1].trace_id is None  # type: ignore[index]
    assert parse_line(OUT, "c")[1].trace_id is None  # type: ignore[index]
    logs = [("default/server", inbound), ("default/client", out)]
    assert hops(TRACE, logs) == hops(RID, logs) and len(hops(RID, logs)) == 2
    assert report(RID, hops(RID, logs)).splitlines()[0] == f"request {RID}: 2 hop(s), 3 ms end to end, trace {TRACE}"


def _pod(name: str, tmp: Path, log: str) -> dict[str, object]:
    (tmp / "logs" / f"default_{name}").mkdir(parents=True)
    (tmp / "logs" / f"default_{name}" / "proxy.log").write_text(log)
    return {"body": {"metadata": {"name": name, "namespace": "default"},
                     "spec": {"containers": [{"name": "app"}, {"name": "proxy"}]}},
            "ip": "10.244.0.2", "netns": f"x-{name}", "phase": "Running", "containers": {}, "pause": None}


def test_cli_reads_the_local_clusters_proxy_logs(tmp_path: Path) -> None:
    state = {"format": 1, "prefix": "x", "ledger": [], "next_veth": 3, "services": {}, "deployments": {},
             "rules": {}, "discovery": None,
             "pods": {"default/a": _pod("a", tmp_path, OUT + "\n"), "default/b": _pod("b", tmp_path, IN + "\n")}}
    (tmp_path / "state.json").write_text(json.dumps(state))
    out = subprocess.run([MESHCTL, "trace", RID, "--state-dir", str(tmp_path)], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert out.startswith(f"request {RID}: 2 hop(s)") and "default/a  outbound" in out
    missing = subprocess.run([MESHCTL, "trace", "0000", "--state-dir", str(tmp_path)], capture_output=True,
                             text=True, timeout=30, check=False)
    assert missing.returncode == 1 and "no proxy logged it" in missing.stdout


def test_cli_without_a_cluster_says_so(tmp_path: Path) -> None:
    result = subprocess.run([MESHCTL, "trace", RID, "--state-dir", str(tmp_path / "none")], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == 1
    assert "no local cluster" in result.stderr and "--kubernetes" in result.stderr


def test_kubernetes_mode_reads_proxy_logs_through_kubectl(tmp_path: Path) -> None:
    """No API server runs here: a stand-in kubectl answers with the JSON and log text the real one prints,
    and records its arguments, so the calls meshctl makes are checked up to that boundary."""
    pods = {"apiVersion": "v1", "kind": "List", "items": [
        {"metadata": {"name": "client-1", "namespace": "tutorial"},
         "spec": {"containers": [{"name": "app"}, {"name": "proxy"}]}},
        {"metadata": {"name": "server-1", "namespace": "tutorial"},
         "spec": {"containers": [{"name": "app"}, {"name": "proxy"}]}},
        {"metadata": {"name": "coredns", "namespace": "kube-system"}, "spec": {"containers": [{"name": "dns"}]}},
    ]}
    (tmp_path / "pods.json").write_text(json.dumps(pods))
    (tmp_path / "client-1.log").write_text(OUT + "\n")
    (tmp_path / "server-1.log").write_text(IN + "\n")
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f"""#!/bin/sh
echo "$@" >> {tmp_path}/calls
case "$*" in
  *"get pods --all-namespaces -o json") cat {tmp_path}/pods.json ;;
  *"logs -n tutorial "*" -c proxy") cat {tmp_path}/$6.log ;;
  *) echo "unexpected: $*" >&2; exit 1 ;;
esac
""")
    kubectl.chmod(0o755)
    out = subprocess.run([MESHCTL, "trace", RID, "--kubernetes", "--kubectl", str(kubectl), "--context", "kind-x"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    assert "tutorial/client-1  outbound" in out.stdout and "tutorial/server-1  inbound" in out.stdout
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["--context kind-x get pods --all-namespaces -o json",
                     "--context kind-x logs -n tutorial client-1 -c proxy",
                     "--context kind-x logs -n tutorial server-1 -c proxy"]


def test_an_upstream_cluster_field_says_the_direction() -> None:
    """Istio's newer default format ends with %UPSTREAM_CLUSTER% (unquoted); quoted works too."""
    to_local = OUT.replace("10.4.180.7:8080", "127.0.0.1:9000")
    outbound = parse_line(to_local + " outbound|80||service-two.default.svc.cluster.local", "c")
    assert outbound is not None and outbound[1].direction == "outbound" and not outbound[1].guessed
    inbound = parse_line(IN + ' "inbound|8080||"', "s")
    assert inbound is not None and inbound[1].direction == "inbound" and not inbound[1].guessed
    text = report(RID, [outbound[1], inbound[1]])
    assert "c  outbound  GET" in text and "?" not in text


class _Backend(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_the_proxy_says_an_outbound_hop_to_a_loopback_backend_is_outbound(tmp_path: Path) -> None:
    """A real meshbox-proxy whose outbound listener sends to a backend on 127.0.0.1: its default-format
    line looks like an inbound hop (upstream on loopback), and its admin API's /requests says outbound."""
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    listen, admin = free_port(), free_port()
    config = tmp_path / "proxy.yaml"
    config.write_text(f"""
listeners:
- {{name: out, direction: OUTBOUND, address: 127.0.0.1, port: {listen}, protocol: HTTP, route_config: r, bind: true}}
route_configs:
- {{name: r, virtual_hosts: [{{name: local, domains: ["*"], routes: [{{clusters: [{{cluster: local, weight: 1}}]}}]}}]}}
clusters:
- {{name: local}}
endpoints:
- {{cluster_name: local, endpoints: [{{address: 127.0.0.1, port: {backend.server_address[1]}}}]}}
""")
    log = tmp_path / "access.log"
    with log.open("wb") as out:
        proxy = subprocess.Popen([sys.executable, "-m", "meshbox.proxy", "--config", str(config), "--admin-port",
                                  str(admin), "--outbound-port", "0"], stdout=out, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{listen}/", headers={"x-request-id": RID})
                assert urllib.request.urlopen(request, timeout=2).read() == b"ok\n"
                break
            except OSError:
                assert proxy.poll() is None and time.monotonic() < deadline, "proxy never served"
                time.sleep(0.05)
        while RID not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        path = hops(RID, [("default/client", log.read_text())])
        assert len(path) == 1 and path[0].upstream_host.startswith("127.0.0.1:")
        assert path[0].guessed and path[0].direction == "inbound"  # what the address alone suggests

        def admin_get(pod: str, namespace: str, url_path: str) -> bytes:
            assert (pod, namespace) == ("client", "default")
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}{url_path}", timeout=5) as reply:
                return reply.read()

        asked = ask_proxies(path, admin_get)
        assert asked[0].direction == "outbound" and not asked[0].guessed
        assert "default/client  outbound  GET /" in report(RID, asked)
        answer = json.loads(admin_get("client", "default", f"/requests?id={RID}"))["requests"]
        assert [(e["direction"], e["listener"], e["upstream_cluster"]) for e in answer] == \
            [("outbound", "out", "local")]
        assert json.loads(admin_get("client", "default", "/requests?id=nope")) == {"requests": []}
        with pytest.raises(urllib.error.HTTPError) as missing:
            admin_get("client", "default", "/requests")
        assert missing.value.code == 400
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        backend.shutdown()
        backend.server_close()


def test_a_proxy_that_cannot_be_asked_leaves_the_guess() -> None:
    from meshbox.ctl.mesh_access import AccessError

    def unreachable(pod: str, namespace: str, url_path: str) -> bytes:
        raise AccessError("no such pod")

    path = hops(RID, [("default/client", OUT)])
    assert ask_proxies(path, unreachable) == path and path[0].guessed
