"""Mutual TLS between two real meshbox-proxy processes, with certificates made by `cryptography`.

A client-side proxy (outbound listener → cluster with mutual TLS) talks to a server-side proxy (inbound
listener with a peer authentication mode) in front of an HTTP backend, all on 127.0.0.1. Covered: the
request crosses over TLS 1.3 with both SPIFFE IDs logged; a server identity the cluster does not allow
fails the request with the reason logged; STRICT refuses plaintext, PERMISSIVE lets it in; forged,
expired and foreign-CA client certificates, garbage bytes and a truncated ClientHello are refused with
a stderr line naming why while other connections go on; L4 (TCP) listeners and clusters do the same;
a certificate rotated on disk is taken by new connections without a failed request; authorization
policies answer 403 ``RBAC: access denied`` (flag RBAC, a stderr line saying why) or close a TCP
connection.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from conftest import Pki  # type: ignore[import-not-found]
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.v1 import security_pb2

MODE = security_pb2.PeerAuthentication.MutualTLS
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/sleep"
SERVER_ID = "spiffe://cluster.local/ns/default/sa/httpbin"
SLEEP = CLIENT_ID.removeprefix("spiffe://")


def policy(name: str, spec: dict[str, Any]) -> pc.NamedAuthorizationPolicy:
    return pc.NamedAuthorizationPolicy(name=name, namespace="default",
                                       spec=json_format.ParseDict(spec, security_pb2.AuthorizationPolicy()))


ALLOW_SLEEP = policy("allow-sleep", {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": [SLEEP]}}]}]})
DENY_ADMIN = policy("deny-admin", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]})
FMT = ("%RESPONSE_CODE% %RESPONSE_FLAGS% peer=%DOWNSTREAM_PEER_URI_SAN% tls=%DOWNSTREAM_TLS_VERSION% "
       "up=%UPSTREAM_PEER_URI_SAN% fail=%UPSTREAM_TRANSPORT_FAILURE_REASON%\n")


def write_identity(pki: Any, directory: Path, root: Any, root_key: Any, uri: str, generation: int = 1,
                   bundle: tuple[Any, ...] = (), **leaf_args: Any) -> Path:
    """The agent's layout: <dir>/.gen-N/{key.pem,cert-chain.pem,root-cert.pem} and current -> .gen-N;
    the trust bundle is ``bundle`` (default: the signing root alone)."""
    gen = directory / f".gen-{generation}"
    gen.mkdir(parents=True)
    cert, key = pki.leaf(root, root_key, uris=(uri,), **leaf_args)
    (gen / "key.pem").write_bytes(pki.key_pem(key))
    (gen / "cert-chain.pem").write_bytes(pki.pem(cert))
    (gen / "root-cert.pem").write_bytes(b"".join(pki.pem(r) for r in bundle or (root,)))
    tmp = directory / "current.tmp"
    tmp.symlink_to(gen.name)
    os.replace(tmp, directory / "current")
    return directory


def server_config(port: int, backend: int, mode: int, protocol: int = pc.HTTP,
                  policies: list[pc.NamedAuthorizationPolicy] | None = None) -> pc.ProxyConfig:
    cluster = "inbound|app"
    listener = pc.Listener(name="in", direction=pc.INBOUND, address="127.0.0.1", port=port, protocol=protocol,
                           bind=True, mtls_mode=mode, authorization_policies=policies or [])
    config = pc.ProxyConfig(clusters=[pc.Cluster(name=cluster, service="httpbin.default.svc.cluster.local")],
                            endpoints=[pc.ClusterLoadAssignment(cluster_name=cluster, endpoints=[
                                pc.Endpoint(address="127.0.0.1", port=backend)])])
    _route(config, listener, cluster)
    config.listeners.append(listener)
    return config


def client_config(port: int, server: int, sans: list[str], protocol: int = pc.HTTP,
                  mode: int = pc.UpstreamTls.MUTUAL) -> pc.ProxyConfig:
    cluster = "outbound|httpbin"
    listener = pc.Listener(name="out", direction=pc.OUTBOUND, address="127.0.0.1", port=port, protocol=protocol,
                           bind=True)
    config = pc.ProxyConfig(
        clusters=[pc.Cluster(name=cluster, service="httpbin.default.svc.cluster.local",
                             tls=pc.UpstreamTls(mode=mode, subject_alt_names=sans))],
        endpoints=[pc.ClusterLoadAssignment(cluster_name=cluster, endpoints=[
            pc.Endpoint(address="127.0.0.1", port=server, sidecar=True)])])
    _route(config, listener, cluster)
    config.listeners.append(listener)
    return config


def _route(config: pc.ProxyConfig, listener: pc.Listener, cluster: str) -> None:
    if listener.protocol == pc.TCP:
        listener.cluster = cluster
        return
    listener.route_config = "rc"
    config.route_configs.append(pc.RouteConfiguration(name="rc", virtual_hosts=[pc.VirtualHost(
        name="vh", domains=["*"], routes=[pc.Route(clusters=[pc.WeightedCluster(cluster=cluster, weight=100)])])]))


def wait_for_log(proc: subprocess.Popen[str], text: str, timeout: float = 5) -> None:
    """Until the proxy's access log has ``text`` (a TCP session is logged when it closes)."""
    deadline = time.monotonic() + timeout
    while text not in Path(proc.log_path).read_text() and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.02)


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Stop a proxy; its access log and the rest of its stderr."""
    proc.terminate()
    _, err = proc.communicate(timeout=10)
    return Path(proc.log_path).read_text(), err  # type: ignore[attr-defined]


class Pair:
    """A client-side and a server-side proxy process in front of one backend."""

    def __init__(self, kit: Any, proxy_cli: Any, tmp_path: Path, pki: Any) -> None:
        self.kit, self.proxy_cli, self.tmp_path, self.pki = kit, proxy_cli, tmp_path, pki
        self.root, self.root_key = pki.root("mesh root")
        self.client_dir = write_identity(pki, tmp_path / "client-certs", self.root, self.root_key, CLIENT_ID)
        self.server_dir = write_identity(pki, tmp_path / "server-certs", self.root, self.root_key, SERVER_ID)
        self.in_port = kit.free_port()
        self.out_port = kit.free_port()

    async def start(self, backend: int, mode: int, sans: list[str], protocol: int = pc.HTTP,
                    policies: list[pc.NamedAuthorizationPolicy] | None = None) -> None:
        kit = self.kit
        self.server_admin, self.client_admin = kit.free_port(), kit.free_port()
        self.server = await kit.standalone(
            self.proxy_cli, server_config(self.in_port, backend, mode, protocol, policies), self.tmp_path,
            "--cert-dir", str(self.server_dir), "--access-log-format", FMT, "--admin-port", str(self.server_admin),
            port=self.in_port)
        self.client = await kit.standalone(
            self.proxy_cli, client_config(self.out_port, self.in_port, sans, protocol), self.tmp_path,
            "--cert-dir", str(self.client_dir), "--access-log-format", FMT, "--admin-port", str(self.client_admin),
            port=self.out_port)

    async def metrics(self, admin: int) -> str:
        return (await self.kit.get(admin, "/stats/prometheus")).body.decode()


def tls_client_context(pki: Any, tmp_path: Path, root: Any, cert: Any, key: Any) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=pki.pem(root).decode())
    name = f"c{os.urandom(4).hex()}"
    (tmp_path / f"{name}.crt").write_bytes(pki.pem(cert))
    (tmp_path / f"{name}.key").write_bytes(pki.key_pem(key))
    ctx.load_cert_chain(tmp_path / f"{name}.crt", tmp_path / f"{name}.key")
    return ctx


async def tls_attempt(port: int, ctx: ssl.SSLContext) -> bytes:
    """Connect with ``ctx``, send a request, return what came back (b"" when the server refused)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=None)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return data
    except (ssl.SSLError, ConnectionError, OSError):
        return b""


@pytest.fixture
def pki() -> Any:
    return Pki()


def test_root_rotation_through_a_two_root_bundle_without_a_failed_request(
        kit: Any, proxy_cli: Any, tmp_path: Path, pki: Any) -> None:
    """docs/security.md's three steps, as the agent writes them: both roots trusted, then leaves of the
    new root (the two sides switch at different moments), then the new root alone."""
    pair = Pair(kit, proxy_cli, tmp_path, pki)
    old, old_key = pair.root, pair.root_key
    new, new_key = pki.root("new mesh root")
    steps = [
        [(pair.server_dir, SERVER_ID, old, old_key, (old, new)),
         (pair.client_dir, CLIENT_ID, old, old_key, (old, new))],
        [(pair.server_dir, SERVER_ID, new, new_key, (old, new))],
        [(pair.client_dir, CLIENT_ID, new, new_key, (old, new))],
        [(pair.server_dir, SERVER_ID, new, new_key, (new,)), (pair.client_dir, CLIENT_ID, new, new_key, (new,))],
    ]

    async def main() -> list[int]:
        backend = await kit.Backend("app").start()
        await pair.start(backend.port, MODE.STRICT, [SERVER_ID])
        statuses = []
        generation = {pair.server_dir: 1, pair.client_dir: 1}
        for i in range(80):  # bounded: 80 new connections over ~5 s, a rotation step every 16
            if i % 16 == 15 and i // 16 < len(steps):
                for directory, uri, root, key, bundle in steps[i // 16]:
                    generation[directory] += 1
                    write_identity(pki, directory, root, key, uri, generation[directory], bundle)
                await asyncio.sleep(1.1)  # the proxies look at the files at most once a second
            statuses.append((await kit.get(pair.out_port, f"/{i}", headers=[("connection", "close")])).status)
        # New handshakes at the server: a client certificate of the old root is refused now.
        for root, key in ((old, old_key), (new, new_key)):
            cert, cert_key = pki.leaf(root, key, uris=(CLIENT_ID,))
            answer = await tls_attempt(pair.in_port, tls_client_context(pki, tmp_path, new, cert, cert_key))
            statuses.append(int(answer[9:12] or b"0"))
        backend.close()
        return statuses

    statuses = kit.run(main())
    _, server_err = stop(pair.server)
    _, client_err = stop(pair.client)
    assert statuses == [200] * 80 + [0, 200], (server_err, client_err)
    assert f"{pair.server_dir}/.gen-4" in server_err and f"{pair.client_dir}/.gen-4" in client_err


def test_http_over_mutual_tls_between_two_proxies(kit: Any, proxy_cli: Any, tmp_path: Path, pki: Any) -> None:
    pair = Pair(kit, proxy_cli, tmp_path, pki)

    async def main() -> tuple[Any, Any, bytes]:
        backend = await kit.Backend("app").start()
        await pair.start(backend.port, MODE.STRICT, [SERVER_ID])
        first = await kit.get(pair.out_port, "/hello")
        second = await kit.get(pair.out_port, "/again")
        plain, _ = await kit.raw_exchange(pair.in_port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        metrics.extend([await pair.metrics(pair.server_admin), await pair.metrics(pair.client_admin)])
        backend.close()
        return first, second, plain

    metrics: list[str] = []
    first, second, plain = kit.run(main())
    server_line = next(m for m in metrics[0].splitlines() if m.startswith("istio_requests_total{"))
    client_line = next(m for m in metrics[1].splitlines() if m.startswith("istio_requests_total{"))
    assert (f'connection_security_policy="mutual_tls",source_principal="{CLIENT_ID}",'
            f'destination_principal="{SERVER_ID}"') in server_line, server_line
    assert (f'connection_security_policy="unknown",source_principal="{CLIENT_ID}",'
            f'destination_principal="{SERVER_ID}"') in client_line, client_line
    server_log, server_err = stop(pair.server)
    client_log, client_err = stop(pair.client)
    assert first.status == 200 and second.status == 200, (client_log, client_err, server_log, server_err)
    assert plain == b""  # STRICT: plaintext is closed without an answer
    assert f"200 - peer={CLIENT_ID} tls=TLSv1.3" in server_log
    assert f"200 - peer=- tls=- up={SERVER_ID} fail=-" in client_log
    assert "refused plaintext connection" in server_err and "STRICT" in server_err
    assert "0 NR" in server_log


def test_permissive_accepts_plaintext_and_tls(kit: Any, proxy_cli: Any, tmp_path: Path, pki: Any) -> None:
    pair = Pair(kit, proxy_cli, tmp_path, pki)

    async def main() -> tuple[Any, Any]:
        backend = await kit.Backend("app").start()
        await pair.start(backend.port, MODE.PERMISSIVE, [SERVER_ID])
        via_tls = await kit.get(pair.out_port, "/")
        plain = await kit.get(pair.in_port, "/")
        backend.close()
        return via_tls, plain

    via_tls, plain = kit.run(main())
    assert via_tls.status == 200 and plain.status == 200
    server_log, _ = stop(pair.server)
    assert f"peer={CLIENT_ID} tls=TLSv1.3" in server_log and "peer=- tls=-" in server_log
    stop(pair.client)


def test_server_identity_not_allowed_fails_the_request(kit: Any, proxy_cli: Any, tmp_path: Path, pki: Any) -> None:
    pair = Pair(kit, proxy_cli, tmp_path, pki)

    async def main() -> Any:
        backend = await kit.Backend("app").start()
        await pair.start(backend.port, MODE.STRICT, ["spiffe://cluster.local/ns/default/sa/other"])
        response = await kit.get(pair.out_port, "/")
        backend.close()
        return response

    response = kit.run(main())
    assert response.status == 503
    client_log, _ = stop(pair.client)
    assert "503 UF" in client_log and f"server identity {SERVER_ID}" in client_log
    stop(pair.server)


def test_bad_client_certificates_and_bytes_are_refused_others_unaffected(
        kit: Any, proxy_cli: Any, tmp_path: Path, pki: Any) -> None:
    pair = Pair(kit, proxy_cli, tmp_path, pki)
    root, root_key = pair.root, pair.root_key
    foreign_root, foreign_key = pki.root("foreign root")
    expired = pki.leaf(root, root_key, uris=(CLIENT_ID,), not_before=pki.now - pki.delta(days=2),
                       not_after=pki.now - pki.delta(days=1))
    foreign = pki.leaf(foreign_root, foreign_key, uris=(CLIENT_ID,))
    forged = pki.leaf(root, foreign_key, uris=(CLIENT_ID,))  # names the mesh root, signed by another key
    good = pki.leaf(root, root_key, uris=(CLIENT_ID,))

    async def main() -> dict[str, bytes]:
        backend = await kit.Backend("app").start()
        await pair.start(backend.port, MODE.STRICT, [SERVER_ID])
        # A kept-alive connection through the pair, used before and after the bad ones.
        client = await kit.Client.connect(pair.out_port)
        before = await client.request("GET", "/before")
        results = {}
        for name, (cert, key) in (("expired", expired), ("foreign", foreign), ("forged", forged), ("good", good)):
            results[name] = await tls_attempt(pair.in_port, tls_client_context(pki, tmp_path, root, cert, key))
        results["garbage"], _ = await kit.raw_exchange(pair.in_port, b"\x16\x03\x01\x00\x05hello" + os.urandom(64))
        # A ClientHello cut short, then the client goes away.
        sock = socket.create_connection(("127.0.0.1", pair.in_port))
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        sock.close()
        after = await client.request("GET", "/after")
        client.close()
        backend.close()
        results["kept"] = f"{before.status} {after.status}".encode()
        return results

    results = kit.run(main())
    assert results["expired"] == results["foreign"] == results["forged"] == b""
    # Garbage gets nothing but a fatal TLS alert record (content type 21, level 2) before the close.
    garbage = results["garbage"]
    assert len(garbage) == 7 and garbage[0] == 21 and garbage[5] == 2, garbage
    assert results["good"].startswith(b"HTTP/1.1 200")
    assert results["kept"] == b"200 200"
    _, err = stop(pair.server)
    refusals = [line for line in err.splitlines() if "TLS handshake from" in line]
    assert any("certificate has expired" in line for line in refusals), err
    assert any("unable to get local issuer certificate" in line for line in refusals), err
    assert any("certificate signature failure" in line for line in refusals), err
    assert len(refusals) >= 5, err
    stop(pair.client)


def test_tcp_listeners_and_clusters_over_mutual_tls(kit: Any, proxy_cli: Any, tmp_path: Path, pki: Any) -> None:
    pair = Pair(kit, proxy_cli, tmp_path, pki)

    async def main() -> tuple[Any, bytes]:
        backend = await kit.Backend("app").start()
        await pair.start(backend.port, MODE.STRICT, [SERVER_ID], protocol=pc.TCP)
        response = await kit.get(pair.out_port, "/over-tcp")
        for i in range(3):
            assert (await kit.get(pair.out_port, f"/again/{i}")).status == 200
        plain, _ = await kit.raw_exchange(pair.in_port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        resumed.append(await pair.metrics(pair.client_admin))
        # The access log line of a TCP session is written when it closes, its metrics with it.
        wait_for_log(pair.client, "up=spiffe")
        resumed.append(await pair.metrics(pair.server_admin))
        resumed.append(await pair.metrics(pair.client_admin))
        backend.close()
        return response, plain

    resumed: list[str] = []

    response, plain = kit.run(main())
    assert response.status == 200 and plain == b""
    # Each TCP connection opened its own TLS connection upstream: the later ones resumed a session.
    assert re.search(r"meshbox_proxy_upstream_ssl_session_reused_total [1-9]", resumed[0]), resumed[0]
    # Istio's security labels of the TCP metrics on both sides: the client side names the server's
    # verified identity (destination_principal), known once its upstream TLS connection is made.
    server_metrics, client_metrics = resumed[1], resumed[2]
    for name in ("istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total"):
        server_lines = [m for m in server_metrics.splitlines() if m.startswith(name + "{")]
        client_lines = [m for m in client_metrics.splitlines() if m.startswith(name + "{")]
        assert server_lines and client_lines, (server_metrics, client_metrics)
        # (the plaintext attempt above is counted too, as "none")
        assert any(f'connection_security_policy="mutual_tls",source_principal="{CLIENT_ID}",'
                   f'destination_principal="{SERVER_ID}"' in line for line in server_lines), server_lines
        for line in client_lines:
            assert (f'connection_security_policy="unknown",source_principal="{CLIENT_ID}",'
                    f'destination_principal="{SERVER_ID}"') in line, line
    wait_for_log(pair.server, "TLSv1.3")
    wait_for_log(pair.client, "up=spiffe")
    server_log, server_err = stop(pair.server)
    client_log, client_err = stop(pair.client)
    assert f"peer={CLIENT_ID} tls=TLSv1.3" in server_log, (server_log, server_err, client_log, client_err)
    assert f"up={SERVER_ID}" in client_log


def test_rotated_certificate_is_taken_without_a_failed_request(
        kit: Any, proxy_cli: Any, tmp_path: Path, pki: Any) -> None:
    pair = Pair(kit, proxy_cli, tmp_path, pki)

    async def main() -> list[int]:
        backend = await kit.Backend("app").start()
        await pair.start(backend.port, MODE.STRICT, [SERVER_ID])
        statuses = []
        kept = await kit.Client.connect(pair.out_port)
        for i in range(60):  # bounded: 60 requests over ~3 s, both certificates rotated halfway
            if i == 30:
                write_identity(pki, pair.server_dir, pair.root, pair.root_key, SERVER_ID, generation=2)
                write_identity(pki, pair.client_dir, pair.root, pair.root_key, CLIENT_ID, generation=2)
            statuses.append((await kit.get(pair.out_port, f"/{i}", headers=[("connection", "close")])).status)
            statuses.append((await kit.Client.request(kept, "GET", f"/kept/{i}")).status)
            await asyncio.sleep(0.05)
        kept.close()
        backend.close()
        return statuses

    statuses = kit.run(main())
    assert statuses == [200] * 120
    _, server_err = stop(pair.server)
    _, client_err = stop(pair.client)
    for err, directory in ((server_err, pair.server_dir), (client_err, pair.client_dir)):
        assert f"workload certificate loaded from {directory}/.gen-2" in err, err


def test_the_proxy_enforces_the_matrix_over_mutual_tls(kit: Any, proxy_cli: Any, tmp_path: Path, pki: Any) -> None:
    pair = Pair(kit, proxy_cli, tmp_path, pki)

    async def main() -> tuple[Any, Any, Any]:
        backend = await kit.Backend("app").start()
        await pair.start(backend.port, MODE.PERMISSIVE, [], policies=[ALLOW_SLEEP, DENY_ADMIN])
        allowed = await kit.get(pair.out_port, "/public")
        denied = await kit.get(pair.out_port, "/admin")
        plaintext = await kit.get(pair.in_port, "/public")  # PERMISSIVE lets it in, the ALLOW policy does not
        backend.close()
        return allowed, denied, plaintext

    allowed, denied, plaintext = kit.run(main())
    server_log, server_err = stop(pair.server)
    stop(pair.client)
    assert allowed.status == 200
    assert (denied.status, denied.body) == (403, b"RBAC: access denied")
    assert (plaintext.status, plaintext.body) == (403, b"RBAC: access denied")
    assert server_log.count("403 RBAC") == 2
    assert "RBAC: access denied: GET /admin" in server_err and "deny-admin" in server_err
    assert "no peer certificate" in server_err and "allow-sleep" in server_err


def test_tcp_denied_connection_is_closed(kit: Any, proxy_cli: Any, tmp_path: Path, pki: Any) -> None:
    pair = Pair(kit, proxy_cli, tmp_path, pki)
    deny_sleep = policy("deny-sleep", {"action": "DENY", "rules": [{"from": [{"source": {"principals": [SLEEP]}}]}]})

    async def main() -> bytes:
        backend = await kit.Backend("app").start()
        await pair.start(backend.port, MODE.STRICT, [], protocol=pc.TCP, policies=[deny_sleep])
        data, _ = await kit.raw_exchange(pair.out_port, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        backend.close()
        return data

    assert kit.run(main()) == b""
    _, server_err = stop(pair.server)
    stop(pair.client)
    assert "RBAC: access denied: TCP connection" in server_err and "deny-sleep" in server_err
