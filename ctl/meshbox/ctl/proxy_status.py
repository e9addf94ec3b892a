"""`meshctl proxy-status`: every proxy connected to discovery and, per resource type, whether it runs the
config discovery serves it (discovery's ``GET /debug/syncz``), as ``istioctl proxy-status`` shows it."""

from __future__ import annotations

import json
from typing import Any

from meshbox.ctl.mesh_access import AccessError, MeshAccess
from meshbox.ctl.views import table, to_yaml

# discovery's type names, in the column order istioctl uses.
TYPES = (("CLUSTERS", "Cluster"), ("ENDPOINTS", "ClusterLoadAssignment"), ("LISTENERS", "Listener"),
         ("ROUTES", "RouteConfiguration"))


def fetch_proxies(access: MeshAccess) -> list[dict[str, Any]]:
    """The proxies discovery streams to, as its /debug/syncz lists them."""
    body = access.discovery_get("/debug/syncz")
    try:
        data = json.loads(body)
        proxies = data["proxies"]
        if not isinstance(proxies, list):
            raise TypeError("proxies is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        raise AccessError(f"discovery's /debug/syncz did not answer the expected JSON ({exc})") from None
    return proxies


def status_table(proxies: list[dict[str, Any]]) -> str:
    """NAME, POD IP, SYNCED / STALE / NOT SENT / NACKED per type, IDENTITY; NACK errors listed below."""
    rows = [[p["id"], p.get("pod_ip") or "-", *(p["types"][t]["status"] for _, t in TYPES),
             p.get("identity") or "-"] for p in proxies]
    text = table(["NAME", "POD IP", *(c for c, _ in TYPES), "IDENTITY"], rows)
    for p in proxies:
        for column, t in TYPES:
            error = p["types"][t].get("error")
            if error:
                text += f"{p['id']}: {column.lower()} NACKED: {error}\n"
    return text


def detail_table(proxy: dict[str, Any]) -> str:
    """One proxy: per type its status, the version discovery serves, the one sent and the one ACKed."""
    rows = []
    for column, t in TYPES:
        s = proxy["types"][t]
        rows.append([column, s["status"], s["current"] or "-", s["sent"] or "-", s["acked"] or "-"])
    text = table(["TYPE", "STATUS", "SERVED", "SENT", "ACKED"], rows)
    for column, t in TYPES:
        if proxy["types"][t].get("error"):
            text += f"{column.lower()} NACKED: {proxy['types'][t]['error']}\n"
    return text


def render(proxies: list[dict[str, Any]], pod: str | None, namespace: str, output: str) -> str:
    """The command's output; ``pod`` narrows it to one proxy (an unknown one is an error)."""
    if pod is not None:
        wanted = pod if "." in pod else f"{pod}.{namespace}"
        proxies = [p for p in proxies if p["id"] == wanted]
        if not proxies:
            raise AccessError(f"no proxy {wanted} is connected to discovery")
    if output == "json":
        return json.dumps(proxies, indent=2) + "\n"
    if output == "yaml":
        return to_yaml(proxies)
    if pod is not None:
        return detail_table(proxies[0])
    if not proxies:
        return "no proxy is connected to discovery\n"
    return status_table(proxies)
