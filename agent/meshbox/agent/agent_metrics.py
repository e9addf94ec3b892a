"""The agent's ``/stats/prometheus``: its own counters followed by the proxy's, in one exposition,
as Istio's agent serves them merged on the status port for one scrape per pod."""

from __future__ import annotations

from dataclasses import dataclass

from meshbox.agent.http_client import HttpUnreachable
from meshbox.agent.proxy_admin import ProxyAdmin


@dataclass(frozen=True)
class AgentCounts:
    """What the agent knows about itself at scrape time."""

    proxy_starts: int
    configs_applied: int
    configs_rejected: int
    discovery_connected: bool
    config_applied: bool


def render_agent(counts: AgentCounts, proxy_scraped: bool) -> str:
    """The agent's own families, Prometheus text format."""
    rows = [
        ("meshbox_agent_proxy_starts_total", "counter", "Times the agent started the proxy.", counts.proxy_starts),
        ("meshbox_agent_configs_applied_total", "counter", "Configs from discovery the proxy accepted.",
         counts.configs_applied),
        ("meshbox_agent_configs_rejected_total", "counter", "Configs from discovery the proxy refused (NACKed).",
         counts.configs_rejected),
        ("meshbox_agent_discovery_connected", "gauge", "1 while the discovery stream is up.",
         int(counts.discovery_connected)),
        ("meshbox_agent_config_applied", "gauge", "1 once a config from discovery is applied.",
         int(counts.config_applied)),
        ("meshbox_agent_proxy_scrape_up", "gauge", "1 if the proxy's metrics are included in this scrape.",
         int(proxy_scraped)),
    ]
    lines = []
    for name, kind, help_text, value in rows:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(lines) + "\n"


async def merged_metrics(admin: ProxyAdmin, counts: AgentCounts) -> str:
    """The agent's metrics, then the proxy's (left out, and said so by a gauge, when the proxy does not answer)."""
    try:
        proxy = await admin.prometheus()
    except HttpUnreachable:
        proxy = None
    text = render_agent(counts, proxy is not None)
    return text + (proxy or "")
