"""`meshctl trace REQUEST_ID`: one request's path through every proxy, from their access logs.

The tutorial greps each proxy's log by hand; this collects the matching lines from every pod's
proxy container (on the local cluster, or with `kubectl logs` on a real one), orders them by start
time and prints the hops with their timings. Parsing is pure (``parse_line``, ``hops``, ``report``);
reading logs is at the bottom.

A hop's direction is what the proxy that served it knows: its admin API remembers the direction of
the listener behind each recent request (``GET /requests?id=``, asked on the local cluster), else an
upstream cluster field in the line (``%UPSTREAM_CLUSTER%``: ``inbound|8080||...`` /
``outbound|80||...``, as Istio's newer default format ends). Only when neither is there is it guessed
from the upstream address (loopback: inbound), and the report marks it ``?``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import click

from meshbox.cluster import queries
from meshbox.cluster.cluster import LocalCluster
from meshbox.cluster.state import StateError
from meshbox.ctl.local_access import LocalClusterAccess
from meshbox.ctl.mesh_access import AccessError

# Envoy's default access log format (shared/reference/anchors.md).
_LINE = re.compile(
    r'^\[(?P<start>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+) (?P<protocol>\S+)" (?P<code>\d+) (?P<flags>\S+) '
    r'(?P<received>\d+) (?P<sent>\d+) (?P<duration>\d+|-) (?P<upstream_time>\d+|-) "(?P<xff>[^"]*)" '
    r'"(?P<user_agent>[^"]*)" "(?P<request_id>[^"]*)" "(?P<authority>[^"]*)" "(?P<upstream_host>[^"]*)"'
    r'(?P<extra>(?: "[^"]*"| [^" ]+)*)\s*$'
)
# An Envoy/Istio upstream cluster name among the appended fields: its first part is the direction.
_CLUSTER = re.compile(r'(?:^|[ "])(?P<direction>inbound|outbound)\|\d*\|[^|\s"]*\|[^\s"]*')
# A trace id in a field appended to the default format: %TRACE_ID% (32 hex digits) or %REQ(TRACEPARENT)%.
_TRACE_ID = re.compile(r'"(?:[0-9a-f]{2}-)?(?P<trace>[0-9a-f]{32})(?:-[0-9a-f]{16}-[0-9a-f]{2})?"')
_ZERO_TRACE = "0" * 32
LOOPBACK = ("127.", "[::1]", "::1")


@dataclass(frozen=True)
class Hop:
    """One access log line of one proxy."""

    source: str  # namespace/pod of the proxy that wrote it
    start: datetime
    method: str
    path: str
    code: str
    flags: str
    duration_ms: int | None
    upstream_ms: int | None
    authority: str
    upstream_host: str
    trace_id: str | None = None
    request_id: str = ""
    start_text: str = ""  # START_TIME as logged, to match the proxy's own record of the request
    # The direction the proxy knows (its admin API, or the upstream cluster it logged); None: unknown.
    known_direction: str | None = None

    @property
    def guessed(self) -> bool:
        return self.known_direction is None

    @property
    def direction(self) -> str:
        """The direction the proxy knows; unknown, a guess: inbound when the upstream is loopback (the
        proxy handed the request to its own app), else outbound. Wrong for an outbound hop to a local
        backend, which is why the proxy is asked first."""
        if self.known_direction is not None:
            return self.known_direction
        return "inbound" if self.upstream_host.startswith(LOOPBACK) else "outbound"


def _ms(value: str) -> int | None:
    return None if value == "-" else int(value)


def parse_line(line: str, source: str) -> tuple[str, Hop] | None:
    """(request id, hop) for an access log line, None for any other line."""
    m = _LINE.match(line.strip())
    if m is None:
        return None
    try:
        start = datetime.strptime(m["start"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    trace = next((t["trace"] for t in _TRACE_ID.finditer(m["extra"]) if t["trace"] != _ZERO_TRACE), None)
    cluster = _CLUSTER.search(m["extra"])
    return m["request_id"], Hop(source, start, m["method"], m["path"], m["code"], m["flags"],
                                _ms(m["duration"]), _ms(m["upstream_time"]), m["authority"], m["upstream_host"],
                                trace, m["request_id"], m["start"], cluster["direction"] if cluster else None)


def hops(request_id: str, logs: Iterable[tuple[str, str]]) -> list[Hop]:
    """Every hop of ``request_id`` (an x-request-id, or a trace id when the lines carry one) in (source,
    log text) pairs, in path order (start time, outbound first)."""
    found = []
    for source, text in logs:
        for line in text.splitlines():
            parsed = parse_line(line, source)
            if parsed and request_id in (parsed[0], parsed[1].trace_id):
                found.append(parsed[1])
    return sorted(found, key=_path_order)


def _path_order(h: Hop) -> tuple[datetime, bool]:
    return (h.start, h.direction != "outbound")


AdminGet = Callable[[str, str, str], bytes]  # (pod, namespace, path) → body of a proxy admin GET


def ask_proxies(path: list[Hop], admin_get: AdminGet) -> list[Hop]:
    """``path`` with each hop's direction as the proxy that logged it remembers it (its admin API's
    ``/requests``): one question per proxy and request id. A proxy that cannot be asked, or has
    forgotten the request (it keeps the last 1,024 per process), leaves its hops as they were."""
    answers: dict[tuple[str, str], dict[str, str]] = {}
    for source, request_id in {(h.source, h.request_id) for h in path if h.request_id and h.request_id != "-"}:
        namespace, _, pod = source.partition("/")
        try:
            body = admin_get(pod, namespace, "/requests?id=" + quote(request_id, safe=""))
            for entry in json.loads(body)["requests"]:
                answers[(source, entry["start_time"])] = entry
        except (AccessError, ValueError, KeyError, TypeError):
            continue
    out = []
    for h in path:
        entry = answers.get((h.source, h.start_text))
        if entry is not None and entry.get("direction") in ("inbound", "outbound"):
            h = dataclasses.replace(h, known_direction=entry["direction"])
        out.append(h)
    return sorted(out, key=_path_order)


def report(request_id: str, path: list[Hop]) -> str:
    """The hops as text: offset from the first, proxy, direction, route, status and timings."""
    if not path:
        return f"request {request_id}: no proxy logged it\n"
    first = path[0].start
    total = max((h.start - first).total_seconds() * 1000 + (h.duration_ms or 0) for h in path)
    traces = sorted({h.trace_id for h in path if h.trace_id})
    traced = f", trace {', '.join(traces)}" if traces else ""
    lines = [f"request {request_id}: {len(path)} hop(s), {total:.0f} ms end to end{traced}"]
    for i, h in enumerate(path, 1):
        offset = (h.start - first).total_seconds() * 1000
        upstream = "-" if h.upstream_ms is None else f"{h.upstream_ms} ms"
        duration = "-" if h.duration_ms is None else f"{h.duration_ms} ms"
        direction = h.direction + ("?" if h.guessed else "")
        lines.append(f"  {i}. +{offset:.0f} ms  {h.source}  {direction:<8}  {h.method} {h.path}  "
                     f"{h.authority} -> {h.upstream_host}  {h.code} {h.flags}  took {duration} "
                     f"(upstream {upstream})")
    if any(h.guessed for h in path):
        lines.append("  (?: direction guessed from the upstream address, loopback = inbound: the proxy could not "
                     "be asked and its log line names no upstream cluster)")
    return "\n".join(lines) + "\n"


def local_proxy_logs(state_dir: Path | None) -> list[tuple[str, str]]:
    """(namespace/pod, log text) of every proxy container on the local cluster."""
    cluster = LocalCluster(state_dir)
    logs = []
    for rec in cluster.dir.load().pods.values():
        if not any(c["name"] == "proxy" for c in rec.spec["containers"]):
            continue
        path = queries.log_path(cluster, rec, "proxy")
        if path.exists():
            logs.append((rec.key, path.read_text(errors="replace")))
    return logs


def kubectl_proxy_logs(kubectl: str, context: str | None) -> list[tuple[str, str]]:
    """(namespace/pod, log text) of every pod with a proxy container, through kubectl."""
    base = [kubectl, *(["--context", context] if context else [])]

    def run(*args: str) -> str:
        try:
            result = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60, check=False)
        except FileNotFoundError:
            raise click.ClickException(f"{kubectl!r} not found: install kubectl or use the local cluster") from None
        if result.returncode != 0:
            raise click.ClickException(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    pods = json.loads(run("get", "pods", "--all-namespaces", "-o", "json"))["items"]
    logs = []
    for pod in pods:
        if any(c.get("name") == "proxy" for c in pod["spec"].get("containers", [])):
            meta = pod["metadata"]
            logs.append((f"{meta['namespace']}/{meta['name']}",
                         run("logs", "-n", meta["namespace"], meta["name"], "-c", "proxy")))
    return logs


@click.command("trace")
@click.argument("request_id")
@click.option("--kubernetes", is_flag=True, help="Read the proxies' logs with kubectl instead of the local cluster.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Local cluster state directory [$MESHBOX_LOCAL_STATE, else /var/lib/meshbox/local].")
@click.option("--kubectl", default="kubectl", show_default=True, help="kubectl binary (with --kubernetes).")
@click.option("--context", help="kubeconfig context (with --kubernetes).")
def trace(request_id: str, kubernetes: bool, state_dir: Path | None, kubectl: str, context: str | None) -> None:
    """Print the path of one request (its x-request-id, or its trace id) through every proxy, hop by hop,
    with timings. The trace id shows when the access log format appends %TRACE_ID% or
    %REQ(TRACEPARENT)% to the default format. Each hop's direction is the one its proxy knows (asked on
    the local cluster, or an appended %UPSTREAM_CLUSTER%); a direction marked ? is a guess."""
    if kubernetes:
        path = hops(request_id, kubectl_proxy_logs(kubectl, context))
    else:
        try:
            logs = local_proxy_logs(state_dir)
        except StateError as exc:
            raise click.ClickException(f"{exc} (or pass --kubernetes to read a real cluster)") from None
        path = ask_proxies(hops(request_id, logs), LocalClusterAccess(state_dir).admin_get)
    click.echo(report(request_id, path), nl=False)
    if not path:
        raise SystemExit(1)
