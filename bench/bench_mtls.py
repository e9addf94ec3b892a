"""Mutual TLS between two proxies (issue 13).

Three pairs in front of the same nginx backend, each a client-side proxy (plaintext in) and a
server-side proxy, both pinned to the proxy CPU; wrk and the backend on the other one:

- ``meshbox-mtls``: two meshbox-proxy processes, the client's cluster MUTUAL to the server's
  STRICT inbound listener, certificates made with `cryptography` (one bench root);
- ``meshbox-plain``: the same pair in plaintext (no --cert-dir: the TLS stand-in);
- ``nginx-mtls``: two nginx, the client with ``proxy_ssl_certificate``, the server with
  ``ssl_verify_client on`` (bench/nginx/mtls_*.conf).

Rows: throughput of the meshbox mTLS pair vs the nginx mTLS pair (target >= 0.5x), CPU per
request of the meshbox pair with mTLS vs in plaintext (target <= 1.3x), requests with a new
connection each, so one (resumed) TLS handshake between the proxies per request, vs nginx doing
the same (target >= 0.5x; the meshbox client side is an L4 listener, the only way it opens an
upstream connection per request), and the resident memory of the server-side meshbox proxy with
TLS loaded vs without (target <= 30 MB). MESHBOX_BENCH_SECONDS (default 5) sets the length of each
pair's measurement. Every pair gets a one-second warm-up run first (the keep-alive rows then measure
established connections, not handshakes), and the two pairs the CPU row compares are measured
alternately, half the time each (mTLS, plaintext, plaintext, mTLS), so that drift in the machine's
load weighs on both.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench_proxy import BODY, BenchError, ensure_tools, pick_cpus, proxy_executable, run_wrk
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from proc_sampler import tree_cpu_seconds, tree_rss_bytes
from server_processes import ServerProcess, free_port, http_get, spawn, start_nginx, wait_until_serving
from wrk_output import WrkResult, parse_wrk_output

SECONDS = int(os.environ.get("MESHBOX_BENCH_SECONDS", "5"))
CONNECTIONS = 10
CLIENT_ID = "spiffe://bench.local/ns/bench/sa/client"
SERVER_ID = "spiffe://bench.local/ns/bench/sa/server"


@dataclass
class Pair:
    key: str
    client: ServerProcess
    server: ServerProcess


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, signer: ec.EllipticCurvePrivateKey,
                 sans: list[x509.GeneralName], ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _write_pki(tmp: Path) -> dict[str, Path]:
    """A root and two leaves (client, server) as PEM files, named as the agent names them."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate("bench root", root_key, "bench root", root_key, [], ca=True)
    pem = serialization.Encoding.PEM
    files: dict[str, Path] = {}
    for side, uri in (("client", CLIENT_ID), ("server", SERVER_ID)):
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
        if side == "server":
            sans.append(x509.DNSName("server.bench.local"))  # nginx's client verifies a host name
        cert = _certificate(side, key, "bench root", root_key, sans, ca=False)
        directory = tmp / f"{side}-certs"
        directory.mkdir()
        (directory / "cert-chain.pem").write_bytes(cert.public_bytes(pem))
        (directory / "key.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
        (directory / "root-cert.pem").write_bytes(root.public_bytes(pem))
        files[side] = directory
    return files


def _config(direction: str, port: int, upstream: int, tls: bool, tcp: bool = False) -> dict[str, object]:
    listener: dict[str, object] = {"name": "l", "direction": direction, "address": "127.0.0.1", "port": port,
                                   "protocol": "HTTP", "route_config": "r", "bind": True}
    if tcp:  # L4: each client connection is one upstream connection (one TLS handshake)
        listener.update(protocol="TCP", cluster="c")
        del listener["route_config"]
    cluster: dict[str, object] = {"name": "c", "lb_policy": "ROUND_ROBIN", "service": "backend.bench.svc.cluster.local"}
    if tls and direction == "INBOUND":
        listener["mtls_mode"] = "STRICT"
    if tls and direction == "OUTBOUND":
        cluster["tls"] = {"mode": "MUTUAL", "subject_alt_names": [SERVER_ID]}
    return {"listeners": [listener],
            "route_configs": [{"name": "r", "virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [
                {"clusters": [{"cluster": "c", "weight": 1}]}]}]}],
            "clusters": [cluster],
            "endpoints": [{"cluster_name": "c", "endpoints": [{"address": "127.0.0.1", "port": upstream}]}]}


def _meshbox(name: str, tmp: Path, cpu: int, direction: str, upstream: int, cert_dir: Path | None,
             tcp: bool = False) -> ServerProcess:
    port = free_port()
    config = tmp / f"{name}.yaml"
    config.write_text(json.dumps(_config(direction, port, upstream, cert_dir is not None, tcp)))
    argv = [proxy_executable(), "--config", str(config), "--admin-port", str(free_port()), "--outbound-port", "0"]
    if cert_dir is not None:
        argv += ["--cert-dir", str(cert_dir)]
    return spawn(name, argv, {cpu}, tmp, port)


def _pairs(tmp: Path, backend: int, cpu: int, stack: contextlib.ExitStack) -> list[Pair]:
    certs = _write_pki(tmp)
    pairs = []
    for key, tls, tcp in (("meshbox-mtls", True, False), ("meshbox-plain", False, False),
                          ("meshbox-mtls-newconn", True, True)):
        server = _meshbox(f"{key}-server", tmp, cpu, "INBOUND", backend, certs["server"] if tls else None)
        stack.callback(server.stop)
        client = _meshbox(f"{key}-client", tmp, cpu, "OUTBOUND", server.port, certs["client"] if tls else None,
                          tcp)
        stack.callback(client.stop)
        pairs.append(Pair(key, client, server))
    for key, upstream_requests in (("nginx-mtls", 100000000), ("nginx-mtls-newconn", 1)):
        server = start_nginx(f"{key}-server", "mtls_server.conf", tmp, {cpu}, NAME=f"{key}-server",
                             UPSTREAM_PORT=backend, CERT=certs["server"] / "cert-chain.pem",
                             KEY=certs["server"] / "key.pem", ROOTS=certs["server"] / "root-cert.pem")
        stack.callback(server.stop)
        client = start_nginx(f"{key}-client", "mtls_client.conf", tmp, {cpu}, NAME=f"{key}-client",
                             UPSTREAM_PORT=server.port, UPSTREAM_REQUESTS=upstream_requests,
                             CERT=certs["client"] / "cert-chain.pem", KEY=certs["client"] / "key.pem",
                             ROOTS=certs["client"] / "root-cert.pem")
        stack.callback(client.stop)
        pairs.append(Pair(key, client, server))
    for pair in pairs:
        wait_until_serving(pair.client)
        status, body = http_get(pair.client.port)
        if status != 200 or body != BODY.encode():
            raise BenchError(f"{pair.key}: GET / answered {status}, not the backend's body:\n"
                             f"{pair.client.log_tail()}\n{pair.server.log_tail()}")
    return pairs


def _wrk_new_connections(port: int, cpu: int, seconds: int) -> WrkResult:
    """wrk with ``Connection: close``: every request on a new client connection, so the client proxy opens
    a new TLS connection to the server proxy for each (meshbox: its L4 listener; nginx: upstream
    ``keepalive_requests 1``)."""
    argv = ["taskset", "-c", str(cpu), "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency",
            "-H", "Connection: close", f"http://127.0.0.1:{port}/"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[:500]}")
    return parse_wrk_output(done.stdout)


@dataclass
class Load:
    """What the runs of one pair added up to: requests, seconds of wrk, CPU seconds of both its proxies."""

    requests: int = 0
    seconds: float = 0.0
    cpu: float = 0.0


def _run(key: str, pair: Pair, client_cpu: int, seconds: int, load: Load) -> None:
    """One wrk run through ``pair``, added to ``load`` (both proxies' CPU: the client and the server leg)."""
    before = tree_cpu_seconds(pair.client.pid) + tree_cpu_seconds(pair.server.pid)
    if key.endswith("-newconn"):
        result = _wrk_new_connections(pair.client.port, client_cpu, seconds)
    else:
        result = run_wrk(pair.client.port, CONNECTIONS, seconds, client_cpu)
    used = tree_cpu_seconds(pair.client.pid) + tree_cpu_seconds(pair.server.pid) - before
    if result.non_2xx or result.socket_errors:
        raise BenchError(f"{key}: {result.non_2xx} non-2xx answers, {result.socket_errors} socket errors")
    load.requests += result.requests
    load.seconds += result.duration_s
    load.cpu += used


def _schedule(keys: list[str]) -> list[tuple[str, int]]:
    """The measured runs: the two meshbox keep-alive pairs that the CPU row compares alternate (mTLS,
    plaintext, plaintext, mTLS; half the time each), so a change in the machine's load weighs on both
    alike; the other pairs run once."""
    half = max(1, math.ceil(SECONDS / 2))
    compared = [("meshbox-mtls", half), ("meshbox-plain", half), ("meshbox-plain", half), ("meshbox-mtls", half)]
    return compared + [(key, SECONDS) for key in keys if key not in ("meshbox-mtls", "meshbox-plain")]


def _row(metric: str, value: float, unit: str, baseline: str, baseline_value: float, target: str,
         ok: bool) -> dict[str, object]:
    ratio = value / baseline_value if baseline_value else math.nan
    return {"bench": "mtls", "metric": metric, "value": value, "unit": unit, "baseline": baseline,
            "baseline_value": baseline_value, "ratio": ratio, "target": target, "ok": ok}


def rows() -> list[dict[str, object]]:
    ensure_tools()
    client_cpu, proxy_cpu = pick_cpus()
    with tempfile.TemporaryDirectory(prefix="meshbox-bench-mtls-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        backend = start_nginx("backend", "backend.conf", tmp, {client_cpu}, BODY=BODY.replace("\n", "\\n"))
        stack.callback(backend.stop)
        wait_until_serving(backend)
        pairs = {p.key: p for p in _pairs(tmp, backend.port, proxy_cpu, stack)}
        # A warm-up run per pair first: the keep-alive rows then count requests on established
        # connections only, not the TLS handshakes between the proxies (nor first-use costs).
        for key, pair in pairs.items():
            _run(key, pair, client_cpu, 1, Load())
        loads = {key: Load() for key in pairs}
        for key, seconds in _schedule(list(pairs)):
            _run(key, pairs[key], client_cpu, seconds, loads[key])
        rps = {key: load.requests / load.seconds for key, load in loads.items()}
        cpu_us = {key: load.cpu / max(load.requests, 1) * 1e6 for key, load in loads.items()}
        rss = {key: tree_rss_bytes(pairs[key].server.pid) / 1e6 for key in ("meshbox-mtls", "meshbox-plain")}
    through = rps["meshbox-mtls"] / rps["nginx-mtls"]
    cpu_ratio = cpu_us["meshbox-mtls"] / cpu_us["meshbox-plain"]
    return [
        _row(f"meshbox mTLS pair: throughput, keep-alive -c{CONNECTIONS}", rps["meshbox-mtls"], "req/s",
             "nginx mTLS pair", rps["nginx-mtls"], ">= 0.50x", through >= 0.5),
        _row("meshbox mTLS pair: CPU per request, keep-alive (both proxies)", cpu_us["meshbox-mtls"], "us",
             "meshbox plaintext pair", cpu_us["meshbox-plain"], "<= 1.30x", cpu_ratio <= 1.3),
        _row("meshbox mTLS pair: new connection per request (TLS handshakes/s, resumed)",
             rps["meshbox-mtls-newconn"], "req/s", "nginx mTLS pair, same", rps["nginx-mtls-newconn"], ">= 0.50x",
             rps["meshbox-mtls-newconn"] >= 0.5 * rps["nginx-mtls-newconn"]),
        _row("meshbox proxy RSS with TLS loaded (server side, after load)", rss["meshbox-mtls"], "MB",
             "the same proxy in plaintext", rss["meshbox-plain"], "<= 30 MB", rss["meshbox-mtls"] <= 30),
    ]
