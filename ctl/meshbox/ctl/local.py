"""`meshctl local`: kubectl-like verbs for the local cluster of network namespaces."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from meshbox.cluster import queries, workloads
from meshbox.cluster.cluster import ClusterError, LocalCluster
from meshbox.cluster.host import HostError
from meshbox.cluster.model import ClusterState, DeploymentRecord, Obj, PodRecord
from meshbox.cluster.objects import ManifestError, parse_label_selector, parse_manifests
from meshbox.cluster.state import DEFAULT_STATE_DIR, STATE_ENV, StateError
from meshbox.ctl.views import OutputError, age, as_list, endpoints_column, render, service_ports, table

F = TypeVar("F", bound=Callable[..., Any])
KINDS = {
    "pods": "pods", "pod": "pods", "po": "pods",
    "services": "services", "service": "services", "svc": "services",
    "deployments": "deployments", "deployment": "deployments", "deploy": "deployments",
    "routerules": "rules", "routerule": "rules",
    "endpoints": "endpoints", "ep": "endpoints",
    "endpointslices": "endpointslices", "endpointslice": "endpointslices",
}


def _friendly_errors(func: F) -> F:
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ClusterError, StateError, ManifestError, HostError, OutputError) as exc:
            raise click.ClickException(str(exc)) from None
    return wrapper  # type: ignore[return-value]


def _need_root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("the local cluster needs root (network namespaces, iptables, setpriv): "
                                   "run meshctl as root, e.g. with sudo")


def _cluster(ctx: click.Context) -> LocalCluster:
    return LocalCluster(ctx.obj)


@click.group("local")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help=f"Where the cluster's state lives [${STATE_ENV}, else {DEFAULT_STATE_DIR}].")
@click.pass_context
def local(ctx: click.Context, state_dir: Path | None) -> None:
    """A local Kubernetes-like cluster made of network namespaces (needs root).

    \b
    meshctl local up
    meshctl local apply -f <(meshctl kube-inject -f apps.yaml)
    meshctl local get pods -o wide
    meshctl local scale deployment service-two --replicas 3
    meshctl local exec POD -c app -- curl service-two:80
    meshctl local logs POD proxy
    meshctl local down
    """
    ctx.obj = state_dir


@local.command()
@click.option("--prefix", default="mbx", show_default=True, envvar="MESHBOX_LOCAL_PREFIX",
              help="Start of every namespace name this cluster makes (2-8 letters/digits) [$MESHBOX_LOCAL_PREFIX].")
@click.option("--without-discovery", is_flag=True,
              help="Do not start meshbox-discovery (pods without sidecars only).")
@click.option("--without-prometheus", is_flag=True,
              help="Do not start Prometheus (it scrapes every annotated pod; meshctl dashboard reads it).")
@click.pass_context
@_friendly_errors
def up(ctx: click.Context, prefix: str, without_discovery: bool, without_prometheus: bool) -> None:
    """Make the node namespace (bridge, Service NAT), start the kubelet, the discovery server and Prometheus."""
    _need_root()
    for line in _cluster(ctx).up(prefix, discovery=not without_discovery, prometheus=not without_prometheus):
        click.echo(line)


@local.command()
@click.pass_context
@_friendly_errors
def down(ctx: click.Context) -> None:
    """Remove every namespace, process, rule and file the cluster made (safe to run twice)."""
    _need_root()
    for line in _cluster(ctx).down():
        click.echo(line)


def _read(filename: str) -> tuple[str, str]:
    try:
        if filename == "-":
            return sys.stdin.read(), "<stdin>"
        return Path(filename).read_text(encoding="utf-8"), filename
    except OSError as exc:
        raise click.ClickException(f"{filename}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise click.ClickException(f"{filename}: not UTF-8 text") from None


def _resources(filename: str, namespace: str | None) -> list[Any]:
    text, source = _read(filename)
    resources = parse_manifests(text, source)
    if namespace:
        for res in resources:
            if res.body["metadata"].get("namespace") not in (None, "default", namespace):
                raise click.ClickException(f"{res.label()} is in namespace {res.namespace}, not {namespace}")
        resources = [type(r)(r.kind, r.name, namespace, {**r.body, "metadata": {**r.body["metadata"],
                                                                               "namespace": namespace}})
                     for r in resources]
    return resources


@local.command()
@click.option("-f", "--filename", required=True, metavar="FILE|-", help="Manifest to apply (- for stdin).")
@click.option("-n", "--namespace", help="Namespace of objects that do not name one [default].")
@click.pass_context
@_friendly_errors
def apply(ctx: click.Context, filename: str, namespace: str | None) -> None:
    """Create or update Services, Deployments, Pods, RouteRules and Istio VirtualServices,
    DestinationRules and ServiceEntries; start their pods.

    Every document is checked first: on any error nothing is applied.
    """
    _need_root()
    lines, errors = workloads.apply(_cluster(ctx), _resources(filename, namespace))
    for line in lines:
        click.echo(line)
    if errors:
        raise click.ClickException("\n".join(errors))


@local.command()
@click.option("-f", "--filename", required=True, metavar="FILE|-", help="Manifest whose objects to delete.")
@click.option("-n", "--namespace", help="Namespace of objects that do not name one [default].")
@click.pass_context
@_friendly_errors
def delete(ctx: click.Context, filename: str, namespace: str | None) -> None:
    """Delete the objects of a manifest (a Deployment's pods with it)."""
    _need_root()
    lines, errors = workloads.delete(_cluster(ctx), _resources(filename, namespace))
    for line in lines:
        click.echo(line)
    if errors:
        raise click.ClickException("\n".join(f"Error from server (NotFound): {e}" for e in errors))


def _pod_object(rec: PodRecord) -> Obj:
    body = {k: v for k, v in rec.body.items() if k not in ("apiVersion", "kind", "status")}
    return {"apiVersion": "v1", "kind": "Pod", **body, "status": rec.status()}


def _deployment_object(state: ClusterState, dep: DeploymentRecord) -> Obj:
    pods = [state.pods[key] for key in workloads.owned_pods(state, dep.namespace, dep.name)]
    ready = sum(1 for rec in pods if rec.ready)
    return {**dep.body, "status": {"replicas": len(pods), "readyReplicas": ready, "updatedReplicas": len(pods)}}


def _rows(state: ClusterState, kind: str, namespace: str | None, selector: dict[str, str],
          wide: bool) -> tuple[list[str], list[list[str]], list[Obj]]:
    if kind == "pods":
        recs = queries.find_pods(state, namespace, selector)
        header = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"] + (["IP", "NODE"] if wide else [])
        rows = []
        for rec in recs:
            ready, total, status = queries.pod_status(rec)
            row = [rec.name, f"{ready}/{total}", status, str(rec.restarts), age(rec.created)]
            rows.append(row + ([rec.ip, "local"] if wide else []))
        return header, rows, [_pod_object(rec) for rec in recs]
    if kind == "services":
        objs = [s for s in queries.services(state, namespace) if selector_ok(selector, s)]
        header = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"] + (["SELECTOR"] if wide else [])
        rows = [[s["metadata"]["name"], s["spec"].get("type", "ClusterIP"), s["spec"]["clusterIP"], "<none>",
                 service_ports(s), age(s["metadata"].get("creationTimestamp"))]
                + ([",".join(f"{k}={v}" for k, v in (s["spec"].get("selector") or {}).items())] if wide else [])
                for s in objs]
        return header, rows, objs
    if kind in ("endpoints", "endpointslices"):
        created = {s.name + "/" + s.namespace: s.created for s in state.services.values()}
        objs = [o for o in queries.endpoints(state, namespace, slices=kind == "endpointslices")
                if selector_ok(selector, o)]
        header = ["NAME", "ENDPOINTS", "AGE"]
        rows = [[o["metadata"]["name"], endpoints_column(o),
                 age(created.get(o["metadata"]["name"] + "/" + o["metadata"]["namespace"]))] for o in objs]
        return header, rows, objs
    if kind == "deployments":
        deps = [d for d in state.deployments.values()
                if (namespace is None or d.namespace == namespace) and selector_ok(selector, d.body)]
        objs = [_deployment_object(state, d) for d in deps]
        header = ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
        rows = [[o["metadata"]["name"], f"{o['status']['readyReplicas']}/{o['spec'].get('replicas', 1)}",
                 str(o["status"]["updatedReplicas"]), str(o["status"]["readyReplicas"]),
                 age(o["metadata"].get("creationTimestamp"))] for o in objs]
        return header, rows, objs
    objs = [o for o in state.rules.values()
            if (namespace is None or o["metadata"]["namespace"] == namespace) and selector_ok(selector, o)]
    header = ["NAME", "DESTINATION", "AGE"]
    rows = [[o["metadata"]["name"], str(o["spec"].get("destination", "")), age(o["metadata"].get("creationTimestamp"))]
            for o in objs]
    return header, rows, objs


def selector_ok(selector: dict[str, str], obj: Obj) -> bool:
    """Whether an object's labels match a -l selector."""
    labels = obj["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


@local.command()
@click.argument("kind", type=click.Choice(sorted(KINDS)), metavar="KIND")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace to look in.")
@click.option("-A", "--all-namespaces", is_flag=True, help="Look in every namespace.")
@click.option("-l", "--selector", help="Label selector, e.g. app=service-one (= terms only).")
@click.option("-o", "--output", help="wide, yaml, json or jsonpath=TEMPLATE.")
@click.pass_context
@_friendly_errors
def get(ctx: click.Context, kind: str, name: str | None, namespace: str, all_namespaces: bool,
        selector: str | None, output: str | None) -> None:
    """List pods, services, deployments, endpoints, endpointslices or routerules (KIND), like kubectl get."""
    state = _cluster(ctx).dir.load()
    wide = output == "wide"
    header, rows, objs = _rows(state, KINDS[kind], None if all_namespaces else namespace,
                               parse_label_selector(selector), wide)
    if name is not None:
        keep = [i for i, o in enumerate(objs) if o["metadata"]["name"] == name]
        if not keep:
            raise click.ClickException(f'Error from server (NotFound): {KINDS[kind]} "{name}" not found')
        rows, objs = [rows[keep[0]]], [objs[keep[0]]]
    if output and not wide:
        click.echo(render(objs[0] if name else as_list(objs), output), nl=False)
        return
    if not rows:
        click.echo(f"No resources found in {'any' if all_namespaces else namespace} namespace.", err=True)
        return
    if all_namespaces:
        header = ["NAMESPACE", *header]
        rows = [[o["metadata"]["namespace"], *r] for o, r in zip(objs, rows, strict=True)]
    click.echo(table(header, rows), nl=False)


@local.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("pod")
@click.option("-c", "--container", help="Container to run in [the pod's first container].")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-i", "--stdin", "stdin_", is_flag=True, help="Accepted for kubectl compatibility (stdin is passed).")
@click.option("-t", "--tty", is_flag=True, help="Accepted for kubectl compatibility.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_context
@_friendly_errors
def exec_(ctx: click.Context, pod: str, container: str | None, namespace: str, stdin_: bool, tty: bool,
          command: tuple[str, ...]) -> None:
    """Run COMMAND in a pod's container (its network, hostname, hosts file and user): POD -- CMD..."""
    _need_root()
    argv, env = queries.exec_command(queries.get_pod(_cluster(ctx).dir.load(), namespace, pod), container,
                                     list(command))
    try:
        code = subprocess.call(argv, env=env)
    except KeyboardInterrupt:
        code = 130
    ctx.exit(code)


def _follow(path: Path, still_there: Callable[[], bool]) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(65536)
            if chunk:
                yield chunk
                continue
            if not still_there():
                return
            time.sleep(0.2)


@local.command()
@click.argument("pod")
@click.argument("container", required=False)
@click.option("-c", "--container", "container_opt", help="Container whose log to print.")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until interrupted or the pod goes.")
@click.pass_context
@_friendly_errors
def logs(ctx: click.Context, pod: str, container: str | None, container_opt: str | None, namespace: str,
         follow: bool) -> None:
    """Print a container's log: POD [CONTAINER]."""
    cluster = _cluster(ctx)
    rec = queries.get_pod(cluster.dir.load(), namespace, pod)
    path = queries.log_path(cluster, rec, container_opt or container)
    if not path.exists():
        raise click.ClickException(f"container {path.stem} of pod {pod} has not started (no log yet)")
    out = sys.stdout.buffer
    if not follow:
        out.write(path.read_bytes())
        return
    try:
        for chunk in _follow(path, path.exists):
            out.write(chunk)
            out.flush()
    except KeyboardInterrupt:
        pass


@local.command()
@click.argument("kind", type=click.Choice(["pods", "pod"]), default="pods", required=False)
@click.option("-n", "--namespace", default="default", show_default=True)
@click.option("-l", "--selector", help="Label selector of the pods to wait for [all].")
@click.option("--timeout", type=click.FloatRange(0.1, 3600), default=90, show_default=True, help="Seconds.")
@click.pass_context
@_friendly_errors
def wait(ctx: click.Context, kind: str, namespace: str, selector: str | None, timeout: float) -> None:
    """Block until the selected pods have every container ready (like kubectl wait --for=condition=Ready)."""
    _need_root()
    for line in queries.wait_ready(_cluster(ctx), namespace, parse_label_selector(selector), timeout):
        click.echo(line)


@local.command()
@click.argument("kind", type=click.Choice(["deployment", "deployments", "deploy"]), metavar="deployment")
@click.argument("name")
@click.option("--replicas", type=int, required=True, help="The number of pods the Deployment should have.")
@click.option("-n", "--namespace", default="default", show_default=True)
@click.pass_context
@_friendly_errors
def scale(ctx: click.Context, kind: str, name: str, replicas: int, namespace: str) -> None:
    """Set a Deployment's replicas and start or delete pods to match: deployment NAME --replicas N."""
    _need_root()
    click.echo(workloads.scale(_cluster(ctx), namespace, name, replicas))

