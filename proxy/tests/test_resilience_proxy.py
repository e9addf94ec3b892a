"""Retries, circuit breaking, outlier detection and load balancing through a real proxy: real
sockets to real backends (h11), configs with the fields discovery fills from Istio's API."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.proxy.cluster_resilience import resilience_lines
from meshbox.proxy.metrics_exposition import render


def _flag_of(kit: Any, line: str) -> tuple[int, str]:
    fields = kit.log_fields(line)
    return int(fields[2]), fields[3]


def _answers(*script: int | str, delay: float = 0.0) -> Callable[..., Any]:
    """A backend handler answering call n with script[n] (the last one repeats): a status, or "close"
    (close the connection without answering)."""
    calls = {"n": 0}

    async def handler(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
        step = script[min(calls["n"], len(script) - 1)]
        calls["n"] += 1
        if delay:
            await asyncio.sleep(delay)
        if not isinstance(step, int):  # "close"
            return False
        body = b"%s %d" % (backend.name.encode(), step)
        writer.write(b"HTTP/1.1 %d X\r\ncontent-length: %d\r\nx-backend: %s\r\n\r\n%s"
                     % (step, len(body), backend.name.encode(), body))
        return True

    return handler


def _retry_config(kit: Any, port: int, backends: list[int], *, attempts: int, retry_on: list[str],
                  codes: tuple[int, ...] = ()) -> pc.ProxyConfig:
    route = {"clusters": [{"cluster": "svc", "weight": 100}], "timeout": "5s",
             "retries": {"attempts": attempts, "retry_on": retry_on, "retriable_status_codes": list(codes)}}
    return kit.http_config(port, {"svc": backends}, routes=[route])


def test_5xx_is_retried_with_the_kept_body(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backend = await kit.Backend("b", _answers(503, 500, 200)).start()
        port = kit.free_port()
        async with kit.proxy(_retry_config(kit, port, [backend.port], attempts=3, retry_on=["5xx"]), tmp_path) as p:
            client = await kit.Client.connect(port)
            resp = await client.request("POST", body=b"order #1")
            client.close()
            lines = await p.wait_log(1)
            counters = dict(p.ctx.stats.counters)
        assert (resp.status, resp.body) == (200, b"b 200")
        assert [r.body for r in backend.requests] == [b"order #1"] * 3
        assert len(lines) == 1 and _flag_of(kit, lines[0]) == (200, "-")
        assert counters["upstream_rq_retry"] == 2

    kit.run(main())


def test_retry_limit_reached_passes_the_last_answer_flagged_urx(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backend = await kit.Backend("b", _answers(503)).start()
        port = kit.free_port()
        config = _retry_config(kit, port, [backend.port], attempts=2, retry_on=["gateway-error"])
        async with kit.proxy(config, tmp_path) as p:
            resp = await kit.get(port)
            lines = await p.wait_log(1)
            counters = dict(p.ctx.stats.counters)
        assert (resp.status, resp.body) == (503, b"b 503")
        assert len(backend.requests) == 3
        assert _flag_of(kit, lines[0]) == (503, "URX")
        assert counters["upstream_rq_retry"] == 2 and counters["upstream_rq_retry_limit_exceeded"] == 1

    kit.run(main())


@pytest.mark.parametrize(("retry_on", "codes", "script", "expected"), [
    (["retriable-4xx"], (), (409, 200), (200, 2)),
    (["retriable-status-codes"], (418,), (418, 200), (200, 2)),
    (["retriable-status-codes"], (418,), (500, 200), (500, 1)),
    (["gateway-error"], (), (500, 200), (500, 1)),
    (["connect-failure"], (), (503, 200), (503, 1)),
    (["reset"], (), ("close", 200), (200, 2)),
    (["connect-failure"], (), ("close", 200), (503, 1)),
])
def test_each_condition_retries_what_it_names(kit: Any, tmp_path: Path, retry_on: list[str], codes: tuple[int, ...],
                                              script: tuple[int | str, ...], expected: tuple[int, int]) -> None:
    async def main() -> None:
        backend = await kit.Backend("b", _answers(*script)).start()
        port = kit.free_port()
        config = _retry_config(kit, port, [backend.port], attempts=1, retry_on=retry_on, codes=codes)
        async with kit.proxy(config, tmp_path):
            resp = await kit.get(port)
        assert (resp.status, len(backend.requests)) == expected

    kit.run(main())


def test_connect_failures_are_retried_on_another_endpoint(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backend = await kit.Backend("b", _answers(200)).start()
        port = kit.free_port()
        dead = kit.free_port()  # nothing listens there
        config = _retry_config(kit, port, [dead, backend.port], attempts=2, retry_on=["connect-failure"])
        async with kit.proxy(config, tmp_path):
            codes = [(await kit.get(port)).status for _ in range(6)]
        assert codes == [200] * 6

    kit.run(main())


def test_the_cluster_retry_limit_stops_retries_from_piling_up(kit: Any, tmp_path: Path) -> None:
    """max_retries 1: while one request's retry is in flight, another failing request is not retried;
    its answer goes to the client flagged UO and the overflow is counted."""
    async def main() -> None:
        slow = {"n": 0}

        async def handler(backend: Any, req: Any, writer: asyncio.StreamWriter) -> bool:
            slow["n"] += 1
            if req.target == b"/a" and slow["n"] > 1:
                await asyncio.sleep(0.6)  # the retry of /a holds the cluster's only retry slot
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                return True
            writer.write(b"HTTP/1.1 503 X\r\ncontent-length: 4\r\n\r\nfail")
            return True

        backend = await kit.Backend("b", handler).start()
        port = kit.free_port()
        config = _retry_config(kit, port, [backend.port], attempts=1, retry_on=["5xx"])
        config.clusters[0].circuit_breakers.max_retries = 1
        async with kit.proxy(config, tmp_path) as p:
            first = asyncio.ensure_future(kit.get(port, "/a"))
            await asyncio.sleep(0.2)
            second = await kit.get(port, "/b")
            lines = await p.wait_log(1)
            done = await first
            counters = dict(p.ctx.stats.counters)
            text = "\n".join(resilience_lines("svc", *_guard_parts(p.ctx.snapshot.clusters["svc"])))
        assert (done.status, second.status) == (200, 503)
        assert _flag_of(kit, lines[0]) == (503, "UO")
        assert counters["upstream_rq_retry_overflow"] == 1 and counters["upstream_rq_retry"] == 1
        assert "svc::upstream_rq_retry_overflow::1" in text and "svc::circuit_breakers::max_retries::1" in text

    kit.run(main())


def _guard_parts(cluster: Any) -> tuple[Any, Any, Any]:
    return cluster.resilience, cluster.limits, cluster.guard


def test_max_requests_overflow_is_503_uo(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backend = await kit.Backend("b", _answers(200, delay=0.4)).start()
        port = kit.free_port()
        config = kit.http_config(port, {"svc": [backend.port]})
        config.clusters[0].circuit_breakers.max_requests = 2
        async with kit.proxy(config, tmp_path) as p:
            responses = await asyncio.gather(*(kit.get(port) for _ in range(5)))
            lines = await p.wait_log(5)
            counters = dict(p.ctx.stats.counters)
            after = await kit.get(port)
        assert sorted(r.status for r in responses) == [200, 200, 503, 503, 503]
        overflowed = [r for r in responses if r.status == 503]
        assert all(b"reset reason: overflow" in r.body for r in overflowed)
        assert sorted(_flag_of(kit, line) for line in lines) == [(200, "-")] * 2 + [(503, "UO")] * 3
        assert {kit.log_fields(line)[-1] for line in lines if _flag_of(kit, line)[1] == "UO"} == {"-"}
        assert counters["upstream_rq_pending_overflow"] == 3
        assert after.status == 200  # the slots were given back

    kit.run(main())


def test_connections_pooled_before_the_limits_do_not_count_as_slots(kit: Any, tmp_path: Path) -> None:
    """Idle connections to the endpoint from before max_connections applied are not used by the
    limited cluster: 6 requests at once still get one connection and one pending request."""
    async def main() -> None:
        backend = await kit.Backend("b", _answers(200, delay=0.3)).start()
        port = kit.free_port()
        config = kit.http_config(port, {"svc": [backend.port]})
        async with kit.proxy(config, tmp_path) as p:
            assert [r.status for r in await asyncio.gather(*(kit.get(port) for _ in range(4)))] == [200] * 4
            config.clusters[0].circuit_breakers.max_connections = 1
            config.clusters[0].circuit_breakers.max_pending_requests = 1
            config.clusters[0].circuit_breakers.max_requests_per_connection = 1
            await p.server.apply(config)
            responses = await asyncio.gather(*(kit.get(port) for _ in range(6)))
        assert sorted(r.status for r in responses) == [200, 200, 503, 503, 503, 503]
        assert backend.connections == 4 + 2  # one per request once the limits apply

    kit.run(main())


def test_max_requests_per_connection(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backend = await kit.Backend("b").start()
        port = kit.free_port()
        config = kit.http_config(port, {"svc": [backend.port]})
        config.clusters[0].circuit_breakers.max_requests_per_connection = 2
        async with kit.proxy(config, tmp_path):
            client = await kit.Client.connect(port)
            for _ in range(5):
                assert (await client.request()).status == 200
            client.close()
        assert len(backend.requests) == 5 and backend.connections == 3

    kit.run(main())


def test_outlier_ejection_and_return(kit: Any, tmp_path: Path) -> None:
    """Of two endpoints one answers 500: after two in a row it is ejected (every request then goes to
    the good one), shown in the cluster lines and the gauge; after the ejection time it is back."""
    async def main() -> None:
        good = await kit.Backend("good", _answers(200)).start()
        bad = await kit.Backend("bad", _answers(500)).start()
        port = kit.free_port()
        config = kit.http_config(port, {"svc": [good.port, bad.port]})
        od = config.clusters[0].outlier_detection
        od.consecutive_5xx = 2
        od.interval.FromMilliseconds(100)
        od.base_ejection_time.FromMilliseconds(400)
        od.max_ejection_percent = 50
        async with kit.proxy(config, tmp_path) as p:
            first = [(await kit.get(port)).status for _ in range(4)]
            ejected_at = time.monotonic()
            later = [(await kit.get(port)).status for _ in range(10)]
            cluster = p.ctx.snapshot.clusters["svc"]
            lines = resilience_lines("svc", *_guard_parts(cluster))
            metrics = render([p.ctx.stats]).decode()
            await asyncio.sleep(max(0.0, ejected_at + 0.6 - time.monotonic()))
            back = [(await kit.get(port)).status]
            gauge_after = p.ctx.stats.counters["outlier_detection_ejections_active"]
            back += [(await kit.get(port)).status for _ in range(3)]
            # Two 500s in a row again: ejected a second time, for twice as long.
            record = cluster.guard.outlier.records[cluster.hosts[1]]
        assert sorted(first) == [200, 200, 500, 500]
        assert later == [200] * 10
        assert f"svc::127.0.0.1:{bad.port}::health_flags::/failed_outlier_check" in lines
        assert "svc::outlier::ejections_active::1" in lines
        assert "meshbox_proxy_outlier_detection_ejections_active 1" in metrics
        assert "# TYPE meshbox_proxy_outlier_detection_ejections_active gauge" in metrics
        assert "meshbox_proxy_outlier_detection_ejections_enforced_total 1" in metrics
        assert sorted(back) == [200, 200, 500, 500] and gauge_after == 0
        assert record.times_ejected == 2 and record.ejected_until - time.monotonic() > 0.4

    kit.run(main())


def test_ejections_and_counts_survive_a_config_push(kit: Any, tmp_path: Path) -> None:
    """Discovery pushes a new config on any change in the mesh: a cluster whose settings did not
    change keeps its ejections (and its counts); one whose settings changed starts afresh."""
    async def main() -> None:
        good = await kit.Backend("good", _answers(200)).start()
        bad = await kit.Backend("bad", _answers(500)).start()
        port = kit.free_port()
        config = kit.http_config(port, {"svc": [good.port, bad.port], "other": [good.port]})
        config.clusters[0].outlier_detection.consecutive_5xx = 1
        config.clusters[0].outlier_detection.max_ejection_percent = 50
        async with kit.proxy(config, tmp_path) as p:
            codes = [(await kit.get(port)).status for _ in range(4)]
            config.endpoints[1].endpoints[0].weight = 2  # a change elsewhere
            await p.server.apply(config)
            after_push = [(await kit.get(port)).status for _ in range(6)]
            kept = len(p.ctx.snapshot.clusters["svc"].guard.outlier.ejected)
            config.clusters[0].outlier_detection.consecutive_5xx = 2  # this cluster's own settings
            await p.server.apply(config)
            fresh = len(p.ctx.snapshot.clusters["svc"].guard.outlier.ejected)
            gauge = p.ctx.stats.counters["outlier_detection_ejections_active"]
        assert sorted(codes) == [200, 200, 200, 500] and after_push == [200] * 6
        assert (kept, fresh, gauge) == (1, 0, 0)

    kit.run(main())


def test_a_fully_ejected_cluster_still_serves(kit: Any, tmp_path: Path) -> None:
    """Panic: with its only endpoint ejected the cluster balances over all endpoints (no 503 UH)."""
    async def main() -> None:
        bad = await kit.Backend("bad", _answers(500, 500, 200)).start()
        port = kit.free_port()
        config = kit.http_config(port, {"svc": [bad.port]})
        config.clusters[0].outlier_detection.consecutive_5xx = 1
        config.clusters[0].outlier_detection.max_ejection_percent = 100
        async with kit.proxy(config, tmp_path) as p:
            codes = [(await kit.get(port)).status for _ in range(3)]
            assert p.ctx.snapshot.clusters["svc"].guard.outlier.ejected
        assert codes == [500, 500, 200] and len(bad.requests) == 3

    kit.run(main())


def _hash_config(kit: Any, port: int, backends: list[int], **key: Any) -> pc.ProxyConfig:
    config = kit.http_config(port, {"svc": backends}, lb="RING_HASH")
    for name, value in key.items():
        setattr(config.clusters[0].hash_policy, name, value)
    return config


def test_consistent_hash_on_header_cookie_and_source_ip(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backends = [await kit.Backend(f"b{i}").start() for i in range(4)]
        ports = [b.port for b in backends]
        port = kit.free_port()

        async def seen_by(headers: list[tuple[str, str]]) -> set[bytes]:
            return {(await kit.get(port, headers=headers)).header(b"x-backend") for _ in range(6)}

        async with kit.proxy(_hash_config(kit, port, ports, header_name="x-user"), tmp_path):
            users = {}
            for user in ("jason", "alice", "bob", "carol", "dave", "erin", "frank", "grace"):
                picked = await seen_by([("x-user", user)])
                assert len(picked) == 1, picked  # every request of a user to one endpoint
                users[user] = picked.pop()
            assert len(set(users.values())) >= 2
            keyless = await seen_by([])
            assert len(keyless) >= 1
        async with kit.proxy(_hash_config(kit, port, ports, cookie_name="session"), tmp_path):
            sessions = [await seen_by([("cookie", f"theme=dark; session={s}")]) for s in ("s1", "s2", "s3", "s4")]
            assert all(len(s) == 1 for s in sessions)
        async with kit.proxy(_hash_config(kit, port, ports, use_source_ip=True), tmp_path):
            assert len(await seen_by([])) == 1  # one client address: one endpoint

    kit.run(main())


def test_random_balancing_reaches_every_endpoint(kit: Any, tmp_path: Path) -> None:
    async def main() -> None:
        backends = [await kit.Backend(f"b{i}").start() for i in range(3)]
        port = kit.free_port()
        async with kit.proxy(kit.http_config(port, {"svc": [b.port for b in backends]}, lb="RANDOM"), tmp_path):
            client = await kit.Client.connect(port)
            seen = Counter([(await client.request()).header(b"x-backend") for _ in range(60)])
            client.close()
        assert set(seen) == {b"b0", b"b1", b"b2"}

    kit.run(main())


async def _admin(kit: Any, port: int, method: str, path: str, body: bytes = b"") -> Any:
    client = await kit.Client.connect(port)
    try:
        headers = [("content-type", "application/x-protobuf")] if body else None
        return await client.request(method, path, headers=headers, body=body, host="localhost")
    finally:
        client.close()


def test_connection_pool_limits_in_a_proxy_process(kit: Any, proxy_cli: Callable[..., Any]) -> None:
    """Istio's circuit-breaking task in small, on the installed (compiled) proxy, the config POSTed to
    its admin API (compiled in a child and handed over pickled): one connection, one pending request.
    Of 6 concurrent requests to a slow backend one is in flight, one waits and gets the connection
    after it (the backend sees a single connection), the other four are 503 UO at once; nothing is
    lost without a status. /clusters and the Prometheus metrics count the overflows."""
    proc = proxy_cli("--admin-port", "0", "--outbound-port", "0")
    admin_port = kit.admin_port(proc)

    async def main() -> None:
        backend = await kit.Backend("b", _answers(200, delay=0.3)).start()
        port = kit.free_port()
        config = kit.http_config(port, {"svc": [backend.port]})
        cb = config.clusters[0].circuit_breakers
        cb.max_connections, cb.max_pending_requests = 1, 1
        applied = await _admin(kit, admin_port, "POST", "/config", config.SerializeToString())
        assert applied.status == 200, applied.body
        responses = await asyncio.gather(*(kit.get(port) for _ in range(6)))
        clusters = (await _admin(kit, admin_port, "GET", "/clusters")).body.decode()
        metrics = (await _admin(kit, admin_port, "GET", "/stats/prometheus")).body.decode()
        assert sorted(r.status for r in responses) == [200, 200, 503, 503, 503, 503]
        assert all(b"overflow" in r.body for r in responses if r.status == 503)
        assert backend.connections == 1 and len(backend.requests) == 2
        for line in ("svc::circuit_breakers::max_connections::1", "svc::circuit_breakers::max_pending_requests::1",
                     "svc::upstream_rq_pending_overflow::4", "svc::rq_pending_active::0", "svc::cx_active::1"):
            assert line in clusters, clusters
        assert "meshbox_proxy_upstream_rq_pending_overflow_total 4" in metrics
        assert "meshbox_proxy_upstream_cx_overflow_total 5" in metrics  # every request that found no slot
        assert 'response_code="503",response_flags="UO",grpc_response_status=""} 4' in metrics

    kit.run(main())


def test_tcp_max_connections_and_ejection_of_a_refusing_endpoint(kit: Any, tmp_path: Path) -> None:
    """At L4: a connection over max_connections is closed at once, flag UO; an endpoint whose connects
    fail is ejected (Envoy counts connect failures as 5xx for TCP too) and connections go elsewhere."""
    async def main() -> None:
        async def upper(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(1024):
                writer.write(data.upper())
            writer.close()

        server = await asyncio.start_server(upper, "127.0.0.1", 0)
        backend_port = server.sockets[0].getsockname()[1]
        dead = kit.free_port()
        port = kit.free_port()

        def config(endpoints: list[int]) -> pc.ProxyConfig:
            c = pc.ProxyConfig(
                listeners=[pc.Listener(name="tcp", direction=pc.OUTBOUND, address="127.0.0.1", port=port,
                                       protocol=pc.TCP, cluster="db", bind=True)],
                clusters=[pc.Cluster(name="db", service="db.default.svc.cluster.local")],
                endpoints=[pc.ClusterLoadAssignment(cluster_name="db", endpoints=[
                    pc.Endpoint(address="127.0.0.1", port=p) for p in endpoints])])
            return c

        async def talk() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hi")
            try:
                return await asyncio.wait_for(reader.read(10), 2)
            finally:
                writer.close()

        limited = config([backend_port])
        limited.clusters[0].circuit_breakers.max_connections = 1
        async with kit.proxy(limited, tmp_path) as p:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"one")
            assert await reader.readexactly(3) == b"ONE"
            assert await talk() == b""  # refused: the only slot is taken
            writer.close()
            await asyncio.sleep(0.1)
            assert await talk() == b"HI"  # the slot is free again
            lines = await p.wait_log(3)
            assert p.ctx.stats.counters["upstream_cx_overflow"] == 1
        assert [kit.log_fields(line)[3] for line in lines].count("UO") == 1

        ejecting = config([dead, backend_port])
        ejecting.clusters[0].outlier_detection.consecutive_5xx = 1
        ejecting.clusters[0].outlier_detection.max_ejection_percent = 50
        async with kit.proxy(ejecting, tmp_path) as p:
            answers = [await talk() for _ in range(6)]
            ejected = p.ctx.snapshot.clusters["db"].guard.outlier.ejected
        assert answers.count(b"") == 1 and answers.count(b"HI") == 5
        assert [h.port for h in ejected] == [dead]
        server.close()

    kit.run(main())
