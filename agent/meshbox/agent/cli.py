"""meshbox-agent: the command line of the proxy container's entrypoint."""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import sys
from pathlib import Path

import click

from meshbox.agent.discovery_address import AddressError, check_address
from meshbox.agent.pod_identity import PodIdentityError, node_from_env
from meshbox.agent.sidecar import Sidecar, SidecarOptions, StartupError
from meshbox.agent.wait import wait_ready
from meshbox.api import defaults
from meshbox.api.loader import ConfigError, load_mesh_config
from meshbox.api.v1 import mesh_config_pb2
from meshbox.api.validation import ValidationError

_LOG_LEVELS = {
    mesh_config_pb2.DEBUG: logging.DEBUG,
    mesh_config_pb2.INFO: logging.INFO,
    mesh_config_pb2.WARNING: logging.WARNING,
    mesh_config_pb2.ERROR: logging.ERROR,
}


def default_proxy_command() -> str:
    """``meshbox-proxy`` from the same bin directory as the running interpreter."""
    return shlex.quote(str(Path(sys.executable).parent / "meshbox-proxy"))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """meshbox agent: the proxy container's entrypoint.

    `sidecar` runs the proxy and feeds it config from discovery; `wait` blocks until
    the local sidecar is ready.
    """


@main.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--discovery-address", metavar="HOST:PORT",
              help="Discovery server's gRPC address. Default: the mesh config's discovery_address "
                   f"({defaults.DISCOVERY_ADDRESS}).")
@click.option("--mesh-config", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
              help="Mesh config YAML (ports, log level); also passed on to the proxy.")
@click.option("--status-port", type=click.IntRange(0, 65535), metavar="N",
              help=f"Status server port (/healthz/ready, /quitquitquit) on all addresses; 0 picks a free one. "
                   f"Default: the mesh config's ports.agent_status ({defaults.AGENT_STATUS_PORT}).")
@click.option("--admin-port", type=click.IntRange(1, 65535), metavar="N",
              help=f"Proxy admin port on 127.0.0.1, passed to the proxy as --admin-port. "
                   f"Default: the mesh config's ports.admin ({defaults.ADMIN_PORT}).")
@click.option("--proxy-command", metavar="CMD",
              help="Command that starts the proxy (shell-style words). Default: meshbox-proxy next to this agent.")
@click.option("--drain-seconds", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="On SIGTERM, how long the proxy drains its listeners before it is stopped.")
@click.argument("proxy_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- PROXY ARGS...]")
def sidecar(
    discovery_address: str | None,
    mesh_config: str | None,
    status_port: int | None,
    admin_port: int | None,
    proxy_command: str | None,
    drain_seconds: float,
    proxy_args: tuple[str, ...],
) -> None:
    """Run the proxy, keep it configured from discovery, and report its readiness.

    Reads POD_NAME, POD_NAMESPACE and POD_IP from the environment (the injector sets them
    from the downward API). The proxy's access log goes to this process's stdout unchanged.
    """
    try:
        mesh = load_mesh_config(mesh_config)
        node = node_from_env(os.environ)
        address = discovery_address or mesh.discovery_address
        check_address(address)
    except (ConfigError, ValidationError, PodIdentityError, AddressError) as exc:
        raise click.ClickException(str(exc)) from exc
    logging.basicConfig(
        level=_LOG_LEVELS.get(mesh.log_level, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s meshbox-agent %(levelname)s %(message)s",
    )
    admin = admin_port or mesh.ports.admin
    argv = shlex.split(default_proxy_command() if proxy_command is None else proxy_command)
    if not argv:
        raise click.BadParameter("must not be empty", param_hint="--proxy-command")
    argv += ["--admin-port", str(admin)]
    if mesh_config:
        argv += ["--mesh-config", mesh_config]
    argv += proxy_args
    options = SidecarOptions(
        discovery_address=address,
        node=node,
        proxy_argv=argv,
        admin_port=admin,
        status_port=mesh.ports.agent_status if status_port is None else status_port,
        drain_seconds=drain_seconds,
    )
    try:
        status = asyncio.run(Sidecar(options).run())
    except StartupError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(status)


@main.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--status-port", type=click.IntRange(1, 65535), default=defaults.AGENT_STATUS_PORT,
              show_default=True, metavar="N", help="The local agent's status port.")
@click.option("--timeout", type=click.FloatRange(min=0), default=60.0, show_default=True, metavar="S",
              help="Give up after this many seconds (exit status 1).")
def wait(status_port: int, timeout: float) -> None:
    """Block until the local sidecar is ready (GET /healthz/ready answers 200)."""
    ready, detail = asyncio.run(wait_ready(status_port, timeout))
    if not ready:
        raise click.ClickException(f"sidecar not ready after {timeout:g}s: {detail}")
    click.echo(f"sidecar ready: {detail}")
