"""The injected parts (init container, proxy container, extra volumes), built fresh for each pod.

Defaults follow the tutorial and today's hardening: the init container gets NET_ADMIN and NET_RAW
only; the proxy runs as the proxy UID, non-root, read-only, with a readiness probe on the agent.
For its workload certificate the proxy container mounts the mesh CA's roots (the ConfigMap discovery
publishes in every namespace), a projected service-account token for the CA's audience, and a
memory volume where the agent writes the key and certificate (docs/security.md).
"""

from __future__ import annotations

import copy
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ruamel.yaml.nodes import ScalarNode
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from meshbox.api import defaults
from meshbox.injector.annotations import TRAFFIC_KEYS
from meshbox.injector.settings import InjectSettings

READINESS_PATH = "/healthz/ready"
# kubectl reads manifests as YAML 1.1: strings that 1.1 would read as another type must be quoted.
_YAML11 = VersionedResolver(version=(1, 1))
_STR_TAG = "tag:yaml.org,2002:str"


@dataclass
class Sidecar:
    """One pod's injected parts; fresh objects, never shared between pods."""

    init: dict[str, Any]
    proxy: dict[str, Any]
    volumes: list[dict[str, Any]]


def init_args(settings: InjectSettings, overrides: Mapping[str, str]) -> list[str]:
    """meshbox-init's args: `-p <out> -u <uid>` [+ `-z <in>`] + capture flags (pod annotations win)."""
    args = ["-p", str(settings.outbound_port), "-u", str(settings.proxy_uid)]
    if settings.inbound_port:
        args += ["-z", str(settings.inbound_port)]
    flags: dict[str, str] = {}
    if settings.exclude_inbound_ports:
        flags["-d"] = ",".join(map(str, settings.exclude_inbound_ports))
    if settings.include_ip_ranges is not None and settings.include_ip_ranges != ("*",):
        flags["-i"] = ",".join(settings.include_ip_ranges)
    if settings.exclude_ip_ranges:
        flags["-x"] = ",".join(settings.exclude_ip_ranges)
    if settings.exclude_outbound_ports:
        flags["-o"] = ",".join(map(str, settings.exclude_outbound_ports))
    flags.update(overrides)
    for tk in TRAFFIC_KEYS:
        if tk.flag in flags:
            args += [tk.flag, flags[tk.flag]]
    return args


def _proxy_args(settings: InjectSettings) -> list[str]:
    args = ["sidecar", "--discovery-address", settings.discovery_address]
    if settings.status_port != defaults.AGENT_STATUS_PORT:
        args += ["--status-port", str(settings.status_port)]
    if settings.trace_collector:
        args += ["--trace-collector", settings.trace_collector, "--trace-sampling", f"{settings.trace_sampling:g}"]
    extra: list[str] = []
    if settings.outbound_port != defaults.OUTBOUND_CAPTURE_PORT:
        extra += ["--outbound-port", str(settings.outbound_port)]
    if settings.inbound_port:
        extra += ["--inbound-port", str(settings.inbound_port)]
    return [*args, "--", *extra] if extra else args


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}}


def default_init(settings: InjectSettings, overrides: Mapping[str, str]) -> dict[str, Any]:
    """The init container that programs iptables (root in the pod, NET_ADMIN + NET_RAW only)."""
    return {
        "name": "init",
        "image": f"{settings.hub}/init:{settings.tag}",
        "imagePullPolicy": "IfNotPresent",
        "args": init_args(settings, overrides),
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        },
        "securityContext": {
            # iptables needs uid 0 in the pod's namespace; say it explicitly so a pod-wide
            # runAsNonRoot does not break the init container.
            "runAsUser": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }


CA_ROOT_VOLUME = "meshbox-ca-root"
TOKEN_VOLUME = "meshbox-token"
CERTS_VOLUME = "meshbox-certs"
TOKEN_LIFETIME_S = 43200


def default_volumes() -> list[dict[str, Any]]:
    """The pod volumes the proxy container's identity needs."""
    return [
        {"name": CA_ROOT_VOLUME, "configMap": {"name": defaults.CA_ROOT_CONFIG_MAP}},
        {"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "path": defaults.WORKLOAD_TOKEN_NAME, "audience": defaults.CA_TOKEN_AUDIENCE,
            "expirationSeconds": TOKEN_LIFETIME_S}}]}},
        {"name": CERTS_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
    ]


def default_proxy(settings: InjectSettings) -> dict[str, Any]:
    """The proxy container: the agent, which runs the proxy as a child."""
    return {
        "name": "proxy",
        "image": f"{settings.hub}/proxy:{settings.tag}",
        "imagePullPolicy": "IfNotPresent",
        "args": _proxy_args(settings),
        "env": [
            _field_env("POD_NAME", "metadata.name"),
            _field_env("POD_NAMESPACE", "metadata.namespace"),
            _field_env("POD_IP", "status.podIP"),
            _field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ],
        "volumeMounts": [
            {"name": CA_ROOT_VOLUME, "mountPath": defaults.CA_ROOT_DIR, "readOnly": True},
            {"name": TOKEN_VOLUME, "mountPath": defaults.WORKLOAD_TOKEN_DIR, "readOnly": True},
            {"name": CERTS_VOLUME, "mountPath": defaults.CERT_DIR},
        ],
        "readinessProbe": {
            "httpGet": {"path": READINESS_PATH, "port": settings.status_port},
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "failureThreshold": 30,
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "40Mi"},
            "limits": {"cpu": "1", "memory": "256Mi"},
        },
        "securityContext": {
            "runAsUser": settings.proxy_uid,
            "runAsGroup": settings.proxy_gid,
            "runAsNonRoot": True,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _variables(settings: InjectSettings) -> dict[str, str]:
    return {
        "hub": settings.hub,
        "tag": settings.tag,
        "proxyUID": str(settings.proxy_uid),
        "proxyGID": str(settings.proxy_gid),
        "discoveryAddress": settings.discovery_address,
        "statusPort": str(settings.status_port),
        "outboundPort": str(settings.outbound_port),
        "inboundPort": str(settings.inbound_port or settings.outbound_port),
    }


def _substitute(data: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(data, str):
        # Placeholders were checked when the template was parsed (settings.parse_template).
        return string.Template(data).substitute(variables)
    if isinstance(data, Mapping):
        return {k: _substitute(v, variables) for k, v in data.items()}
    if isinstance(data, list):
        return [_substitute(v, variables) for v in data]
    return data


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> None:
    for key, value in override.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def quote_for_kubectl(data: Any) -> Any:
    """Double-quote strings YAML 1.1 would read as another type ("yes", "on", "15001")."""
    if isinstance(data, str):
        if type(data) is str and _YAML11.resolve(ScalarNode, data, (True, False)) != _STR_TAG:
            return DoubleQuotedScalarString(data)
        return data
    if isinstance(data, dict):
        return {k: quote_for_kubectl(v) for k, v in data.items()}
    if isinstance(data, list):
        return [quote_for_kubectl(v) for v in data]
    return data


def build_sidecar(settings: InjectSettings, overrides: Mapping[str, str]) -> Sidecar:
    """This pod's init/proxy containers and volumes: defaults, then the user's template over them."""
    init = default_init(settings, overrides)
    proxy = default_proxy(settings)
    template = settings.template
    variables = _variables(settings)
    if template.init:
        _merge(init, _substitute(template.init, variables))
    if template.proxy:
        _merge(proxy, _substitute(template.proxy, variables))
    volumes = default_volumes() + [_substitute(v, variables) for v in template.volumes]
    return Sidecar(init=quote_for_kubectl(init), proxy=quote_for_kubectl(proxy), volumes=quote_for_kubectl(volumes))
