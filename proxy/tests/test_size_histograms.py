"""``istio_request_bytes`` / ``istio_response_bytes`` on a real scrape of a real meshbox-proxy process:
a request with a 1,234-byte body and its answer land in Istio's size buckets, per series."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


async def _scrape(admin: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", admin)
    writer.write(b"GET /stats/prometheus HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    return data.partition(b"\r\n\r\n")[2].decode()


def test_request_and_response_sizes_on_a_real_scrape(kit: Any, proxy_cli: Any, tmp_path: Path) -> None:
    async def scenario() -> None:
        backend = await kit.Backend().start()
        port, admin = kit.free_port(), kit.free_port()
        await kit.standalone(proxy_cli, kit.http_config(port, {"svc": [backend.port]}), tmp_path,
                             "--admin-port", str(admin), port=port)
        client = await kit.Client.connect(port)
        posted = await client.request("POST", "/upload", body=b"x" * 1234)
        empty = await client.request("GET", "/")
        client.close()
        backend.close()
        assert posted.status == empty.status == 200
        text = await _scrape(admin)
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

        def values(name: str) -> dict[str, float]:
            return {s.labels.get("le", ""): s.value for s in samples if s.name == name}

        request_buckets = values("istio_request_bytes_bucket")
        # The 0-byte GET is in le=1, the 1,234-byte POST from le=10000 on (bounds are inclusive).
        assert request_buckets == {"1.0": 1.0, "10.0": 1.0, "100.0": 1.0, "1000.0": 1.0, "10000.0": 2.0,
                                   "100000.0": 2.0, "1000000.0": 2.0, "10000000.0": 2.0, "+Inf": 2.0}
        assert values("istio_request_bytes_sum") == {"": 1234.0}
        assert values("istio_request_bytes_count") == {"": 2.0}
        # The echo backend's answers: the POST's JSON holds the 1,234-byte body, the GET's is short.
        assert values("istio_response_bytes_sum") == {"": float(len(posted.body) + len(empty.body))}
        response_buckets = values("istio_response_bytes_bucket")
        assert response_buckets["1000.0"] == 1.0 and response_buckets["10000.0"] == 2.0
        labels = next(s.labels for s in samples if s.name == "istio_response_bytes_count")
        assert labels["reporter"] == "source" and labels["response_code"] == "200"

    kit.run(scenario())
