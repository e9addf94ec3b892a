"""ServiceEntries without addresses through discovery: one egress listener per port (0.0.0.0:port,
pass_unknown_hosts) whose route config holds the entries' virtual hosts beside the Services of that port;
then the built config served by a real proxy on real sockets (its egress listener bound, since capture
needs iptables: proxy/tests/test_egress_capture_netns.py covers the captured path).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import uvloop

from conftest import free_port  # type: ignore[import-not-found]
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.discovery.config_builder import ConfigBuilder
from meshbox.discovery.registry import SourcedDocument, build_registry
from meshbox.proxy.access_log import AccessLog
from meshbox.proxy.codec import get_codec
from meshbox.proxy.config_compiler import compile_config
from meshbox.proxy.context import ProxyContext
from meshbox.proxy.server import ProxyServer
from meshbox.proxy.snapshot import Workload


def entry(name: str, host: str, port: int, protocol: str = "HTTP", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"hosts": [host], "ports": [{"number": port, "name": "http", "protocol": protocol}],
                     "resolution": "DNS", "location": "MESH_EXTERNAL", **spec}}


def build(kit: Any, *docs: dict[str, Any]) -> pc.ProxyConfig:
    registry = build_registry(SourcedDocument("egress.yaml", d) for d in [*kit.tutorial_objects(), *docs])
    assert registry.errors == ()
    config = ConfigBuilder(registry).build(kit.node("service-one-a", "10.1.0.11"))
    compile_config(config, Workload())  # the proxy takes it
    return config


def test_one_egress_listener_per_port_with_the_entries_as_virtual_hosts(kit: Any) -> None:
    timeout = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
               "metadata": {"name": "httpbin", "namespace": "default"},
               "spec": {"hosts": ["httpbin.example.com"],
                        "http": [{"timeout": "3s", "route": [{"destination": {"host": "httpbin.example.com"}}]}]}}
    config = build(kit, entry("httpbin-ext", "httpbin.example.com", 80), entry("api-ext", "api.example.org", 80),
                   entry("other-port", "files.example.net", 8000), timeout)
    egress = [(lis.name, lis.address, lis.port, lis.route_config) for lis in config.listeners if lis.pass_unknown_hosts]
    assert egress == [("0.0.0.0_80", "0.0.0.0", 80, "80"), ("0.0.0.0_8000", "0.0.0.0", 8000, "8000")]
    # The Services keep their own listeners; no listener has an empty address.
    assert {lis.address for lis in config.listeners if not lis.pass_unknown_hosts} >= {"10.96.0.11", "10.96.0.12"}
    assert all(lis.address for lis in config.listeners)
    (rc80,) = [rc for rc in config.route_configs if rc.name == "80"]
    hosts = {vh.name: list(vh.domains) for vh in rc80.virtual_hosts}
    assert hosts["httpbin.example.com:80"] == ["httpbin.example.com", "httpbin.example.com:80"]
    assert hosts["api.example.org:80"] == ["api.example.org", "api.example.org:80"]
    assert "service-two.default.svc.cluster.local:80" in hosts
    (vh,) = [vh for vh in rc80.virtual_hosts if vh.name == "httpbin.example.com:80"]
    assert vh.routes[0].timeout.seconds == 3
    assert vh.routes[0].clusters[0].cluster == "outbound|80||httpbin.example.com"
    (cla,) = [c for c in config.endpoints if c.cluster_name == "outbound|80||httpbin.example.com"]
    assert [(e.address, e.port) for e in cla.endpoints] == [("httpbin.example.com", 80)]


def test_an_entry_with_an_address_keeps_its_own_listener(kit: Any) -> None:
    config = build(kit, entry("httpbin-ext", "httpbin.example.com", 80),
                   entry("payments", "payments.example.com", 80, addresses=["10.96.50.1"]))
    listeners = sorted((lis.address, lis.port, lis.pass_unknown_hosts) for lis in config.listeners)
    assert ("10.96.50.1", 80, False) in listeners and ("0.0.0.0", 80, True) in listeners


def test_tcp_entry_without_address_is_refused_on_registry_errors(kit: Any) -> None:
    registry = build_registry(SourcedDocument("egress.yaml", d)
                              for d in [*kit.tutorial_objects(), entry("db", "db.example.com", 5432, "TCP")])
    assert len(registry.errors) == 1
    assert registry.errors[0].startswith("egress.yaml: ServiceEntry default/db: spec.ports[0].protocol: TCP without "
                                         "spec.addresses: not implemented by meshbox yet")
    config = ConfigBuilder(registry).build(kit.node("service-one-a", "10.1.0.11"))
    assert not any(lis.pass_unknown_hosts or lis.port == 5432 for lis in config.listeners)


async def _backend(name: str) -> tuple[asyncio.Server, list[bytes]]:
    """An HTTP/1.1 server answering each request with its name and the Host it got (one per connection)."""
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        host = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"host:"))
        body = name.encode() + b" " + host
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0), heads


async def _get(port: int, host: str) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /anything HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


def test_built_config_serves_the_entry_by_host_on_real_sockets(kit: Any, tmp_path: Path) -> None:
    """The entry's endpoint is ``localhost`` (127.0.0.1 in /etc/hosts, resolved by the proxy at connect)."""

    async def main() -> tuple[list[tuple[bytes, bytes]], list[str]]:
        backend, heads = await _backend("httpbin")
        port = free_port()
        config = build(kit, entry("httpbin-ext", "httpbin.example.com", port, endpoints=[
            {"address": "localhost", "ports": {"http": backend.sockets[0].getsockname()[1]}}]))
        (egress,) = [lis for lis in config.listeners if lis.pass_unknown_hosts]
        egress.bind = True
        loop = asyncio.get_running_loop()
        log_path = tmp_path / "access.log"
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        log = AccessLog("", fd)
        log.attach(loop)
        ctx = ProxyContext(loop=loop, codec=get_codec("httptools"), access_log=log, workload=Workload())
        server = ProxyServer(ctx, 0, 0, reuse_port=False)
        await server.start()
        await server.apply(config)
        try:
            answers = [await _get(port, "httpbin.example.com"), await _get(port, f"HTTPBIN.example.com:{port}"),
                       await _get(port, "unknown.example.com")]
        finally:
            server.drain()
            backend.close()
            await asyncio.sleep(0.05)
            log.close()
            os.close(fd)
        assert len(heads) == 2
        return answers, log_path.read_text().splitlines()

    answers, lines = uvloop.run(asyncio.wait_for(main(), 20))
    assert answers[0] == (b"HTTP/1.1 200 OK", b"httpbin httpbin.example.com")
    assert answers[1][0] == b"HTTP/1.1 200 OK"
    # Not an entry's host, and a bound listener has no captured destination to pass it to: 502 NR.
    assert answers[2][0].startswith(b"HTTP/1.1 502")
    assert '"GET /anything HTTP/1.1" 502 NR ' in lines[2]
    assert '"httpbin.example.com" "localhost:' in lines[0]
