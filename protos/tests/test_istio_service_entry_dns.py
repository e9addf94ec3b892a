"""ServiceEntry resolution DNS / DNS_ROUND_ROBIN: endpoints by name (or the host itself), checked names;
STATIC keeps taking IP addresses only; the proxy config's endpoint addresses take names too."""

from __future__ import annotations

from typing import Any

import pytest
from ruamel.yaml import YAML

from meshbox.api.istio.service_entry import translate_service_entry
from meshbox.api.validation import is_dns_name

ENTRY = """
apiVersion: networking.istio.io/{version}
kind: ServiceEntry
metadata: {{name: payments}}
spec:
  hosts: [payments.example.com]
  addresses: [10.100.200.9]
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  resolution: {resolution}
{endpoints}"""


def load(text: str) -> dict[str, Any]:
    data = YAML(typ="safe").load(text)
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
@pytest.mark.parametrize("resolution", ["DNS", "DNS_ROUND_ROBIN"])
def test_dns_endpoints_by_name(version: str, resolution: str) -> None:
    endpoints = ("  endpoints:\n  - {address: Backend-1.Example.internal., ports: {http: 8080}}\n"
                 "  - {address: 192.0.2.10}\n")
    entry, findings = translate_service_entry(load(ENTRY.format(version=version, resolution=resolution,
                                                                endpoints=endpoints)), source="se.yaml")
    assert findings == [] and entry is not None
    assert [(e.address, dict(e.ports)) for e in entry.endpoints] == [("backend-1.example.internal", {"http": 8080}),
                                                                     ("192.0.2.10", {})]


def test_dns_without_endpoints_resolves_the_host() -> None:
    entry, findings = translate_service_entry(load(ENTRY.format(version="v1", resolution="DNS", endpoints="")),
                                              source="se.yaml")
    assert findings == [] and entry is not None
    assert [(e.address, dict(e.ports)) for e in entry.endpoints] == [("payments.example.com", {})]


@pytest.mark.parametrize(("resolution", "address", "message"), [
    ("STATIC", "backend.example", "'backend.example' is a name: resolution STATIC takes IP addresses (use "
                                  "resolution DNS for names)"),
    ("DNS", "bad_name!.example", "'bad_name!.example' is neither an IP address nor a DNS name"),
    ("DNS", "unix:///var/run/x.sock", "'unix:///var/run/x.sock': Unix socket endpoints: not implemented by "
                                      "meshbox's proxy yet"),
])
def test_bad_endpoint_addresses(resolution: str, address: str, message: str) -> None:
    entry, findings = translate_service_entry(load(ENTRY.format(
        version="v1", resolution=resolution, endpoints=f"  endpoints: [{{address: '{address}'}}]\n")),
        source="se.yaml")
    assert entry is None
    assert [(f.path, f.message) for f in findings] == [("spec.endpoints[0].address", message)]


@pytest.mark.parametrize(("name", "ok"), [("localhost", True), ("a-b.c.example.", True), ("10.1.2.3", False),
                                          ("-a.example", False), ("a..b", False), ("", False), ("A.example", False)])
def test_dns_names(name: str, ok: bool) -> None:
    assert is_dns_name(name) is ok
