"""The click commands ``meshctl proxy-status`` and ``meshctl proxy-config``."""

from __future__ import annotations

from pathlib import Path

import click

from meshbox.cluster.state import DEFAULT_STATE_DIR, STATE_ENV
from meshbox.ctl import proxy_config, proxy_status
from meshbox.ctl.local_access import LocalClusterAccess
from meshbox.ctl.mesh_access import DirectAccess, KubernetesAccess, MeshAccess

OUTPUT = click.Choice(["table", "json", "yaml"])


STATE_DIR = click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
                         help=f"The local cluster's state [${STATE_ENV}, else {DEFAULT_STATE_DIR}].")


def choose_access(*, discovery: str | None = None, admin: str | None = None, kubernetes: bool,
                  state_dir: Path | None) -> MeshAccess:
    """Explicit addresses first, then Kubernetes when asked, else the local cluster."""
    if discovery or admin:
        return DirectAccess(discovery, admin)
    if kubernetes:
        return KubernetesAccess()
    return LocalClusterAccess(state_dir)


@click.command("proxy-status")
@click.argument("pod", required=False)
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace of POD.")
@click.option("-o", "--output", type=OUTPUT, default="table", show_default=True)
@click.option("--discovery", metavar="URL", help="Discovery's HTTP port, e.g. http://127.0.0.1:15014.")
@click.option("--kubernetes", is_flag=True, help="Reach discovery through kubectl and the API server.")
@STATE_DIR
def proxy_status_command(pod: str | None, namespace: str, output: str, discovery: str | None,
                         kubernetes: bool, state_dir: Path | None) -> None:
    """Every proxy connected to discovery and, per resource type, whether it runs what discovery serves it.

    SYNCED: ACKed the current version. STALE: sent, not ACKed yet (or a newer version is on its way).
    NOT SENT: nothing sent yet. NACKED: the proxy refused the latest version (the error is shown).
    With POD: that proxy's versions (served, sent, ACKed) per type. Default: the local cluster.
    """
    access = choose_access(discovery=discovery, kubernetes=kubernetes, state_dir=state_dir)
    click.echo(proxy_status.render(proxy_status.fetch_proxies(access), pod, namespace, output), nl=False)


@click.command("proxy-config")
@click.argument("what", type=click.Choice(sorted(proxy_config.SECTIONS)))
@click.argument("pod")
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace of POD.")
@click.option("-o", "--output", type=OUTPUT, default="table", show_default=True)
@click.option("--admin", metavar="URL", help="The proxy's admin API, e.g. http://127.0.0.1:15000.")
@click.option("--kubernetes", is_flag=True, help="Reach the proxy through kubectl port-forward and the API server.")
@STATE_DIR
def proxy_config_command(what: str, pod: str, namespace: str, output: str, admin: str | None,
                         kubernetes: bool, state_dir: Path | None) -> None:
    """The live listeners, routes, clusters or endpoints of POD's proxy (its admin /config_dump).

    Default: POD of the local cluster.
    """
    access = choose_access(admin=admin, kubernetes=kubernetes, state_dir=state_dir)
    click.echo(proxy_config.render(proxy_config.fetch_config(access, pod, namespace), what, output), nl=False)
