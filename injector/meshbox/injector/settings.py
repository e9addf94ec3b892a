"""What to inject: the settings every injection reads (mesh config + flags + sidecar template).

Settings are built once per run (kube-inject) or per server (webhook) and are immutable, so the
pure injection function can share them freely.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshbox.api import defaults
from meshbox.api.loader import ConfigError, iter_yaml_documents, plain_data
from meshbox.api.v1 import mesh_config_pb2
from meshbox.api.validation import ValidationError, check_cidr, check_image_hub, check_image_tag, check_port

TEMPLATE_KEYS = ("init", "proxy", "volumes")
TEMPLATE_VARIABLES = (
    "hub", "tag", "proxyUID", "proxyGID", "discoveryAddress", "statusPort", "outboundPort", "inboundPort",
)


class SettingsError(ValueError):
    """A flag, mesh config or sidecar template that cannot be used; the message names it."""


@dataclass(frozen=True)
class SidecarTemplate:
    """User overrides of the injected parts (the --injectConfigFile format, see docs/injector.md).

    ``init`` and ``proxy`` are merged over the default containers: mappings merge key by key,
    any other value (lists included) replaces, ``null`` removes the key. ``volumes`` are added
    to the pod as they are. Strings may use ``${hub}``, ``${tag}``, ``${proxyUID}``,
    ``${proxyGID}``, ``${discoveryAddress}``, ``${statusPort}``, ``${outboundPort}``,
    ``${inboundPort}`` (``$$`` for a literal ``$``).
    """

    init: Mapping[str, Any] = field(default_factory=dict)
    proxy: Mapping[str, Any] = field(default_factory=dict)
    volumes: tuple[Mapping[str, Any], ...] = ()


def parse_template(text: str, *, source: str = "<template>") -> SidecarTemplate:
    """Sidecar template YAML → SidecarTemplate; errors name the file, line and key."""
    try:
        docs = [d for d in iter_yaml_documents(text, source=source) if d is not None]
    except ConfigError as exc:
        raise SettingsError(str(exc)) from exc
    if len(docs) > 1:
        raise SettingsError(f"{source}: expected one YAML document, found {len(docs)}")
    data = docs[0] if docs else {}
    if not isinstance(data, Mapping):
        raise SettingsError(f"{source}: expected a mapping with keys {', '.join(TEMPLATE_KEYS)}")
    for key in data:
        if key not in TEMPLATE_KEYS:
            raise SettingsError(f"{source}: {key}: unknown key (known: {', '.join(TEMPLATE_KEYS)})")
    for key in ("init", "proxy"):
        if data.get(key) is not None and not isinstance(data[key], Mapping):
            raise SettingsError(f"{source}: {key}: expected a mapping of container fields")
    volumes = data.get("volumes") or []
    if not isinstance(volumes, list):
        raise SettingsError(f"{source}: volumes: expected a list of pod volumes")
    for i, volume in enumerate(volumes):
        if not isinstance(volume, Mapping) or not isinstance(volume.get("name"), str) or not volume["name"]:
            raise SettingsError(f"{source}: volumes[{i}]: expected a volume mapping with a name")
    _check_placeholders(data, source)
    for key in ("init", "proxy"):
        for field_name in ("name", "image"):
            value = (data.get(key) or {}).get(field_name, "")
            if field_name in (data.get(key) or {}) and (not isinstance(value, str) or not value):
                raise SettingsError(f"{source}: {key}.{field_name}: expected a non-empty string, got {value!r}")
    init_name = (data.get("init") or {}).get("name", "init")
    if init_name == (data.get("proxy") or {}).get("name", "proxy"):
        raise SettingsError(f"{source}: init and proxy containers must have different names, both are {init_name!r}")
    return SidecarTemplate(
        init=plain_data(data.get("init") or {}),
        proxy=plain_data(data.get("proxy") or {}),
        volumes=tuple(plain_data(v) for v in volumes),
    )


def _strings(data: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(data, str):
        yield path, data
    elif isinstance(data, Mapping):
        for key, value in data.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _strings(value, f"{path}[{i}]")


def _check_placeholders(data: Any, source: str) -> None:
    """Every ${name} in the template must be a known variable (checked once, not per pod)."""
    for path, text in _strings(data, ""):
        template = string.Template(text)
        if not template.is_valid():
            raise SettingsError(f"{source}: {path}: malformed placeholder in {text!r} (write $$ for a literal $)")
        unknown = [name for name in template.get_identifiers() if name not in TEMPLATE_VARIABLES]
        if unknown:
            raise SettingsError(
                f"{source}: {path}: unknown placeholder ${{{unknown[0]}}} (known: {', '.join(TEMPLATE_VARIABLES)})"
            )


def load_template(path: str | Path) -> SidecarTemplate:
    """Read a sidecar template file (--injectConfigFile)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read sidecar template: {exc.strerror}") from exc
    return parse_template(text, source=str(path))


def _check_cidrs(values: Iterable[str], what: str, *, allow_wildcard: bool) -> tuple[str, ...]:
    out = tuple(v.strip() for v in values if v.strip())
    for v in out:
        try:
            check_cidr(v, source=what, path="", allow_wildcard=allow_wildcard)
        except ValidationError as exc:
            raise SettingsError(f"{what}: {exc.reason}") from None
    if allow_wildcard and "*" in out and len(out) > 1:
        raise SettingsError(f"{what}: '*' cannot be combined with other ranges")
    return out


def _check_ports(values: Iterable[int], what: str) -> tuple[int, ...]:
    out = tuple(values)
    for v in out:
        try:
            check_port(v, source=what, path="")
        except ValidationError as exc:
            raise SettingsError(f"{what}: {exc.reason}") from None
    return out


@dataclass(frozen=True)
class InjectSettings:
    """Everything injection needs; defaults are the tutorial's (`-p 15001 -u 1337`)."""

    hub: str = defaults.HUB
    tag: str = defaults.TAG
    proxy_uid: int = defaults.PROXY_UID
    proxy_gid: int = defaults.PROXY_GID
    outbound_port: int = defaults.OUTBOUND_CAPTURE_PORT
    # 0 = single-port mode: inbound is captured on the outbound port (no `-z`).
    inbound_port: int = 0
    status_port: int = defaults.AGENT_STATUS_PORT
    discovery_address: str = defaults.DISCOVERY_ADDRESS
    # None = capture all outbound (no `-i`), as does ("*",); () = capture none (`-i ''`, as in Istio).
    include_ip_ranges: tuple[str, ...] | None = None
    exclude_ip_ranges: tuple[str, ...] = ()
    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()
    # The mesh config's tracing, passed to the agent as flags ("" = tracing off).
    trace_collector: str = ""
    trace_sampling: float = defaults.TRACE_SAMPLING_PERCENTAGE
    template: SidecarTemplate = field(default_factory=SidecarTemplate)

    def __post_init__(self) -> None:
        try:
            check_image_hub(self.hub, source="hub", path="")
            check_image_tag(self.tag, source="tag", path="")
        except ValidationError as exc:
            raise SettingsError(f"{exc.source}: {exc.reason}") from None
        if self.proxy_uid <= 0:
            raise SettingsError(f"sidecarProxyUID must be a non-root UID (> 0), got {self.proxy_uid}")
        _check_ports([self.outbound_port, self.status_port], "ports")
        if self.inbound_port:
            _check_ports([self.inbound_port], "inbound port")
        if self.include_ip_ranges is not None:
            _check_cidrs(self.include_ip_ranges, "includeIPRanges", allow_wildcard=True)
        _check_cidrs(self.exclude_ip_ranges, "excludeIPRanges", allow_wildcard=False)
        _check_ports(self.exclude_inbound_ports, "excludeInboundPorts")
        _check_ports(self.exclude_outbound_ports, "excludeOutboundPorts")

    @classmethod
    def from_mesh_config(cls, mesh: mesh_config_pb2.MeshConfig, **overrides: Any) -> InjectSettings:
        """Settings from a (defaulted) MeshConfig, with keyword overrides from flags."""
        base = cls(
            hub=mesh.hub or defaults.HUB,
            tag=mesh.tag or defaults.TAG,
            proxy_uid=mesh.proxy_uid or defaults.PROXY_UID,
            proxy_gid=mesh.proxy_gid or defaults.PROXY_GID,
            outbound_port=mesh.ports.outbound_capture or defaults.OUTBOUND_CAPTURE_PORT,
            inbound_port=mesh.ports.inbound_capture,
            status_port=mesh.ports.agent_status or defaults.AGENT_STATUS_PORT,
            discovery_address=mesh.discovery_address or defaults.DISCOVERY_ADDRESS,
            # The mesh config cannot say "none": an empty list there means all.
            include_ip_ranges=tuple(mesh.include_outbound_cidrs) or None,
            exclude_ip_ranges=tuple(mesh.exclude_outbound_cidrs),
            exclude_inbound_ports=tuple(mesh.exclude_inbound_ports),
            exclude_outbound_ports=tuple(mesh.exclude_outbound_ports),
            trace_collector=mesh.tracing.collector_address,
            trace_sampling=mesh.tracing.sampling_percentage if mesh.tracing.HasField("sampling_percentage")
            else defaults.TRACE_SAMPLING_PERCENTAGE,
        )
        return replace(base, **overrides) if overrides else base

    @classmethod
    def parse_ranges(cls, text: str, flag: str, *, allow_wildcard: bool) -> tuple[str, ...]:
        """A comma-separated CIDR list from a flag, checked (errors name the flag)."""
        return _check_cidrs(text.split(","), flag, allow_wildcard=allow_wildcard)
