"""meshbox-proxy: the sidecar data plane (see docs/proxy.md)."""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Callable

import click

from meshbox.api.v1 import mesh_config_pb2
from meshbox.api.workload import workload_name
from meshbox.proxy.access_log import FormatError, compile_format
from meshbox.proxy.codec import CODECS
from meshbox.proxy.config_compiler import compile_config
from meshbox.proxy.config_files import ConfigFileError, load_config_files
from meshbox.proxy.context import BODY_IDLE_TIMEOUT, HEAD_TIMEOUT, IDLE_TIMEOUT
from meshbox.proxy.runtime import Options, run_or_explain
from meshbox.proxy.snapshot import ConfigRejected, Workload


def workload_from_env(environ: dict[str, str] | os._Environ[str]) -> Workload:
    """Workload name and namespace for metric labels, from the downward-API variables the injector sets."""
    name = workload_name(environ.get("POD_NAME", ""))
    return Workload(name=name, namespace=environ.get("POD_NAMESPACE") or "unknown",
                    app=environ.get("APP") or name)


def _port(value: int | None, default: int, flag: str) -> int:
    port = default if value is None else value
    if not 0 <= port <= 65535:
        raise click.BadParameter(f"must be 0..65535, got {port}", param_hint=flag)
    return port


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Static ProxyConfig YAML (listeners, route_configs, clusters, endpoints). Without it the proxy "
                   "starts empty and is not ready until a config is POSTed to the admin /config.")
@click.option("--mesh-config", "mesh_path", type=click.Path(dir_okay=False),
              help="MeshConfig YAML: default ports, outbound traffic policy, access log format.")
@click.option("--admin-port", type=int, help="Admin API port on 127.0.0.1 (default 15000; 0 = any free port).")
@click.option("--outbound-port", type=int, help="Outbound capture port (default 15001; 0 = any free port).")
@click.option("--inbound-port", type=int,
              help="Inbound capture port (default from mesh config; 0 = single-port mode, the outbound port "
                   "serves both directions).")
@click.option("--pod-ip", envvar="POD_IP", help="This pod's IP: connections to it are inbound. [env POD_IP]")
@click.option("--codec", type=click.Choice(sorted(CODECS)), default="httptools", show_default=True,
              help="HTTP/1.1 parser: httptools (llhttp, fast) or h11 (pure-Python reference).")
@click.option("--concurrency", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes sharing the listeners with SO_REUSEPORT.")
@click.option("--access-log-format", default=None,
              help="Envoy %FIELD% format of access log lines (default: mesh config, else Envoy's default).")
@click.option("--request-head-timeout", type=click.FloatRange(min=0), default=HEAD_TIMEOUT, show_default=True,
              help="Seconds a client may take to send a request head, from its first byte (408, flag SI; 0 = off).")
@click.option("--request-idle-timeout", type=click.FloatRange(min=0), default=BODY_IDLE_TIMEOUT, show_default=True,
              help="Seconds a request body may go without progress (408 or reset, flag SI; 0 = off).")
@click.option("--idle-timeout", type=click.FloatRange(min=0), default=IDLE_TIMEOUT, show_default=True,
              help="Seconds a kept-alive client connection may wait for its next request before it is closed, "
                   "and a pooled upstream HTTP/2 connection may stay without a stream (0 = off).")
@click.option("--cert-dir", type=click.Path(file_okay=False),
              help="The agent's workload certificate directory (current/key.pem, cert-chain.pem, root-cert.pem): "
                   "enables mutual TLS (inbound per the listeners' mtls_mode, outbound per the clusters' tls). "
                   "Without it the proxy never loads OpenSSL and speaks plaintext only.")
@click.option("--trace-socket", type=click.Path(dir_okay=False),
              help="Unix datagram socket of the span exporter (meshbox-agent's). Given: the proxy continues or "
                   "starts traces and sends its spans there; else trace headers pass through untouched.")
@click.option("--trace-sampling", type=click.FloatRange(0, 100), default=None,
              help="Percentage of new traces sampled (default: mesh config tracing.sampling_percentage, 1).")
@click.pass_obj
def main(handoff: Callable[[Options], None] | None, config_path: str | None, mesh_path: str | None,
         admin_port: int | None, outbound_port: int | None, inbound_port: int | None, pod_ip: str | None,
         codec: str, concurrency: int, access_log_format: str | None, request_head_timeout: float,
         request_idle_timeout: float, idle_timeout: float, cert_dir: str | None, trace_socket: str | None,
         trace_sampling: float | None) -> None:
    """Run the meshbox sidecar proxy: L7 HTTP/1.1 and L4 TCP, Envoy-format access log on stdout."""
    try:
        mesh, config = load_config_files(mesh_path, config_path)
    except ConfigFileError as exc:
        raise click.ClickException(str(exc)) from None
    fmt = access_log_format if access_log_format is not None else mesh.access_log_format
    try:
        compile_format(fmt)
    except FormatError as exc:
        raise click.BadParameter(str(exc), param_hint="--access-log-format") from None
    if pod_ip:
        try:
            ipaddress.ip_address(pod_ip)
        except ValueError:
            raise click.BadParameter(f"not an IP address: {pod_ip!r}", param_hint="--pod-ip") from None
    workload = workload_from_env(os.environ)
    try:
        # Compiled here, in the command-line child: the proxy receives a Snapshot and never loads protobuf.
        snapshot = compile_config(config, workload) if config is not None else None
    except ConfigRejected as exc:
        raise click.ClickException(f"{config_path}: {exc}") from None
    ports = mesh.ports
    options = Options(
        config=snapshot,
        admin_port=_port(admin_port, ports.admin, "--admin-port"),
        outbound_port=_port(outbound_port, ports.outbound_capture, "--outbound-port"),
        inbound_port=_port(inbound_port, ports.inbound_capture, "--inbound-port"),
        pod_ip=pod_ip or None,
        codec=codec,
        concurrency=concurrency,
        access_log_format=fmt,
        registry_only=mesh.outbound_traffic_policy == mesh_config_pb2.REGISTRY_ONLY,
        workload=workload,
        pod_name=os.environ.get("POD_NAME", ""),
        head_timeout=request_head_timeout,
        body_idle_timeout=request_idle_timeout,
        idle_timeout=idle_timeout,
        cert_dir=cert_dir,
        trace_socket=trace_socket or None,
        trace_sampling=trace_sampling if trace_sampling is not None else mesh.tracing.sampling_percentage,
    )
    if concurrency > 1 and 0 in (options.admin_port, options.outbound_port):
        raise click.UsageError("--concurrency > 1 needs fixed ports: every worker must bind the same port")
    if handoff is not None:
        handoff(options)  # meshbox.proxy.entry: another process runs them
        return
    sys.exit(run_or_explain(options))
