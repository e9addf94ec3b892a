"""`meshctl trace`: parsing Envoy-format lines, ordering hops, and reading a local cluster's proxy logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from meshbox.ctl.trace import hops, parse_line, report

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
    assert "1. +0 ms  default/client  outbound  GET /  service-two -> 10.4.180.7:8080  200 -  took 3 ms" in text
    assert "2. +1 ms  default/server  inbound " in text
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
