"""ServiceEntries without addresses (Istio's usual egress form): accepted for HTTP ports, which the port's
wildcard egress listener serves by Host header; other protocols still need an address and are refused by
field. The proxy config field behind it (Listener.pass_unknown_hosts) is checked by validation."""

from __future__ import annotations

from typing import Any

import pytest
from ruamel.yaml import YAML

from meshbox.api.istio.service_entry import translate_service_entry
from meshbox.api.loader import message_from_data
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.validation import ValidationError, validate_proxy_config

EGRESS = """
apiVersion: networking.istio.io/{version}
kind: ServiceEntry
metadata: {{name: httpbin-ext}}
spec:
  hosts: [httpbin.example.com]
  ports: [{{number: 80, name: http, protocol: {protocol}}}]
  resolution: DNS
  location: MESH_EXTERNAL
"""


def load(text: str) -> dict[str, Any]:
    data = YAML(typ="safe").load(text)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_http_entry_without_addresses(version: str) -> None:
    entry, findings = translate_service_entry(load(EGRESS.format(version=version, protocol="HTTP")), source="se.yaml")
    assert findings == [] and entry is not None
    assert (entry.host, entry.address) == ("httpbin.example.com", "")
    assert [(p.number, p.http) for p in entry.ports] == [(80, True)]
    assert [e.address for e in entry.endpoints] == ["httpbin.example.com"]


@pytest.mark.parametrize("protocol", ["TCP", "TLS", "HTTPS", "HTTP2", "GRPC", "MONGO"])
def test_other_protocols_still_need_an_address(protocol: str) -> None:
    entry, findings = translate_service_entry(load(EGRESS.format(version="v1", protocol=protocol)), source="se.yaml")
    assert entry is None
    assert [(f.code.id, f.path) for f in findings] == [("MB0105", "spec.ports[0].protocol")]
    assert findings[0].message.startswith(f"{protocol} without spec.addresses: not implemented by meshbox yet")
    assert "give the entry one address in spec.addresses" in findings[0].message
    with_address = load(EGRESS.format(version="v1", protocol=protocol))
    with_address["spec"]["addresses"] = ["10.100.200.20"]
    entry, findings = translate_service_entry(with_address, source="se.yaml")
    assert findings == [] and entry is not None and entry.address == "10.100.200.20"


def test_several_addresses_and_ranges_stay_refused() -> None:
    doc = load(EGRESS.format(version="v1", protocol="HTTP"))
    doc["spec"]["addresses"] = ["10.100.200.20", "10.100.200.21"]
    _, findings = translate_service_entry(doc, source="se.yaml")
    assert [(f.code.id, f.path) for f in findings] == [("MB0105", "spec.addresses")]
    doc["spec"]["addresses"] = ["10.100.200.0/24"]
    _, findings = translate_service_entry(doc, source="se.yaml")
    assert [(f.code.id, f.path) for f in findings] == [("MB0105", "spec.addresses[0]")]


def _listener_config(**listener: Any) -> pc.ProxyConfig:
    return message_from_data({
        "listeners": [{"name": "egress", "direction": "OUTBOUND", "address": "0.0.0.0", "port": 80,
                       "protocol": "HTTP", "route_config": "80", "pass_unknown_hosts": True, **listener}],
        "route_configs": [{"name": "80"}],
        "clusters": [{"name": "c"}],
    }, pc.ProxyConfig)


@pytest.mark.parametrize("address", ["", "0.0.0.0", "::"])
def test_pass_unknown_hosts_on_wildcard_outbound_http(address: str) -> None:
    validate_proxy_config(_listener_config(address=address))


@pytest.mark.parametrize("listener", [{"address": "10.96.0.10"}, {"direction": "INBOUND"},
                                      {"protocol": "TCP", "cluster": "c", "route_config": ""}])
def test_pass_unknown_hosts_elsewhere_is_refused(listener: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="pass_unknown_hosts applies to OUTBOUND HTTP listeners on a "
                                              "wildcard address") as info:
        validate_proxy_config(_listener_config(**listener))
    assert "listeners[0].pass_unknown_hosts" in str(info.value)
