"""--concurrency N: worker processes share the listeners (SO_REUSEPORT); config, stats and quit reach
all of them. Runs in its own network namespace because every worker must bind the same fixed ports."""

from __future__ import annotations

import re
import select
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from meshbox.api.loader import message_from_data
from meshbox.api.v1 import proxy_config_pb2 as pc

SERVERS = str(Path(__file__).resolve().parent / "netns_servers.py")


def config(backend_port: int) -> pc.ProxyConfig:
    return message_from_data({
        "listeners": [{"name": "web", "direction": "OUTBOUND", "address": "127.0.0.1", "port": 9000,
                       "protocol": "HTTP", "route_config": "rc", "bind": True}],
        "route_configs": [{"name": "rc", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"clusters": [{"cluster": "web", "weight": 100}]}]}]}],
        "clusters": [{"name": "web", "service": "web.default.svc.cluster.local"}],
        "endpoints": [{"cluster_name": "web", "endpoints": [{"address": "127.0.0.1", "port": backend_port}]}],
    }, pc.ProxyConfig)


def wait_line(stream: Any, text: bytes, timeout: float = 15) -> None:
    while True:
        readable, _, _ = select.select([stream], [], [], timeout)
        assert readable, f"timed out waiting for {text!r}"
        line = stream.readline()
        assert line, f"exited before printing {text!r}"
        if text in line:
            return


def test_two_workers_share_listeners_and_follow_admin(netns: Any) -> None:
    ns = netns("conc")
    for name, port in (("a", "8081"), ("b", "8082")):
        server = ns.popen(sys.executable, SERVERS, name, port, stdout=subprocess.PIPE, bufsize=0)
        wait_line(server.stdout, b"ready")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "a.pb").write_bytes(config(8081).SerializeToString())
        (work / "b.pb").write_bytes(config(8082).SerializeToString())
        log = (work / "access.log").open("wb")
        proxy = ns.popen(sys.executable, "-m", "meshbox.proxy", "--concurrency", "2", stdout=log,
                         stderr=subprocess.PIPE, bufsize=0)
        wait_line(proxy.stderr, b"outbound capture listening")

        def curl(*args: str) -> str:
            return ns.run("curl", "-sS", "-m", "5", *args).stdout

        assert curl("-X", "POST", "--data-binary", f"@{work / 'a.pb'}", "http://127.0.0.1:15000/config").startswith(
            "applied version 1")
        listeners = ns.run("ss", "-ltnpH", "sport = :9000").stdout
        assert len(set(re.findall(r"pid=(\d+)", listeners))) == 2, listeners
        # 40 new connections, spread by the kernel over both workers.
        urls = ["http://127.0.0.1:9000/"] * 40
        assert curl(*urls).count("a / from 127.0.0.1") == 40
        stats = curl("http://127.0.0.1:15000/stats/prometheus")
        total = sum(float(v) for v in re.findall(r'^istio_requests_total\{[^}]*response_code="200"[^}]*\} (\S+)',
                                                 stats, re.M))
        assert total == 40
        assert curl("-X", "POST", "--data-binary", f"@{work / 'b.pb'}", "http://127.0.0.1:15000/config").startswith(
            "applied version 2")
        assert curl(*urls).count("b / from 127.0.0.1") == 40  # every worker switched
        assert curl("-X", "POST", "http://127.0.0.1:15000/quitquitquit") == "OK\n"
        assert proxy.wait(timeout=10) == 0
        assert ns.run("ss", "-ltnH", "sport = :9000").stdout == ""
        log.close()
        assert (work / "access.log").read_text().count('"GET / HTTP/1.1" 200 - 0 ') == 80
