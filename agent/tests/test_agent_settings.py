"""Pod identity from the environment and the discovery address: clear errors for bad input."""

from __future__ import annotations

import re

import pytest

from meshbox.agent.discovery_address import AddressError, check_address
from meshbox.agent.pod_identity import PodIdentityError, node_from_env

ENV = {"POD_NAME": "service-one-5d8f", "POD_NAMESPACE": "default", "POD_IP": "10.1.0.7"}


def test_the_node_is_named_pod_dot_namespace() -> None:
    node = node_from_env(ENV)
    assert (node.id, node.pod_name, node.pod_namespace, node.pod_ip) == (
        "service-one-5d8f.default", "service-one-5d8f", "default", "10.1.0.7")


@pytest.mark.parametrize("missing", ["POD_NAME", "POD_NAMESPACE", "POD_IP"])
def test_a_missing_variable_is_named(missing: str) -> None:
    env = {k: v for k, v in ENV.items() if k != missing}
    with pytest.raises(PodIdentityError, match=f"{missing} is not set"):
        node_from_env(env)


def test_a_malformed_pod_ip_is_refused() -> None:
    with pytest.raises(PodIdentityError, match=re.escape("POD_IP is not an IP address: 'ten.one'")):
        node_from_env({**ENV, "POD_IP": "ten.one"})


@pytest.mark.parametrize(("address", "expected"), [
    ("meshbox-discovery.meshbox-system.svc:15010", ("meshbox-discovery.meshbox-system.svc", 15010)),
    ("127.0.0.1:1", ("127.0.0.1", 1)),
    ("[::1]:15010", ("::1", 15010)),
])
def test_good_addresses_split(address: str, expected: tuple[str, int]) -> None:
    assert check_address(address) == expected


@pytest.mark.parametrize(("address", "why"), [
    ("discovery", "must be HOST:PORT"),
    (":15010", "must be HOST:PORT"),
    ("host:0", "port must be 1..65535"),
    ("host:http", "port must be 1..65535"),
    ("::1:15010", "in brackets"),
    ("[::1:15010", "must be HOST:PORT|\\[addr\\]:port"),
])
def test_bad_addresses_say_what_is_wrong(address: str, why: str) -> None:
    with pytest.raises(AddressError, match=why):
        check_address(address)
