"""The click command ``meshctl dashboard``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import click

from meshbox.cluster.state import DEFAULT_STATE_DIR, STATE_ENV
from meshbox.ctl.dashboard import app
from meshbox.ctl.dashboard.prometheus_api import Prometheus, PrometheusError
from meshbox.ctl.local_access import local_prometheus


async def _serve(address: str, port: int) -> None:
    prometheus = Prometheus(address)
    runner, url = await app.start(prometheus, port)
    try:
        async with Prometheus(address) as probe:
            try:
                await probe.instant("vector(1)")
            except PrometheusError as exc:
                click.echo(f"warning: {exc} (the page shows the error until it answers)", err=True)
        click.echo(f"meshbox dashboard: {url}  (Prometheus: {address}; Ctrl-C stops it)", err=False)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(address: str, port: int) -> None:
    """Serve the dashboard until SIGINT/SIGTERM; a port that cannot be bound is a clear error."""
    try:
        asyncio.run(_serve(address, port))
    except (OSError, PrometheusError) as exc:
        raise click.ClickException(str(exc)) from None


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Port on 127.0.0.1 (0: a free one).")
@click.option("--prometheus", "address", metavar="URL",
              help="Prometheus to read: http(s)://HOST:PORT, or unix:PATH. Default: the local cluster's.")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              help=f"The local cluster's state, for its Prometheus [${STATE_ENV}, else {DEFAULT_STATE_DIR}].")
def dashboard(port: int, address: str | None, state_dir: Path | None) -> None:
    """Serve the live service graph and per-workload golden signals on 127.0.0.1.

    Reads Istio's standard request metrics from Prometheus with PromQL; prints the page's URL.
    JSON API: GET /api/graph?window=1m, GET /api/workload?id=NS/WORKLOAD.
    """
    if address is None:
        address = local_prometheus(state_dir)
    with contextlib.suppress(KeyboardInterrupt):
        serve(address, port)
