"""`meshctl demo` (what `make demo` runs): the tutorial, command by command, with real output.

Where Docker and kind are usable it runs deploy/kind/demo.sh; otherwise it replays the tutorial
on a throw-away local cluster (its own state directory and namespace prefix, removed at the end)
and finishes with the request id traced through both proxies.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import click

REPO = Path(__file__).resolve().parents[3]
APPS = REPO / "e2e" / "apps.yaml"
KIND_DEMO = REPO / "deploy" / "kind" / "demo.sh"
UUID = re.compile(r"x-request-id=([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
POD = "meshctl local get pod -l app={app} -o jsonpath='{{.items[0].metadata.name}}'"
INJECTED = ("meshctl local get deployment service-one -o jsonpath="
            "'init args: {.spec.template.spec.initContainers[0].args}, "
            "capabilities: {.spec.template.spec.initContainers[0].securityContext.capabilities.add}{\"\\n\"}"
            "proxy runAsUser: {.spec.template.spec.containers[1].securityContext.runAsUser}, "
            "env: {.spec.template.spec.containers[1].env[*].name}{\"\\n\"}'")


MTLS_PEERS = ("meshctl local logs ${CLIENT} proxy | grep -m1 'mutual TLS'\n"
              "meshctl local logs ${SERVER} proxy | grep -m1 'mutual TLS'")


class DemoFailed(click.ClickException):
    """A tutorial step did not do what the tutorial says."""


@dataclass(frozen=True)
class Step:
    """One tutorial step: what it shows, the command, and whether a failing exit code is expected."""

    title: str
    command: str
    may_fail: bool = False


def tutorial_steps(request_id: str | None = None) -> list[Step]:
    """The tutorial's steps in order (the log and trace steps need the request id found before them)."""
    rid = request_id or "<request id>"
    return [
        Step("Start the local cluster", "meshctl local up"),
        Step("Inject the sidecar and deploy", "meshctl local apply -f <(meshctl kube-inject -f apps.yaml)"),
        Step("Wait for both pods (app + proxy ready)", "meshctl local wait --timeout 60"),
        Step("The pods", "meshctl local get pods -o wide"),
        Step("Call service-two from service-one's app",
             "meshctl local exec -it ${CLIENT} -c app -- curl service-two:80 | grep x-request-id"),
        Step("The client's proxy logged the outbound request", f"meshctl local logs ${{CLIENT}} proxy | grep {rid}"),
        Step("The server's proxy logged the inbound request", f"meshctl local logs ${{SERVER}} proxy | grep {rid}"),
        Step("Between the pods, mutual TLS: each proxy names the other's identity", MTLS_PEERS),
        Step("Localhost traffic is not intercepted (no request id, no proxy log line)",
             "meshctl local exec -it ${SERVER} -c app -- curl localhost:8080 | grep x-request-id", may_fail=True),
        Step("What injection added to the deployment", INJECTED),
        Step("The request, hop by hop", f"meshctl trace {rid}"),
        Step("Clean up", "meshctl local delete -f apps.yaml"),
        Step("Remove the cluster", "meshctl local down"),
    ]


def kind_usable() -> bool:
    """Docker (with a reachable daemon) and kind are both here."""
    if not (shutil.which("docker") and shutil.which("kind")):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False).returncode == 0


class Runner:
    """Runs steps in bash against one cluster, echoing each command and its output."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env

    def capture(self, command: str) -> str:
        result = subprocess.run(["bash", "-c", command], cwd=self.workdir, env=self.env, capture_output=True,
                                text=True, timeout=120, check=False)
        if result.returncode != 0:
            raise DemoFailed(f"{command} failed: {result.stderr.strip() or result.stdout.strip()}")
        return result.stdout.strip()

    def step(self, number: int, step: Step) -> str:
        click.secho(f"\n## {number}. {step.title}", bold=True)
        click.secho(f"$ {step.command}", fg="cyan")
        result = subprocess.run(["bash", "-c", step.command], cwd=self.workdir, env=self.env, capture_output=True,
                                text=True, timeout=120, check=False)
        click.echo(result.stdout, nl=False)
        if result.returncode != 0 and not step.may_fail:
            click.echo(result.stderr, nl=False, err=True)
            raise DemoFailed(f"step {number} ({step.title}) failed with exit code {result.returncode}")
        if not result.stdout.strip():
            click.echo("(no output)")
        return result.stdout


def run_local(keep: bool) -> str:
    """Replay the tutorial on a fresh local cluster; returns the trace of the request."""
    if not APPS.exists():
        raise click.ClickException(f"{APPS} not found: run the demo from a meshbox source tree (make demo)")
    workdir = Path(tempfile.mkdtemp(prefix="meshbox-demo-"))
    shutil.copy(APPS, workdir / "apps.yaml")
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               MESHBOX_LOCAL_STATE=str(workdir / "state"), MESHBOX_LOCAL_PREFIX="demo" + uuid.uuid4().hex[:4])
    runner = Runner(workdir, env)
    steps = tutorial_steps()
    traced = ""
    try:
        for number, step in enumerate(steps[:4], 1):
            runner.step(number, step)
        env["CLIENT"] = runner.capture(POD.format(app="service-one"))
        env["SERVER"] = runner.capture(POD.format(app="service-two"))
        click.echo(f"\nCLIENT={env['CLIENT']}\nSERVER={env['SERVER']}")
        found = UUID.search(runner.step(5, steps[4]))
        if found is None:
            raise DemoFailed("the answer of service-two has no x-request-id: the request did not go through a proxy")
        rid = found.group(1)
        steps = tutorial_steps(rid)
        for number in range(6, 12 if keep else 14):
            out = runner.step(number, steps[number - 1])
            if number == 8 and out.count("mutual TLS") != 2:
                raise DemoFailed("the proxies did not log a mutual TLS connection between the pods")
            if number == 9 and out.strip():
                raise DemoFailed("localhost traffic went through the proxy (the answer carries a request id)")
            if number == 11:
                traced = out
    finally:
        if not keep:
            subprocess.run(["bash", "-c", "meshctl local down"], cwd=workdir, env=env, capture_output=True,
                           timeout=120, check=False)
            shutil.rmtree(workdir, ignore_errors=True)
    if keep:
        click.echo(f"\nThe cluster is still up: export MESHBOX_LOCAL_STATE={env['MESHBOX_LOCAL_STATE']} "
                   f"MESHBOX_LOCAL_PREFIX={env['MESHBOX_LOCAL_PREFIX']}; cd {workdir}")
    return traced


def dashboard_hint(keep: bool) -> str:
    """Where the demo points at the dashboard (it does not start it: the demo ends, the dashboard would not)."""
    if keep:
        return ("See the mesh live: meshctl dashboard  (with the export above; prints its URL: the service graph "
                "and golden signals from the cluster's Prometheus)")
    return ("See the mesh live: meshctl demo --keep, then meshctl dashboard with the export it prints "
            "(service graph and golden signals from the cluster's Prometheus; docs/observability.md)")


@click.command("demo")
@click.option("--local", "force_local", is_flag=True, help="Use the local cluster even where kind is usable.")
@click.option("--keep", is_flag=True, help="Leave the local cluster and the apps running at the end.")
def demo(force_local: bool, keep: bool) -> None:
    """Replay the tutorial (inject, deploy, call, find the request id in both proxies' logs).

    Uses kind (deploy/kind/demo.sh) where Docker and kind are usable, else a local cluster of
    network namespaces, which needs root. Prints every command with its real output.
    """
    if not force_local and KIND_DEMO.exists() and kind_usable():
        click.echo(f"docker and kind are usable: running {KIND_DEMO}")
        raise SystemExit(subprocess.call([str(KIND_DEMO)]))
    if os.geteuid() != 0:
        raise click.ClickException(
            "the demo needs root: without Docker and kind it runs the tutorial on a local cluster made of "
            "network namespaces and iptables, which only root can create. Run it as root (sudo make demo).")
    click.echo("Replaying 'Installing Istio Sidecar' with meshbox on a local cluster (network namespaces).")
    traced = run_local(keep)
    click.secho("\nThe request, traced through both proxies:", bold=True)
    click.echo(traced, nl=False)
    click.secho(f"\n{dashboard_hint(keep)}", bold=True)
