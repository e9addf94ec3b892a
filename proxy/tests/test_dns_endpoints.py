"""Endpoints by DNS name (a ServiceEntry with resolution DNS): the proxy resolves the name when it opens a
connection, with the system resolver, so /etc/hosts applies (``localhost`` is 127.0.0.1 there; the test
reads /etc/hosts to know). Real sockets; no network."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from meshbox.api.validation import ValidationError, validate_proxy_config


def _hosts_name_for_loopback() -> str:
    """A name /etc/hosts maps to 127.0.0.1 (and to nothing else)."""
    names: dict[str, set[str]] = {}
    for line in Path("/etc/hosts").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        for name in fields[1:]:
            names.setdefault(name, set()).add(fields[0])
    for name, addresses in sorted(names.items()):
        if addresses == {"127.0.0.1"} and {a[4][0] for a in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)} \
                == {"127.0.0.1"}:
            return name
    pytest.skip("no name in /etc/hosts maps to 127.0.0.1 alone")


def test_endpoint_by_name_is_resolved_at_connect(kit: Any, tmp_path: Path) -> None:
    name = _hosts_name_for_loopback()

    async def main() -> tuple[Any, str]:
        backend = await kit.Backend("by-name").start()
        port = kit.free_port()
        config = kit.http_config(port, {"external": [backend.port]})
        config.endpoints[0].endpoints[0].address = name
        validate_proxy_config(config)
        async with kit.proxy(config, tmp_path) as p:
            resp = await kit.get(port)
            lines = await p.wait_log(1)
        backend.close()
        return resp, lines[0]

    resp, line = kit.run(main())
    assert resp.status == 200 and resp.json()["backend"] == "by-name"
    assert kit.log_fields(line)[12].startswith(f"{name}:")  # the upstream host as configured


@pytest.mark.parametrize("address", ["not a name", "bad_name.example", "-x.example"])
def test_endpoint_address_must_be_ip_or_name(kit: Any, address: str) -> None:
    config = kit.http_config(1080, {"external": [80]})
    config.endpoints[0].endpoints[0].address = address
    with pytest.raises(ValidationError, match="neither an IP address nor a DNS name"):
        validate_proxy_config(config)
