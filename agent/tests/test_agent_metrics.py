"""The agent's merged metrics when the proxy does not answer: its own families alone, saying so."""

from __future__ import annotations

import asyncio
import socket

from prometheus_client.parser import text_string_to_metric_families

from meshbox.agent.agent_metrics import AgentCounts, merged_metrics
from meshbox.agent.proxy_admin import ProxyAdmin


def test_a_proxy_that_does_not_answer_leaves_the_agent_metrics_and_a_zero_scrape_gauge() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens once the socket is closed
    counts = AgentCounts(proxy_starts=2, configs_applied=5, configs_rejected=1, discovery_connected=False,
                         config_applied=True)
    text = asyncio.run(merged_metrics(ProxyAdmin(closed, probe_timeout=0.5), counts))
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples == {
        "meshbox_agent_proxy_starts_total": 2, "meshbox_agent_configs_applied_total": 5,
        "meshbox_agent_configs_rejected_total": 1, "meshbox_agent_discovery_connected": 0,
        "meshbox_agent_config_applied": 1, "meshbox_agent_proxy_scrape_up": 0,
    }
