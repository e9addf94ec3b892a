"""Pod annotations injection reads: opt-outs, traffic capture overrides, and other meshes' marks.

meshbox's own keys come first; Istio's and Linkerd's are honoured so that existing manifests keep
their meaning when they move to meshbox.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshbox.api.kube.objects import SIDECAR_STATUS_ANNOTATION

STATUS = SIDECAR_STATUS_ANNOTATION
INJECT = "sidecar.meshbox.io/inject"
ISTIO_INJECT = "sidecar.istio.io/inject"
LINKERD_INJECT = "linkerd.io/inject"

# The de-facto Prometheus scrape annotations (Istio's and Prometheus' example Kubernetes config):
# injection points them at the agent's merged /stats/prometheus on the status port.
PROMETHEUS_SCRAPE = "prometheus.io/scrape"
PROMETHEUS_PORT = "prometheus.io/port"
PROMETHEUS_PATH = "prometheus.io/path"
PROMETHEUS_KEYS = (PROMETHEUS_SCRAPE, PROMETHEUS_PORT, PROMETHEUS_PATH)
METRICS_PATH = "/stats/prometheus"

# Marks of a pod that another mesh already injected (annotation → mesh name).
OTHER_MESH_ANNOTATIONS = {
    "sidecar.istio.io/status": "Istio",
    "linkerd.io/proxy-version": "Linkerd",
}
# Container names another mesh injects (name → mesh name).
OTHER_MESH_CONTAINERS = {
    "istio-proxy": "Istio",
    "istio-init": "Istio",
    "istio-validation": "Istio",
    "linkerd-proxy": "Linkerd",
    "linkerd-init": "Linkerd",
    "linkerd-network-validator": "Linkerd",
}

_TRUE = {"true", "yes", "y", "on", "1", "enabled"}
_FALSE = {"false", "no", "n", "off", "0", "disabled"}


class AnnotationError(ValueError):
    """An annotation with a value injection cannot use."""

    def __init__(self, key: str, value: Any, reason: str) -> None:
        self.key = key
        self.value = value
        self.reason = reason
        super().__init__(f"annotation {key}={value!r}: {reason}")


@dataclass(frozen=True)
class TrafficKey:
    """One capture override: its meshbox annotation, its init flag, and what it holds."""

    name: str
    flag: str
    cidrs: bool
    wildcard: bool

    @property
    def meshbox(self) -> str:
        return f"traffic.sidecar.meshbox.io/{self.name}"

    @property
    def istio(self) -> str:
        return f"traffic.sidecar.istio.io/{self.name}"


# In the order their flags appear in the init container's args (meshbox-init's istio-iptables letters).
TRAFFIC_KEYS = (
    TrafficKey("includeInboundPorts", "-b", cidrs=False, wildcard=True),
    TrafficKey("excludeInboundPorts", "-d", cidrs=False, wildcard=False),
    TrafficKey("includeOutboundIPRanges", "-i", cidrs=True, wildcard=True),
    TrafficKey("excludeOutboundIPRanges", "-x", cidrs=True, wildcard=False),
    TrafficKey("includeOutboundPorts", "-q", cidrs=False, wildcard=False),
    TrafficKey("excludeOutboundPorts", "-o", cidrs=False, wildcard=False),
)


def _string(annotations: Mapping[str, Any], key: str) -> str | None:
    if key not in annotations:
        return None
    value = annotations[key]
    if not isinstance(value, str):
        # Kubernetes rejects non-string annotation values; say so rather than guess.
        raise AnnotationError(key, value, "annotation values must be strings (quote the value in YAML)")
    return value


def opt_out(annotations: Mapping[str, Any], where: str = "") -> str | None:
    """Why the pod must not be injected, or None; ``where`` says where the annotations were read
    ("on the pod template", ...). Bad values of meshbox's own key are errors."""
    at = f" {where}" if where else ""
    value = _string(annotations, INJECT)
    if value is not None:
        low = value.strip().lower()
        if low in _FALSE:
            return f'annotation {INJECT} is "{value}"{at}'
        if low not in _TRUE:
            raise AnnotationError(INJECT, value, 'expected "true" or "false"')
        return None
    value = _string(annotations, ISTIO_INJECT)
    if value is not None and value.strip().lower() in _FALSE:
        return f'annotation {ISTIO_INJECT} is "{value}"{at} (Istio opt-out, honoured)'
    value = _string(annotations, LINKERD_INJECT)
    if value is not None and value.strip().lower() == "disabled":
        return f'annotation {LINKERD_INJECT} is "{value}"{at} (Linkerd opt-out, honoured)'
    return None


def opts_in(annotations: Mapping[str, Any]) -> bool:
    """Whether meshbox's own annotation asks for injection here (it then wins over any other mark)."""
    value = _string(annotations, INJECT)
    return value is not None and value.strip().lower() in _TRUE


def _check_item(tk: TrafficKey, key: str, raw: str, item: str) -> None:
    if item == "*":
        if not tk.wildcard:
            raise AnnotationError(key, raw, "'*' is not allowed here")
        return
    if tk.cidrs:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise AnnotationError(key, raw, f"not a CIDR: {item!r}") from None
        return
    if not item.isdigit() or not 1 <= int(item) <= 65535:
        raise AnnotationError(key, raw, f"not a port (1..65535): {item!r}")


def traffic_overrides(annotations: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Capture overrides by init flag (checked, normalised "a,b"), plus warnings.

    meshbox's key wins over Istio's alias; both present with different values is a warning.
    """
    overrides: dict[str, str] = {}
    warnings: list[str] = []
    for tk in TRAFFIC_KEYS:
        own = _string(annotations, tk.meshbox)
        alias = _string(annotations, tk.istio)
        if own is not None and alias is not None and own != alias:
            warnings.append(f"{tk.meshbox}={own!r} overrides {tk.istio}={alias!r}")
        key, raw = (tk.meshbox, own) if own is not None else (tk.istio, alias)
        if raw is None:
            continue
        items = [item.strip() for item in raw.split(",") if item.strip()]
        for item in items:
            _check_item(tk, key, raw, item)
        if "*" in items and len(items) > 1:
            raise AnnotationError(key, raw, "'*' cannot be combined with other values")
        overrides[tk.flag] = ",".join(items)
    return overrides, warnings
