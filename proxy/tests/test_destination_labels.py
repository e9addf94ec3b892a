"""A source-side proxy reports the workload discovery put on each endpoint as destination_workload,
_namespace and _app (real proxy process, config through the admin API and its compile child)."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

PROTOBUF = [("content-type", "application/x-protobuf")]


async def admin(kit: Any, port: int, method: str, path: str, body: bytes = b"") -> Any:
    client = await kit.Client.connect(port)
    try:
        return await client.request(method, path, headers=PROTOBUF if body else None, body=body, host="localhost")
    finally:
        client.close()


def _requests_by_destination(text: str) -> dict[tuple[str, str, str], float]:
    found: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "istio_requests":
            continue
        for sample in family.samples:
            if sample.name == "istio_requests_total":
                labels = sample.labels
                key = (labels["destination_workload"], labels["destination_workload_namespace"],
                       labels["destination_app"])
                found[key] = found.get(key, 0) + sample.value
                assert labels["source_workload"] == "sleep" and labels["reporter"] == "source"
    return found


def test_each_endpoint_reports_its_own_workload(kit: Any, proxy_cli: Any) -> None:
    proc = proxy_cli("--admin-port", "0", "--outbound-port", "0",
                     env={"POD_NAME": "sleep-5f7b9c8d4-x2x9z", "POD_NAMESPACE": "default"})
    port = kit.admin_port(proc)

    async def main() -> str:
        known = await kit.Backend("v1").start()
        unknown = await kit.Backend("v2").start()
        listen = kit.free_port()
        config = kit.http_config(listen, {"a": [known.port, unknown.port]})
        workload = config.endpoints[0].endpoints[0].workload
        workload.name, workload.namespace, workload.app = "reviews-v1", "shop", "reviews"
        applied = await admin(kit, port, "POST", "/config", config.SerializeToString())
        assert applied.status == 200, applied.body
        seen = [(await kit.get(listen)).header(b"x-backend") for _ in range(4)]
        assert sorted(seen) == [b"v1", b"v1", b"v2", b"v2"]
        return (await admin(kit, port, "GET", "/stats/prometheus")).body.decode()

    counts = _requests_by_destination(asyncio.run(main()))
    assert counts == {("reviews-v1", "shop", "reviews"): 2, ("unknown", "unknown", "unknown"): 2}
