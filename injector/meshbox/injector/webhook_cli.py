"""`meshbox-webhook`: the sidecar-injection admission webhook (the control-plane image runs it)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

from meshbox.api.loader import ConfigError, load_mesh_config
from meshbox.injector.inject import InjectSettings
from meshbox.injector.settings import SettingsError, load_template
from meshbox.injector.webhook_policy import DEFAULT_MESH_NAMESPACE, InjectionPolicy
from meshbox.injector.webhook_server import CertificateError, CertificateReloader, WebhookServer

DEFAULT_PORT = 15017

_existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--tls-cert-file", type=_existing_file, required=True,
              help="PEM serving certificate (chain); reloaded when the file changes.")
@click.option("--tls-key-file", type=_existing_file, required=True, help="PEM private key of the certificate.")
@click.option("--address", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True,
              help="HTTPS port (0 picks a free one and prints it).")
@click.option("--mesh-config", type=_existing_file, help="Mesh config YAML (hub, tag, ports, capture ranges).")
@click.option("--inject-config-file", type=_existing_file,
              help="Sidecar template YAML, the same format as `meshctl kube-inject --injectConfigFile`.")
@click.option("--mesh-namespace", default=DEFAULT_MESH_NAMESPACE, show_default=True,
              help="The mesh's own namespace: its pods are never injected.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def main(tls_cert_file: Path, tls_key_file: Path, address: str, port: int, mesh_config: Path | None,
         inject_config_file: Path | None, mesh_namespace: str, log_level: str) -> None:
    """Serve sidecar injection for Kubernetes (POST /inject, GET /ready) over HTTPS."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        mesh = load_mesh_config(mesh_config)
        template = load_template(inject_config_file) if inject_config_file else None
        settings = InjectSettings.from_mesh_config(mesh, **({"template": template} if template else {}))
        certificates = CertificateReloader(tls_cert_file, tls_key_file)
    except (ConfigError, SettingsError, CertificateError) as e:
        raise click.ClickException(str(e)) from None
    policy = InjectionPolicy(settings=settings, mesh_namespace=mesh_namespace)
    try:
        server = WebhookServer((address, port), certificates, policy.decide)
    except OSError as e:
        raise click.ClickException(f"cannot listen on {address}:{port}: {e.strerror}") from None

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return, so it must run on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    click.echo(f"meshbox-webhook listening on https://{address}:{server.port}/inject", err=True)
    with server:
        server.serve_forever()
