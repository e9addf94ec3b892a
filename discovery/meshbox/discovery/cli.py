"""meshbox-discovery: the control plane that serves each proxy its config."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click

from meshbox.api.defaults import DISCOVERY_HTTP_PORT, DISCOVERY_PORT
from meshbox.discovery.directory_source import DirectorySource, RegistryDirError
from meshbox.discovery.hub import Hub
from meshbox.discovery.server import PendingUpdate, serve

HTTP_PORT = DISCOVERY_HTTP_PORT


async def _run(registry_dir: Path | None, kubernetes: bool, kubeconfig: str | None, host: str, grpc_port: int,
               http_port: int, poll_interval: float, debounce: float) -> None:
    hub = Hub()
    pending = PendingUpdate(hub, quiet=debounce, max_wait=max(debounce * 10, 1.0))
    if registry_dir is not None:
        directory = DirectorySource(registry_dir)
        hub.update(directory.load())
        source: Callable[[], Coroutine[Any, Any, None]] = functools.partial(
            directory.watch, pending.offer, interval=poll_interval)
    else:
        # Imported only here: kubernetes_asyncio takes a second or two to import, which the
        # registry-directory mode (local clusters, tests) should not pay at every start.
        from meshbox.discovery.kube_source import KubernetesSource, api_client_from_environment

        source = KubernetesSource(await api_client_from_environment(kubeconfig), pending.offer).run
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serve(source, hub, host=host, grpc_port=grpc_port, http_port=http_port)
    await pending.close()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--registry-dir", type=click.Path(path_type=Path),
              help="Directory of Kubernetes-shaped YAML (Services, Pods, Endpoints/EndpointSlices, RouteRules), "
                   "watched for changes.")
@click.option("--kubernetes", is_flag=True,
              help="Read the registry from the Kubernetes API (in-cluster config, else kubeconfig).")
@click.option("--kubeconfig", help="Kubeconfig file for --kubernetes outside a cluster.")
@click.option("--listen-address", default="0.0.0.0", show_default=True, help="Address both servers bind.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=DISCOVERY_PORT, show_default=True,
              help="Discovery gRPC port (0 = any free port, printed at start).")
@click.option("--http-port", type=click.IntRange(0, 65535), default=HTTP_PORT, show_default=True,
              help="HTTP port for /ready, /metrics and /registry/errors (0 = any free port).")
@click.option("--poll-interval", type=click.FloatRange(0.05, 60), default=0.5, show_default=True,
              help="Seconds between checks of --registry-dir for changes.")
@click.option("--debounce", type=click.FloatRange(0, 10), default=0.1, show_default=True,
              help="Seconds of quiet before a registry change is pushed (at most 10x this, min 1s, after the first).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def main(registry_dir: Path | None, kubernetes: bool, kubeconfig: str | None, listen_address: str, grpc_port: int,
         http_port: int, poll_interval: float, debounce: float, log_level: str) -> None:
    """Serve proxy configuration (DiscoveryService/StreamResources) built from a service registry."""
    if (registry_dir is None) == (not kubernetes):
        raise click.UsageError("give exactly one registry source: --registry-dir DIR or --kubernetes")
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_run(registry_dir, kubernetes, kubeconfig, listen_address, grpc_port, http_port,
                         poll_interval, debounce))
    except RegistryDirError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot start: {exc}") from exc
