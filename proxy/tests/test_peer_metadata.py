"""Metadata exchange between two real proxy processes (client side and server side): each learns the
other's workload from Istio's x-envoy-peer-metadata headers for its metric labels, the apps never see
those headers, and what an app forges in them is never believed. Also the TCP side: an outbound TCP
connection reports the workload discovery put on the endpoint it went to."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from prometheus_client.parser import text_string_to_metric_families

from meshbox.api.loader import message_from_data
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.proxy.peer_metadata import (
    METADATA,
    MalformedMetadata,
    decode_struct,
    encode_struct,
    own_headers,
    parse,
    peer_labels,
)
from meshbox.proxy.snapshot import Workload

CLIENT_ENV = {"POD_NAME": "sleep-5f7b9c8d4-x2x9z", "POD_NAMESPACE": "default", "APP": "sleep"}
SERVER_ENV = {"POD_NAME": "httpbin-6d9f8b7c5-abcde", "POD_NAMESPACE": "shop", "APP": "httpbin"}


def _forged(workload: str, namespace: str) -> str:
    struct = struct_pb2.Struct()
    struct.update({"WORKLOAD_NAME": workload, "NAMESPACE": namespace, "LABELS": {"app": workload}})
    return base64.b64encode(struct.SerializeToString()).decode()


def _samples(text: str, name: str) -> list[dict[str, str]]:
    return [dict(sample.labels, value=str(sample.value)) for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.name == name]


async def _scrape(kit: Any, port: int) -> str:
    client = await kit.Client.connect(port)
    try:
        return (await client.request("GET", "/stats/prometheus", host="localhost")).body.decode()
    finally:
        client.close()


def _peer_header_names(headers: list[list[str]] | list[tuple[bytes, bytes]]) -> list[str]:
    names = [n.decode() if isinstance(n, bytes) else n for n, _ in headers]
    return [n for n in names if n.startswith("x-envoy-peer-metadata")]


# -- the wire format ---------------------------------------------------------------------------------
def test_struct_round_trips_through_real_protobuf() -> None:
    """What the proxy writes is a Struct protobuf reads, and it reads what protobuf writes (Istio's form)."""
    fields: dict[str, str | dict[str, str]] = {"NAMESPACE": "shop", "WORKLOAD_NAME": "reviews-v1",
                                               "LABELS": {"app": "reviews", "version": "v1"}}
    ours = struct_pb2.Struct()
    ours.ParseFromString(encode_struct(fields))
    assert ours["NAMESPACE"] == "shop" and ours["LABELS"]["version"] == "v1"
    theirs = struct_pb2.Struct()
    theirs.update({**fields, "INSTANCE_IPS": ["10.0.0.1"], "MESH_ID": "cluster.local", "PLATFORM_METADATA": {},
                   "ISTIO_VERSION": "1.22.0", "COUNT": 3.0, "FLAG": True})
    decoded = decode_struct(theirs.SerializeToString())
    assert decoded["WORKLOAD_NAME"] == "reviews-v1" and decoded["LABELS"] == {"app": "reviews", "version": "v1"}
    assert parse(base64.b64encode(theirs.SerializeToString())) == ("reviews-v1", "shop", "reviews")


def test_app_label_order_and_own_headers() -> None:
    struct = struct_pb2.Struct()
    struct.update({"WORKLOAD_NAME": "w", "NAMESPACE": "n",
                   "LABELS": {"app": "a", "service.istio.io/canonical-name": "canon"}})
    assert parse(base64.b64encode(struct.SerializeToString())) == ("w", "n", "canon")
    headers = dict(own_headers(Workload("sleep", "default", "sleep"), "sleep-1-2", "10.1.2.3"))
    assert parse(headers[METADATA]) == ("sleep", "default", "sleep")
    assert headers[b"x-envoy-peer-metadata-id"] == b"sidecar~10.1.2.3~sleep-1-2.default~default.svc.cluster.local"
    assert own_headers(Workload(), "", None) == []


@pytest.mark.parametrize("value", [
    b"not base64 !!", base64.b64encode(b"\x0a\xff\xff"), base64.b64encode(b"\x0b"), b"A" * 5000,
    _forged("", "ns").encode(), _forged("w", "").encode(), _forged("bad\nname", "ns").encode(),
    _forged("x" * 300, "ns").encode(),
])
def test_malformed_values_are_refused(value: bytes) -> None:
    with pytest.raises(MalformedMetadata):
        parse(value)


def test_peer_labels_fill_the_unknown_side_only() -> None:
    inbound = ("destination", "unknown", "unknown", "unknown", "me", "ns", "me", "svc", "svc", "ns")
    assert peer_labels(inbound, ("w", "n", "a"))[:7] == ("destination", "w", "n", "a", "me", "ns", "me")
    known = ("source", "me", "ns", "me", "known", "kns", "kapp", "svc", "svc", "ns")
    assert peer_labels(known, ("w", "n", "a")) == known
    unknown = ("source", "me", "ns", "me", "unknown", "unknown", "unknown", "svc", "svc", "ns")
    assert peer_labels(unknown, ("w", "n", "a"))[4:7] == ("w", "n", "a")


# -- two real proxies ------------------------------------------------------------------------------
def test_two_sidecars_learn_each_other(kit: Any, proxy_cli: Any, tmp_path: Path) -> None:
    async def forging_app(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        # The server's app tries to pass itself off as another workload in its response.
        backend.requests.append(req)
        names = _peer_header_names(req.headers)
        body = ",".join(names).encode()
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nx-envoy-peer-metadata: %s\r\n"
                     b"x-envoy-peer-metadata-id: forged\r\n\r\n%s" % (len(body), _forged("evil", "x").encode(), body))
        return True

    async def main() -> tuple[str, str, list[Any]]:
        app = await kit.Backend("httpbin", forging_app).start()
        inbound_port, outbound_port = kit.free_port(), kit.free_port()
        server = await kit.standalone(proxy_cli, kit.http_config(inbound_port, {"inbound": [app.port]},
                                                                 direction="INBOUND"),
                                      tmp_path, port=inbound_port, env=SERVER_ENV)
        client = await kit.standalone(proxy_cli, kit.http_config(outbound_port, {"httpbin": [inbound_port]}),
                                      tmp_path, port=outbound_port, env=CLIENT_ENV)
        seen_by_client_app = []
        for i in range(3):
            # The client's app forges the header on two of three requests: never believed, never forwarded.
            headers = [("x-envoy-peer-metadata", _forged("evil", "x"))] if i else []
            response = await kit.get(outbound_port, headers=headers)
            assert response.status == 200
            seen_by_client_app.append(response.headers)
        for seen in app.requests:
            assert _peer_header_names(seen.headers) == []
        return (await _scrape(kit, kit.admin_port_of(server)), await _scrape(kit, kit.admin_port_of(client)),
                seen_by_client_app)

    server_text, client_text, responses = kit.run(main())
    for headers in responses:
        assert _peer_header_names(headers) == []
    inbound = [s for s in _samples(server_text, "istio_requests_total") if s["reporter"] == "destination"]
    assert [(s["source_workload"], s["source_workload_namespace"], s["source_app"], s["value"]) for s in inbound] == \
        [("sleep", "default", "sleep", "3.0")]
    assert inbound[0]["destination_workload"] == "httpbin"
    outbound = [s for s in _samples(client_text, "istio_requests_total") if s["reporter"] == "source"]
    assert [(s["destination_workload"], s["destination_workload_namespace"], s["destination_app"], s["value"])
            for s in outbound] == [("httpbin", "shop", "httpbin", "3.0")]


def test_malformed_metadata_is_counted_and_ignored(kit: Any, proxy_cli: Any, tmp_path: Path) -> None:
    async def main() -> str:
        app = await kit.Backend("app").start()
        port = kit.free_port()
        server = await kit.standalone(proxy_cli, kit.http_config(port, {"inbound": [app.port]}, direction="INBOUND"),
                                      tmp_path, port=port, env=SERVER_ENV)
        response = await kit.get(port, headers=[("x-envoy-peer-metadata", "%%%garbage")])
        assert response.status == 200
        assert _peer_header_names(app.requests[0].headers) == []
        # The server side answers with its own metadata (for the client's proxy to read).
        assert parse(response.header(METADATA) or b"") == ("httpbin", "shop", "httpbin")
        return await _scrape(kit, kit.admin_port_of(server))

    text = kit.run(main())
    assert "meshbox_proxy_peer_metadata_malformed_total 1.0" in text
    inbound = _samples(text, "istio_requests_total")
    assert [(s["source_workload"], s["reporter"]) for s in inbound] == [("unknown", "destination")]


def test_tcp_reports_the_endpoint_workload(kit: Any, proxy_cli: Any, tmp_path: Path) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # (The readiness probe of ``standalone`` connects too, and sends nothing.)
        writer.write(await reader.read(4))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> str:
        backend = await asyncio.start_server(serve, "127.0.0.1", 0)
        backend_port = backend.sockets[0].getsockname()[1]
        port = kit.free_port()
        config = message_from_data({
            "listeners": [{"name": "tcp", "direction": "OUTBOUND", "address": "127.0.0.1", "port": port,
                           "protocol": "TCP", "cluster": "db", "bind": True}],
            "clusters": [{"name": "db", "service": "db.data.svc.cluster.local"}],
            "endpoints": [{"cluster_name": "db", "endpoints": [{
                "address": "127.0.0.1", "port": backend_port,
                "workload": {"name": "postgres", "namespace": "data", "app": "pg"}}]}],
        }, pc.ProxyConfig)
        proc = await kit.standalone(proxy_cli, config, tmp_path, port=port, env=CLIENT_ENV)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        await writer.wait_closed()
        admin = kit.admin_port_of(proc)
        for _ in range(100):
            text = await _scrape(kit, admin)
            if "istio_tcp_connections_closed_total{" in text:
                break
            await asyncio.sleep(0.02)
        backend.close()
        await backend.wait_closed()
        return text

    opened = _samples(kit.run(main()), "istio_tcp_connections_opened_total")
    assert [(s["destination_workload"], s["destination_workload_namespace"], s["destination_app"],
             s["source_workload"]) for s in opened] == [("postgres", "data", "pg", "sleep")]


def test_mutual_tls_identity_overrules_a_namespace_claim() -> None:
    """Over mutual TLS the peer's certificate names its namespace: metadata claiming another is dropped."""
    from meshbox.proxy.metrics import Stats
    from meshbox.proxy.peer_metadata import PeerMetadata

    stats = Stats()
    exchange = PeerMetadata(Workload("httpbin", "shop", "httpbin"), "", None, stats)
    claim = [(b"host", b"x"), (METADATA, _forged("sleep", "default").encode()), (b"x-envoy-peer-metadata-id", b"i")]
    headers, peer = exchange.take(list(claim), "spiffe://cluster.local/ns/default/sa/sleep")
    assert peer == ("sleep", "default", "sleep") and headers == [(b"host", b"x")]
    headers, peer = exchange.take(list(claim), "spiffe://cluster.local/ns/attacker/sa/sleep")
    assert peer is None and headers == [(b"host", b"x")]
    assert stats.counters == {"peer_metadata_namespace_mismatch": 1}
    replaced = exchange.replace(list(claim))
    assert [n for n, _ in replaced].count(METADATA) == 1 and parse(dict(replaced)[METADATA])[0] == "httpbin"
