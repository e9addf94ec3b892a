"""The click commands ``meshctl proxy-status`` and ``meshctl proxy-config``."""

from __future__ import annotations

import click

from meshbox.ctl import proxy_config, proxy_status
from meshbox.ctl.mesh_access import DirectAccess, KubernetesAccess, MeshAccess

OUTPUT = click.Choice(["table", "json", "yaml"])


def choose_access(*, discovery: str | None = None, admin: str | None = None, kubernetes: bool) -> MeshAccess:
    """Explicit addresses first, then Kubernetes when asked."""
    if discovery or admin:
        return DirectAccess(discovery, admin)
    if kubernetes:
        return KubernetesAccess()
    raise click.UsageError("say where the mesh is: --kubernetes, or --discovery URL / --admin URL")


@click.command("proxy-status")
@click.argument("pod", required=False)
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace of POD.")
@click.option("-o", "--output", type=OUTPUT, default="table", show_default=True)
@click.option("--discovery", metavar="URL", help="Discovery's HTTP port, e.g. http://127.0.0.1:15014.")
@click.option("--kubernetes", is_flag=True, help="Reach discovery through kubectl and the API server.")
def proxy_status_command(pod: str | None, namespace: str, output: str, discovery: str | None,
                         kubernetes: bool) -> None:
    """Every proxy connected to discovery and, per resource type, whether it runs what discovery serves it.

    SYNCED: ACKed the current version. STALE: sent, not ACKed yet (or a newer version is on its way).
    NOT SENT: nothing sent yet. NACKED: the proxy refused the latest version (the error is shown).
    With POD: that proxy's versions (served, sent, ACKed) per type.
    """
    access = choose_access(discovery=discovery, kubernetes=kubernetes)
    click.echo(proxy_status.render(proxy_status.fetch_proxies(access), pod, namespace, output), nl=False)


@click.command("proxy-config")
@click.argument("what", type=click.Choice(sorted(proxy_config.SECTIONS)))
@click.argument("pod")
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace of POD.")
@click.option("-o", "--output", type=OUTPUT, default="table", show_default=True)
@click.option("--admin", metavar="URL", help="The proxy's admin API, e.g. http://127.0.0.1:15000.")
@click.option("--kubernetes", is_flag=True, help="Reach the proxy through kubectl port-forward and the API server.")
def proxy_config_command(what: str, pod: str, namespace: str, output: str, admin: str | None,
                         kubernetes: bool) -> None:
    """The live listeners, routes, clusters or endpoints of POD's proxy (its admin /config_dump)."""
    access = choose_access(admin=admin, kubernetes=kubernetes)
    click.echo(proxy_config.render(proxy_config.fetch_config(access, pod, namespace), what, output), nl=False)
