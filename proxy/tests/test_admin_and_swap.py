"""meshbox-proxy as a real process: CLI errors, the admin API, and config applied under load."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from meshbox.api.loader import message_from_data
from meshbox.api.v1 import proxy_config_pb2 as pc

PROTOBUF = [("content-type", "application/x-protobuf")]


async def admin(kit: Any, port: int, method: str, path: str, body: bytes = b"") -> Any:
    client = await kit.Client.connect(port)
    try:
        return await client.request(method, path, headers=PROTOBUF if body else None, body=body, host="localhost")
    finally:
        client.close()


def test_bad_config_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listeners:\n- name: x\n  port: 99999\n  protocol: HTTP\n")
    result = subprocess.run([sys.executable, "-m", "meshbox.proxy", "--config", str(bad), "--admin-port", "0",
                             "--outbound-port", "0"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert str(bad) in result.stderr and "listeners[0].port" in result.stderr
    result = subprocess.run([sys.executable, "-m", "meshbox.proxy", "--access-log-format", "%BOGUS%"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "%BOGUS%" in result.stderr


def test_admin_api_end_to_end(kit: Any, proxy_cli: Any) -> None:
    proc = proxy_cli("--admin-port", "0", "--outbound-port", "0", env={"POD_NAME": "sleep-5f7b9c8d4-x2x9z",
                                                                       "POD_NAMESPACE": "default"})
    port = kit.admin_port(proc)

    async def main() -> None:
        backend = await kit.Backend("a").start()
        listen = kit.free_port()
        assert (await admin(kit, port, "GET", "/ready")).status == 503
        assert (await admin(kit, port, "GET", "/config")).status == 405
        assert (await admin(kit, port, "GET", "/quitquitquit")).status == 405
        assert (await admin(kit, port, "POST", "/ready")).status == 405
        garbage = await admin(kit, port, "POST", "/config", b"\xff\xff\xff")
        assert garbage.status == 400 and b"ProxyConfig" in garbage.body
        broken = kit.http_config(listen, {"a": [backend.port]})
        broken.route_configs[0].virtual_hosts[0].routes[0].clusters[0].cluster = "missing"
        refused = await admin(kit, port, "POST", "/config", broken.SerializeToString())
        assert refused.status == 400 and b"unknown cluster 'missing'" in refused.body
        assert (await admin(kit, port, "GET", "/ready")).status == 503
        applied = await admin(kit, port, "POST", "/config", kit.http_config(listen, {"a": [backend.port]})
                              .SerializeToString())
        assert applied.status == 200, applied.body
        assert (await admin(kit, port, "GET", "/ready")).status == 200
        assert (await kit.get(listen)).header(b"x-backend") == b"a"
        dump = (await admin(kit, port, "GET", "/config_dump")).json()
        assert dump["version"] == 1 and dump["config"]["listeners"][0]["port"] == listen
        clusters = (await admin(kit, port, "GET", "/clusters")).body.decode()
        assert f"a::127.0.0.1:{backend.port}::cx_idle::1" in clusters
        stats = (await admin(kit, port, "GET", "/stats/prometheus")).body.decode()
        assert 'istio_requests_total{' in stats and 'source_workload="sleep"' in stats
        assert 'response_code="200"' in stats
        assert (await admin(kit, port, "POST", "/drain_listeners")).status == 200
        try:
            await kit.get(listen)
            raise AssertionError("a drained listener still accepts")
        except ConnectionError:
            pass
        assert (await admin(kit, port, "POST", "/quitquitquit")).status == 200

    kit.run(main())
    assert proc.wait(timeout=10) == 0
    assert '"GET / HTTP/1.1" 200 - 0 ' in proc.log_path.read_text()


def test_config_swap_under_load_drops_nothing(kit: Any, proxy_cli: Any, tmp_path: Path) -> None:
    """Bounded load (4 keep-alive clients, at most 20000 requests or 8 s) while five configs are POSTed:
    a route change, a listener added, an invalid config, a route change back, the extra listener removed."""
    proc = proxy_cli("--admin-port", "0", "--outbound-port", "0")
    port = kit.admin_port(proc)

    async def main() -> None:
        a, b = await kit.Backend("a").start(), await kit.Backend("b").start()
        listen, extra = kit.free_port(), kit.free_port()
        to_a = kit.http_config(listen, {"a": [a.port], "b": [b.port]})
        to_b = kit.http_config(listen, {"b": [b.port], "a": [a.port]})
        with_extra = kit.http_config(listen, {"b": [b.port], "a": [a.port]}, extra_listeners=[
            {"name": "extra", "direction": "OUTBOUND", "address": "127.0.0.1", "port": extra, "protocol": "HTTP",
             "route_config": "rc", "bind": True}])
        invalid = message_from_data({"listeners": [{"name": "x", "port": listen, "protocol": "HTTP",
                                                    "route_config": "nope"}]}, pc.ProxyConfig)
        assert (await admin(kit, port, "POST", "/config", to_a.SerializeToString())).status == 200
        failures: list[str] = []
        served: list[bytes] = []
        stop = asyncio.Event()
        deadline = time.monotonic() + 8

        async def load() -> None:
            client = await kit.Client.connect(listen)
            while not stop.is_set() and len(served) < 20000 and time.monotonic() < deadline:
                try:
                    resp = await client.request()
                    if resp.status != 200:
                        failures.append(f"status {resp.status}")
                    served.append(resp.header(b"x-backend") or b"?")
                except Exception as exc:
                    failures.append(repr(exc))
                    client.close()
                    client = await kit.Client.connect(listen)
            client.close()

        workers = [asyncio.create_task(load()) for _ in range(4)]
        steps = [(to_b, 200), (with_extra, 200), (invalid, 400), (to_a, 200), (to_b, 200)]
        for config, status in steps:
            await asyncio.sleep(0.2)
            reply = await admin(kit, port, "POST", "/config", config.SerializeToString())
            assert reply.status == status, reply.body
            if config is with_extra:
                assert (await kit.get(extra)).status == 200
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*workers)
        assert failures == []
        assert len(served) > 100
        assert b"a" in served and b"b" in served
        assert (await kit.get(listen)).header(b"x-backend") == b"b"  # the last config applied is the one serving
        dump = (await admin(kit, port, "GET", "/config_dump")).json()
        assert dump["version"] == 5  # the invalid config did not count
        try:
            await kit.get(extra)
            raise AssertionError("the removed listener still accepts")
        except ConnectionError:
            pass
        assert json.dumps(dump).count('"extra"') == 0

    kit.run(main(), timeout=40)


def test_admin_answers_whole_responses_in_pieces(kit: Any, proxy_cli: Any) -> None:
    """The admin API writes responses as pieces (a scrape is never joined): the head's Content-Length
    matches the body, kept-alive requests follow each other, and the refusal of an oversized config
    (a 413 written straight from the reader) is a whole response too."""
    proc = proxy_cli("--admin-port", "0", "--outbound-port", "0")
    port = kit.admin_port(proc)

    async def main() -> None:
        client = await kit.Client.connect(port)
        try:
            for path in ("/stats/prometheus", "/ready", "/stats/prometheus"):
                reply = await client.request("GET", path, host="localhost")
                assert reply.status in (200, 503)
                assert int(reply.header(b"content-length") or b"-1") == len(reply.body)
        finally:
            client.close()
        data, closed = await kit.raw_exchange(port, b"POST /config HTTP/1.1\r\nhost: x\r\n"
                                                    b"content-length: 999999999999\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 413 ") and data.endswith(b"request body too large\n") and closed

    kit.run(main())
