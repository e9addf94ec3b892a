"""meshctl: the user-facing command line of meshbox."""

from __future__ import annotations

import importlib.metadata

import click

from meshbox.ctl.analyze import analyze_command
from meshbox.ctl.dashboard.command import dashboard
from meshbox.ctl.demo import demo
from meshbox.ctl.inspect_commands import proxy_config_command, proxy_status_command
from meshbox.ctl.install import install
from meshbox.ctl.kube_inject import kube_inject, kube_uninject
from meshbox.ctl.local import local
from meshbox.ctl.trace import trace

DISTRIBUTIONS = (
    "meshbox-api",
    "meshbox-init",
    "meshbox-injector",
    "meshbox-proxy",
    "meshbox-agent",
    "meshbox-discovery",
    "meshbox-cluster",
    "meshbox-ctl",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """meshbox: a service mesh in a box.

    Inject sidecars into Kubernetes manifests, run the tutorial on a local mesh
    made of network namespaces, trace a request through the proxies, watch the
    mesh on a live dashboard, inspect what config each proxy runs, and check
    traffic manifests (Istio's VirtualService, DestinationRule, ServiceEntry) offline.
    """


@main.command()
def version() -> None:
    """Print the version of every meshbox component installed here."""
    for dist in DISTRIBUTIONS:
        try:
            v = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            v = "not installed"
        click.echo(f"{dist:<20} {v}")


main.add_command(analyze_command)
main.add_command(install)
main.add_command(kube_inject)
main.add_command(kube_uninject)
main.add_command(local)
main.add_command(trace)
main.add_command(demo)
main.add_command(dashboard)
main.add_command(proxy_status_command)
main.add_command(proxy_config_command)
