"""meshctl: the user-facing command line of meshbox."""

from __future__ import annotations

import importlib.metadata

import click

from meshbox.ctl.demo import demo
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
    made of network namespaces, and trace a request through the proxies.
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


main.add_command(install)
main.add_command(kube_inject)
main.add_command(kube_uninject)
main.add_command(local)
main.add_command(trace)
main.add_command(demo)
