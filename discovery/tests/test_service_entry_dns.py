"""A ServiceEntry with resolution DNS in discovery's registry: its endpoints keep their names in the
proxy config (the proxy resolves them when it connects), and without endpoints the host itself is the
endpoint, as in Istio."""

from __future__ import annotations

from typing import Any

from meshbox.discovery.config_builder import ConfigBuilder
from meshbox.discovery.registry import SourcedDocument, build_registry
from meshbox.proxy.config_compiler import compile_config
from meshbox.proxy.snapshot import Workload


def _entry(endpoints: list[dict[str, Any]] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"hosts": ["api.example.com"], "addresses": ["10.96.50.2"], "resolution": "DNS",
                            "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080}]}
    if endpoints is not None:
        spec["endpoints"] = endpoints
    return {"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "api", "namespace": "default"}, "spec": spec}


def _endpoints(kit: Any, entry: dict[str, Any]) -> list[tuple[str, int]]:
    registry = build_registry(SourcedDocument("se.yaml", d) for d in [*kit.tutorial_objects(), entry])
    assert registry.errors == ()
    config = ConfigBuilder(registry).build(kit.node("service-one-a", "10.1.0.11"))
    compile_config(config, Workload())  # the proxy takes it
    (cla,) = [c for c in config.endpoints if c.cluster_name == "outbound|80||api.example.com"]
    return [(e.address, e.port) for e in cla.endpoints]


def test_dns_endpoints_keep_their_names(kit: Any) -> None:
    entry = _entry([{"address": "api-1.backend.internal", "ports": {"http": 9443}}, {"address": "localhost"}])
    assert _endpoints(kit, entry) == [("api-1.backend.internal", 9443), ("localhost", 8080)]


def test_dns_without_endpoints_connects_to_the_host(kit: Any) -> None:
    assert _endpoints(kit, _entry(None)) == [("api.example.com", 8080)]
