"""meshbox-discovery: the control plane that serves each proxy its config."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click

from meshbox.api.defaults import CA_PORT, DISCOVERY_HTTP_PORT, DISCOVERY_PORT
from meshbox.api.loader import ConfigError, load_mesh_config
from meshbox.api.validation import ValidationError
from meshbox.discovery.ca_files import has_material
from meshbox.discovery.directory_source import DirectorySource, RegistryDirError
from meshbox.discovery.hub import Hub
from meshbox.discovery.server import PendingUpdate, Security, serve
from meshbox.discovery.tls_options import DISCOVERY_NAMESPACE, TlsOptions, security_from_options

HTTP_PORT = DISCOVERY_HTTP_PORT


async def _run(registry_dir: Path | None, kubernetes: bool, kubeconfig: str | None, host: str, grpc_port: int,
               http_port: int, poll_interval: float, debounce: float, tls: TlsOptions | None) -> None:
    security: Security | None = None
    if tls is not None:
        material = None
        if kubernetes and tls.ca_secret and not has_material(tls.ca_dir):
            from meshbox.discovery.ca_secret import load_or_create_secret
            from meshbox.discovery.kube_source import api_client_from_environment

            async with await api_client_from_environment(kubeconfig) as api:
                material = await load_or_create_secret(api, tls.namespace, tls.ca_secret, tls.trust_domain)
        security = security_from_options(tls, kubernetes=kubernetes, material=material)
    hub = Hub(trust_domain=tls.trust_domain if tls is not None else None)
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

        kube = KubernetesSource(await api_client_from_environment(kubeconfig), pending.offer)
        source = kube.run
        if security is not None:
            from kubernetes_asyncio import client

            from meshbox.discovery.root_publisher import RootPublisher

            # Injected pods trust the CA at first contact through this namespace ConfigMap.
            publisher = RootPublisher(client.ApiClient(), security.keeper)

            async def watch_and_publish() -> None:
                await asyncio.gather(kube.run(), publisher.run())

            source = watch_and_publish
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await serve(source, hub, host=host, grpc_port=grpc_port, http_port=http_port, security=security)
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
              help="HTTP port for /ready, /metrics, /registry/errors and /debug/syncz (0 = any free port).")
@click.option("--poll-interval", type=click.FloatRange(0.05, 60), default=0.5, show_default=True,
              help="Seconds between checks of --registry-dir for changes.")
@click.option("--debounce", type=click.FloatRange(0, 10), default=0.1, show_default=True,
              help="Seconds of quiet before a registry change is pushed (at most 10x this, min 1s, after the first).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.option("--mesh-config", type=click.Path(dir_okay=False, path_type=Path),
              help="Mesh config YAML (trust domain). Default: built-in defaults.")
@click.option("--ca-dir", type=click.Path(file_okay=False, path_type=Path),
              help="The mesh CA's directory (ca.crt, ca.key, optional roots.pem; generated there if empty and "
                   "writable): the CA port, and mutual TLS on the discovery port.")
@click.option("--plaintext", is_flag=True,
              help="Instead of --ca-dir: no CA, gRPC in PLAINTEXT, no node identity checks (tests and development "
                   "only).")
@click.option("--ca-port", type=click.IntRange(0, 65535), default=CA_PORT, show_default=True,
              help="CA gRPC port (TLS; CertificateService), with --ca-dir. 0 = any free port.")
@click.option("--server-name", "server_names", multiple=True, metavar="NAME",
              help="DNS name or IP in discovery's serving certificate (repeatable). Default: the "
                   "meshbox-discovery Service's names in meshbox-system.")
@click.option("--local-token-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Check CSR callers' tokens with this local-cluster key (meshctl local) instead of a TokenReview.")
@click.option("--token-review-url", metavar="URL",
              help="API server for TokenReviews. Default: the cluster discovery runs in.")
@click.option("--token-review-ca-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="CA bundle of --token-review-url.")
@click.option("--token-review-token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Discovery's own bearer token for --token-review-url.")
@click.option("--token-audience", "token_audiences", multiple=True, metavar="AUD",
              help="Audience CSR callers' tokens must be for (repeatable; TokenReview only). Default: the API "
                   "server's.")
@click.option("--ca-secret", metavar="NAME",
              help="With --kubernetes: the Secret (in $POD_NAMESPACE, else meshbox-system) mounted as --ca-dir; "
                   "while the directory is empty it is read through the API, or created with a new root.")
@click.option("--workload-cert-ttl", type=click.FloatRange(2, 7 * 86400), default=86400, show_default=True,
              metavar="SECONDS", help="Lifetime of workload certificates a CSR does not ask otherwise for.")
def main(registry_dir: Path | None, kubernetes: bool, kubeconfig: str | None, listen_address: str, grpc_port: int,
         http_port: int, poll_interval: float, debounce: float, log_level: str, mesh_config: Path | None,
         ca_dir: Path | None, plaintext: bool, ca_port: int, server_names: tuple[str, ...],
         local_token_key: Path | None, token_review_url: str | None, token_review_ca_file: Path | None,
         token_review_token_file: Path | None,
         token_audiences: tuple[str, ...], ca_secret: str | None, workload_cert_ttl: float) -> None:
    """Serve proxy configuration (DiscoveryService/StreamResources) built from a service registry,
    and, with --ca-dir, the mesh CA (CertificateService) with discovery over mutual TLS."""
    if (registry_dir is None) == (not kubernetes):
        raise click.UsageError("give exactly one registry source: --registry-dir DIR or --kubernetes")
    if (ca_dir is None) == (not plaintext):
        raise click.UsageError("give --ca-dir DIR (the mesh CA, mutual TLS) or --plaintext (tests and development "
                               "only)")
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        mesh = load_mesh_config(mesh_config)
    except (ConfigError, ValidationError) as exc:
        raise click.ClickException(str(exc)) from exc
    tls = None
    if ca_dir is not None:
        tls = TlsOptions(ca_dir=ca_dir, ca_port=ca_port, trust_domain=mesh.trust_domain,
                         server_names=list(server_names), local_token_key=local_token_key,
                         token_review_url=token_review_url, token_review_ca_file=token_review_ca_file,
                         token_review_token_file=token_review_token_file, token_audiences=token_audiences,
                         workload_cert_ttl=workload_cert_ttl, ca_secret=ca_secret,
                         namespace=os.environ.get("POD_NAMESPACE") or DISCOVERY_NAMESPACE)
    elif local_token_key or token_review_url or ca_secret:
        raise click.UsageError("CA options need --ca-dir (the CA is what checks tokens)")
    if ca_secret and not kubernetes:
        raise click.UsageError("--ca-secret needs --kubernetes")
    try:
        asyncio.run(_run(registry_dir, kubernetes, kubeconfig, listen_address, grpc_port, http_port,
                         poll_interval, debounce, tls))
    except RegistryDirError as exc:
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:  # CA files, token key: the message names the file
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot start: {exc}") from exc
