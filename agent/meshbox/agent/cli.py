"""meshbox-agent: the command line of the proxy container's entrypoint."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shlex
import sys
import tempfile
from pathlib import Path

import click

from meshbox.agent.backoff import Backoff
from meshbox.agent.discovery_address import AddressError, check_address
from meshbox.agent.pod_identity import PodIdentityError, node_from_env, service_account_from_env
from meshbox.agent.sidecar import Sidecar, SidecarOptions, StartupError
from meshbox.agent.span_export import SpanExporter
from meshbox.agent.wait import wait_ready
from meshbox.agent.workload_identity import WorkloadIdentityManager
from meshbox.api import defaults
from meshbox.api.identity import IdentityError, WorkloadIdentity
from meshbox.api.loader import ConfigError, load_mesh_config
from meshbox.api.v1 import mesh_config_pb2
from meshbox.api.validation import ValidationError
from meshbox.api.workload import workload_name

DEFAULT_CA_ROOT_FILE = f"{defaults.CA_ROOT_DIR}/{defaults.CA_ROOT_KEY}"
DEFAULT_TOKEN_FILE = f"{defaults.WORKLOAD_TOKEN_DIR}/{defaults.WORKLOAD_TOKEN_NAME}"
CERT_BACKOFF = Backoff(base=0.5, cap=30.0)

_LOG_LEVELS = {
    mesh_config_pb2.DEBUG: logging.DEBUG,
    mesh_config_pb2.INFO: logging.INFO,
    mesh_config_pb2.WARNING: logging.WARNING,
    mesh_config_pb2.ERROR: logging.ERROR,
}


def default_proxy_command() -> str:
    """``meshbox-proxy`` from the same bin directory as the running interpreter."""
    return shlex.quote(str(Path(sys.executable).parent / "meshbox-proxy"))


def _read_roots(path: Path) -> bytes:
    try:
        roots = path.read_bytes()
    except OSError as exc:
        raise click.ClickException(
            f"cannot read the mesh CA's roots {path}: {exc.strerror}. In Kubernetes the injector mounts the "
            f"ConfigMap {defaults.CA_ROOT_CONFIG_MAP} (published by discovery) there; give --ca-root-file, or "
            "--plaintext for a plaintext discovery (tests and development only)") from None
    if b"-----BEGIN CERTIFICATE-----" not in roots:
        raise click.ClickException(f"{path} holds no PEM certificate")
    return roots


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
@click.option("--ca-root-file", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help=f"PEM root(s) to trust the mesh CA with at first contact. Default: {DEFAULT_CA_ROOT_FILE} "
                   "(the ConfigMap meshbox-ca-root the injector mounts).")
@click.option("--plaintext", is_flag=True,
              help="No workload certificate, discovery in PLAINTEXT: for tests and development only.")
@click.option("--ca-address", metavar="HOST:PORT",
              help=f"The mesh CA. Default: the mesh config's ca_address ({defaults.CA_ADDRESS}).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_TOKEN_FILE,
              show_default=True, help="The pod's service-account token, sent to the CA to prove the identity.")
@click.option("--cert-dir", type=click.Path(file_okay=False, path_type=Path), default=defaults.CERT_DIR,
              show_default=True, help="Where the workload key, certificate chain and trust bundle are written for "
                                      "the proxy (docs/security.md).")
@click.option("--trace-collector", metavar="HOST:PORT",
              help="OTLP/gRPC collector the proxy's spans are exported to; tracing is on when there is one. "
                   "Default: the mesh config's tracing.collector_address (empty: off).")
@click.option("--trace-sampling", type=click.FloatRange(0, 100), metavar="PCT",
              help="Percentage of new traces sampled. Default: the mesh config's tracing.sampling_percentage (1).")
@click.argument("proxy_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- PROXY ARGS...]")
def sidecar(
    discovery_address: str | None,
    mesh_config: str | None,
    status_port: int | None,
    admin_port: int | None,
    proxy_command: str | None,
    drain_seconds: float,
    ca_root_file: Path | None,
    plaintext: bool,
    ca_address: str | None,
    token_file: Path,
    cert_dir: Path,
    trace_collector: str | None,
    trace_sampling: float | None,
    proxy_args: tuple[str, ...],
) -> None:
    """Run the proxy, keep it configured from discovery, and report its readiness.

    Reads POD_NAME, POD_NAMESPACE, POD_IP and SERVICE_ACCOUNT from the environment (the injector
    sets them from the downward API). Gets a workload certificate from the mesh CA and speaks to
    discovery over mutual TLS with it (docs/security.md), unless --plaintext. The proxy's access
    log goes to this process's stdout unchanged.
    """
    try:
        mesh = load_mesh_config(mesh_config)
        node = node_from_env(os.environ)
        address = discovery_address or mesh.discovery_address
        check_address(address)
        collector = mesh.tracing.collector_address if trace_collector is None else trace_collector
        if collector:
            try:
                check_address(collector)
            except AddressError as exc:
                raise click.ClickException(f"--trace-collector / tracing.collector_address: {exc}") from None
        identity = None
        if plaintext and ca_root_file is not None:
            raise click.UsageError("--plaintext and --ca-root-file exclude each other")
        if not plaintext:
            ca = ca_address or mesh.ca_address
            check_address(ca)
            spiffe_id = WorkloadIdentity(mesh.trust_domain, node.pod_namespace,
                                         service_account_from_env(os.environ)).spiffe_id
            identity = WorkloadIdentityManager(
                ca_address=ca, spiffe_id=spiffe_id, token_file=token_file,
                initial_roots_pem=_read_roots(ca_root_file or Path(DEFAULT_CA_ROOT_FILE)),
                cert_dir=cert_dir, backoff=CERT_BACKOFF, rng=random.Random())
    except (ConfigError, ValidationError, PodIdentityError, AddressError, IdentityError) as exc:
        raise click.ClickException(str(exc)) from exc
    logging.basicConfig(
        level=_LOG_LEVELS.get(mesh.log_level, logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s meshbox-agent %(levelname)s %(message)s",
    )
    if identity is None:
        logging.getLogger("meshbox.agent").warning(
            "--plaintext: discovery in PLAINTEXT and no workload certificate (tests and development only)")
    admin = admin_port or mesh.ports.admin
    argv = shlex.split(default_proxy_command() if proxy_command is None else proxy_command)
    if not argv:
        raise click.BadParameter("must not be empty", param_hint="--proxy-command")
    argv += ["--admin-port", str(admin)]
    if mesh_config:
        argv += ["--mesh-config", mesh_config]
    if identity is not None:
        argv += ["--cert-dir", str(cert_dir)]  # the proxy's mutual TLS uses the files the agent writes there
    exporter = _span_exporter(collector, node.pod_name, node.pod_namespace)
    if exporter is not None:
        sampling = mesh.tracing.sampling_percentage if trace_sampling is None else trace_sampling
        argv += ["--trace-socket", exporter.socket_path, "--trace-sampling", repr(sampling)]
    argv += proxy_args
    options = SidecarOptions(
        discovery_address=address,
        node=node,
        proxy_argv=argv,
        admin_port=admin,
        status_port=mesh.ports.agent_status if status_port is None else status_port,
        drain_seconds=drain_seconds,
        identity=identity,
        span_exporter=exporter,
    )
    try:
        status = asyncio.run(Sidecar(options).run())
    except StartupError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(status)


def _span_exporter(collector: str, pod_name: str, namespace: str) -> SpanExporter | None:
    """The OTLP exporter of the proxy's spans when there is a collector (its socket in the temporary
    directory the agent and the proxy share)."""
    if not collector:
        return None
    path = os.path.join(tempfile.gettempdir(), f"meshbox-spans-{os.getpid()}.sock")
    return SpanExporter(path, collector, f"{workload_name(pod_name)}.{namespace}", namespace)


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
