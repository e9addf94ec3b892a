"""What to capture: command-line flag values, checked and merged with the mesh config.

Pure functions only. Every error is a FlagError naming the flag it is about, so the
CLI can print it and exit 2 before touching any table.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from meshbox.api.defaults import inbound_capture_port
from meshbox.api.v1 import mesh_config_pb2

ALL: Literal["*"] = "*"
"""A selection meaning "everything" (`-b '*'`, `-i '*'`)."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PortSelection = Literal["*"] | tuple[int, ...]
CidrSelection = Literal["*"] | tuple[Network, ...]


class FlagError(ValueError):
    """A flag value that cannot be used; ``flag`` is the flag as the user typed it (e.g. ``-p``)."""

    def __init__(self, flag: str, reason: str) -> None:
        self.flag = flag
        self.reason = reason
        super().__init__(f"{flag}: {reason}")


@dataclass(frozen=True)
class OwnPort:
    """A port the sidecar itself listens on; inbound traffic to it is never captured."""

    port: int
    role: str


@dataclass(frozen=True)
class CaptureOptions:
    """Everything the rule plan depends on, already checked."""

    outbound_port: int
    inbound_port: int
    proxy_uids: tuple[int, ...]
    proxy_gids: tuple[int, ...]
    inbound_ports: PortSelection
    exclude_inbound_ports: tuple[int, ...]
    outbound_cidrs: CidrSelection
    exclude_outbound_cidrs: tuple[Network, ...]
    exclude_outbound_ports: tuple[int, ...]
    include_outbound_ports: tuple[int, ...]
    own_ports: tuple[OwnPort, ...]

    @property
    def single_port(self) -> bool:
        """True when inbound and outbound share one capture port (the 2017 tutorial's layout)."""
        return self.inbound_port == self.outbound_port

    @property
    def captures_inbound(self) -> bool:
        return self.inbound_ports == ALL or bool(self.inbound_ports)


@dataclass(frozen=True)
class FlagValues:
    """Raw flag strings as given on the command line; None = flag not given (mesh config applies)."""

    outbound_port: str | None = None
    inbound_port: str | None = None
    proxy_uids: str | None = None
    proxy_gids: str | None = None
    inbound_ports: str | None = None
    exclude_inbound_ports: str | None = None
    outbound_cidrs: str | None = None
    exclude_outbound_cidrs: str | None = None
    exclude_outbound_ports: str | None = None
    include_outbound_ports: str | None = None


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_port(text: str, flag: str) -> int:
    """One TCP port, 1..65535."""
    try:
        port = int(text.strip())
    except ValueError:
        raise FlagError(flag, f"not a port number: {text.strip()!r}") from None
    if not 1 <= port <= 65535:
        raise FlagError(flag, f"port must be 1..65535, got {port}")
    return port


def parse_ports(text: str, flag: str, *, allow_all: bool) -> PortSelection:
    """A comma-separated port list; ``*`` (all ports) only where ``allow_all``; '' = none."""
    items = _items(text)
    if ALL in items:
        if not allow_all:
            raise FlagError(flag, "'*' is not allowed in an exclude list")
        if len(items) > 1:
            raise FlagError(flag, "'*' cannot be combined with other ports")
        return ALL
    return tuple(dict.fromkeys(parse_port(item, flag) for item in items))


def parse_cidrs(text: str, flag: str, *, allow_all: bool) -> CidrSelection:
    """A comma-separated CIDR list (IPv4 and/or IPv6); ``*`` only where ``allow_all``; '' = none."""
    items = _items(text)
    if ALL in items:
        if not allow_all:
            raise FlagError(flag, "'*' is not allowed in an exclude list")
        if len(items) > 1:
            raise FlagError(flag, "'*' cannot be combined with CIDRs")
        return ALL
    networks: list[Network] = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise FlagError(flag, f"not a CIDR: {item!r}") from None
    return tuple(dict.fromkeys(networks))


def parse_ids(text: str, flag: str) -> tuple[int, ...]:
    """A comma-separated list of numeric UIDs or GIDs (at least one, never 0)."""
    ids: list[int] = []
    for item in _items(text):
        if not item.isdigit():
            raise FlagError(flag, f"not a numeric id: {item!r}")
        value = int(item)
        if value == 0:
            raise FlagError(flag, "the proxy must not run as root (id 0): root's traffic would escape capture")
        if value > 2**32 - 2:
            raise FlagError(flag, f"id out of range: {value}")
        ids.append(value)
    if not ids:
        raise FlagError(flag, "needs at least one id")
    return tuple(dict.fromkeys(ids))


def _ports_or(text: str | None, flag: str, default: Iterable[int]) -> tuple[int, ...]:
    if text is None:
        return tuple(default)
    parsed = parse_ports(text, flag, allow_all=False)
    assert parsed != ALL  # allow_all=False never returns ALL
    return parsed


def _own_ports(mesh: mesh_config_pb2.MeshConfig, outbound: int, inbound: int) -> tuple[OwnPort, ...]:
    roles = [
        (outbound, "outbound capture"),
        (inbound, "inbound capture"),
        (mesh.ports.admin, "proxy admin"),
        (mesh.ports.agent_status, "agent status"),
    ]
    seen: dict[int, OwnPort] = {}
    for port, role in roles:
        if port and port not in seen:
            seen[port] = OwnPort(port, role)
    return tuple(seen.values())


def capture_options(flags: FlagValues, mesh: mesh_config_pb2.MeshConfig) -> CaptureOptions:
    """Merge flags over the mesh config (flags win) and check the combination.

    Without ``-z`` the inbound capture port is the mesh config's (0 there = single-port
    mode: inbound goes to the outbound port, as in the tutorial's ``-p 15001 -u 1337``).
    """
    outbound = (parse_port(flags.outbound_port, "-p") if flags.outbound_port is not None
                else mesh.ports.outbound_capture)
    if flags.inbound_port is not None:
        inbound = parse_port(flags.inbound_port, "-z")
    elif mesh.ports.inbound_capture:
        inbound = inbound_capture_port(mesh)
    else:
        inbound = outbound
    uids = parse_ids(flags.proxy_uids, "-u") if flags.proxy_uids is not None else (mesh.proxy_uid,)
    gids = parse_ids(flags.proxy_gids, "-g") if flags.proxy_gids is not None else (mesh.proxy_gid,)
    inbound_ports = parse_ports(flags.inbound_ports, "-b", allow_all=True) if flags.inbound_ports is not None else ALL
    exclude_inbound = _ports_or(flags.exclude_inbound_ports, "-d", mesh.exclude_inbound_ports)
    if flags.outbound_cidrs is not None:
        outbound_cidrs = parse_cidrs(flags.outbound_cidrs, "-i", allow_all=True)
    else:
        mesh_includes = list(mesh.include_outbound_cidrs)
        outbound_cidrs = parse_cidrs(",".join(mesh_includes), "include_outbound_cidrs",
                                     allow_all=True) if mesh_includes else ALL
    exclude_text = (flags.exclude_outbound_cidrs if flags.exclude_outbound_cidrs is not None
                    else ",".join(mesh.exclude_outbound_cidrs))
    exclude_cidrs = parse_cidrs(exclude_text, "-x", allow_all=False)
    assert exclude_cidrs != ALL
    exclude_outbound = _ports_or(flags.exclude_outbound_ports, "-o", mesh.exclude_outbound_ports)
    include_outbound = _ports_or(flags.include_outbound_ports, "-q", ())

    reserved = {mesh.ports.admin: "proxy admin", mesh.ports.agent_status: "agent status"}
    if outbound in reserved:
        raise FlagError("-p", f"port {outbound} is the sidecar's {reserved[outbound]} port")
    if inbound in reserved:
        raise FlagError("-z", f"port {inbound} is the sidecar's {reserved[inbound]} port")
    own = _own_ports(mesh, outbound, inbound)
    if inbound_ports != ALL:
        for port in inbound_ports:
            role = next((p.role for p in own if p.port == port), None)
            if role:
                raise FlagError("-b", f"port {port} is the sidecar's own {role} port; it is never captured")
    for port in include_outbound:
        if port in exclude_outbound:
            raise FlagError("-q", f"port {port} is also excluded by -o; choose one")
    return CaptureOptions(
        outbound_port=outbound,
        inbound_port=inbound,
        proxy_uids=uids,
        proxy_gids=gids,
        inbound_ports=inbound_ports,
        exclude_inbound_ports=exclude_inbound,
        outbound_cidrs=outbound_cidrs,
        exclude_outbound_cidrs=exclude_cidrs,
        exclude_outbound_ports=exclude_outbound,
        include_outbound_ports=include_outbound,
        own_ports=own,
    )
