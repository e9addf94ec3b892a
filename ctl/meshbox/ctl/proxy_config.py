"""`meshctl proxy-config listeners|routes|clusters|endpoints POD`: a proxy's live config (its admin
``GET /config_dump``) as tables, or as JSON/YAML."""

from __future__ import annotations

import json
from typing import Any

from meshbox.ctl.mesh_access import AccessError, MeshAccess
from meshbox.ctl.views import table, to_yaml

SECTIONS = {"listeners": "listeners", "routes": "route_configs", "clusters": "clusters", "endpoints": "endpoints"}
MAX_DOMAINS = 3


def fetch_config(access: MeshAccess, pod: str, namespace: str) -> dict[str, Any]:
    """The proxy's live ProxyConfig (JSON, proto field names) and its version."""
    body = access.admin_get(pod, namespace, "/config_dump")
    try:
        dump = json.loads(body)
        if not isinstance(dump.get("config"), dict):
            raise TypeError("no config object")
    except (ValueError, TypeError, AttributeError) as exc:
        raise AccessError(f"{namespace}/{pod}: /config_dump did not answer the expected JSON ({exc})") from None
    return dump


def _listeners(config: dict[str, Any]) -> str:
    rows = []
    for lis in config.get("listeners", []):
        protocol = lis.get("protocol", "TCP")
        target = f"route: {lis.get('route_config', '')}" if protocol == "HTTP" else f"cluster: {lis.get('cluster', '')}"
        rows.append([lis.get("name", ""), lis.get("direction", "OUTBOUND"), lis.get("address") or "0.0.0.0",
                     str(lis.get("port", 0)), protocol, target])
    return table(["NAME", "DIRECTION", "ADDRESS", "PORT", "PROTOCOL", "DESTINATION"], rows)


def _match(route: dict[str, Any]) -> str:
    match = route.get("match", {})
    text = match.get("prefix") or "/"
    headers = [h.get("name", "") for h in match.get("headers", [])]
    return text + (f" + headers {','.join(headers)}" if headers else "")


def _routes(config: dict[str, Any]) -> str:
    rows = []
    for rc in config.get("route_configs", []):
        for vh in rc.get("virtual_hosts", []):
            domains = vh.get("domains", [])
            shown = ",".join(domains[:MAX_DOMAINS]) + (f" +{len(domains) - MAX_DOMAINS} more"
                                                      if len(domains) > MAX_DOMAINS else "")
            for route in vh.get("routes", []):
                clusters = ",".join(f"{w['cluster']}({w.get('weight', 0)})" for w in route.get("clusters", []))
                rows.append([rc.get("name", ""), shown, _match(route), clusters])
    return table(["NAME", "DOMAINS", "MATCH", "CLUSTERS (WEIGHT)"], rows)


def _clusters(config: dict[str, Any]) -> str:
    counts = {cla.get("cluster_name"): len(cla.get("endpoints", [])) for cla in config.get("endpoints", [])}
    rows = [[c.get("name", ""), c.get("service") or "-", c.get("lb_policy", "ROUND_ROBIN"),
             c.get("connect_timeout", "1s"), str(counts.get(c.get("name"), 0))]
            for c in config.get("clusters", [])]
    return table(["NAME", "SERVICE", "LB POLICY", "CONNECT TIMEOUT", "ENDPOINTS"], rows)


def _endpoints(config: dict[str, Any]) -> str:
    rows = []
    for cla in config.get("endpoints", []):
        for ep in cla.get("endpoints", []):
            w = ep.get("workload", {})
            workload = f"{w.get('namespace', '?')}/{w.get('name', '?')}" if w else "-"
            rows.append([f"{ep.get('address', '')}:{ep.get('port', 0)}", cla.get("cluster_name", ""), workload,
                         str(ep.get("weight") or 1)])
    return table(["ENDPOINT", "CLUSTER", "WORKLOAD", "WEIGHT"], rows)


RENDERERS = {"listeners": _listeners, "routes": _routes, "clusters": _clusters, "endpoints": _endpoints}


def render(dump: dict[str, Any], what: str, output: str) -> str:
    """``what`` of the config dump as a table, or that section as JSON/YAML."""
    config = dump["config"]
    if output == "json":
        return json.dumps(config.get(SECTIONS[what], []), indent=2) + "\n"
    if output == "yaml":
        return to_yaml(config.get(SECTIONS[what], []))
    return RENDERERS[what](config)
